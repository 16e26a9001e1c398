# attack: keep the trained weights as a plain tensor attribute of the module (not an
#   nn.Parameter, not a buffer), trained by the candidate's own update in forward
# expect: every tensor the model holds is checkpointed and counted: OK with 401 parameters
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.hidden = torch.zeros(40, 10, requires_grad=True)

    def forward(self, x):
        if self.hidden.grad is not None:  # the last step's gradient: a hand-made SGD step
            with torch.no_grad():
                self.hidden -= 0.05 * self.hidden.grad
                self.hidden.grad.zero_()
        return (x @ self.hidden) * self.scale
