import torch
import torch.nn as nn


class Model(nn.Module):
    """The GRU baseline of Greydanus (2020), as the EvoPrompting paper's seed (Appendix
    A.2, Listing 4): a bidirectional GRU of 6 over the 40 steps, read out from every step."""

    def __init__(self):
        super().__init__()
        self.hidden_size = 6
        self.rnn = nn.GRU(1, self.hidden_size, batch_first=True, bidirectional=True)
        self.linear = nn.Linear(2 * self.hidden_size * 40, 10)

    def forward(self, x):
        x = x.view(-1, 40, 1)
        h0 = torch.zeros(2, x.shape[0], self.hidden_size, device=x.device)
        h, _ = self.rnn(x, h0)
        return self.linear(h.reshape(h.shape[0], -1))
