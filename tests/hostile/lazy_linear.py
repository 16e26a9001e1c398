# attack: none (a legitimate model): nn.LazyLinear, whose parameters exist only after the
#   first forward pass
# expect: OK, counted after that pass: 40 * 10 + 10 = 410 parameters
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.LazyLinear(10)

    def forward(self, x):
        return self.head(x)
