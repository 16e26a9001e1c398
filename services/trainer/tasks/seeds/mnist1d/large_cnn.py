import torch.nn as nn
import torch.nn.functional as F


class Model(nn.Module):
    """The EvoPrompting paper's larger CNN (Appendix A.2, Listing 2): a convolution, then
    residual convolutions between average poolings, and a dense layer of 256."""

    def __init__(self):
        super().__init__()
        features, nlayer = 32, 3
        self.conv_in = nn.Conv1d(1, features, 3, padding=1)
        self.convs = nn.ModuleList(
            nn.Conv1d(features, features, 3, padding=1) for _ in range(nlayer - 1)
        )
        self.pool = nn.AvgPool1d(2, stride=2)
        self.dense = nn.Linear(features * 10, 256)
        self.out = nn.Linear(256, 10)

    def forward(self, x):
        x = x.view(-1, 1, x.shape[-1])
        x = self.pool(F.relu(self.conv_in(x)))
        for conv in self.convs:
            x = x + F.relu(conv(x))
        x = self.pool(x)
        x = F.relu(self.dense(x.flatten(1)))
        return self.out(x)
