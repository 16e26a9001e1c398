import torch.nn as nn


class Model(nn.Module):
    """The fully connected baseline of Greydanus (2020) with a residual connection, as the
    EvoPrompting paper's seed (Appendix A.2, Listing 5): x + relu(dense(x))."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(40, 100), nn.ReLU())
        self.residual = nn.Sequential(nn.Linear(100, 100), nn.ReLU())
        self.out = nn.Linear(100, 10)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.residual(x)
        return self.out(x)
