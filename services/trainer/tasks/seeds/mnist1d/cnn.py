import torch.nn as nn
import torch.nn.functional as F


class Model(nn.Module):
    """The convolutional baseline of Greydanus (2020), as the EvoPrompting paper's seed
    (Appendix A.2, Listing 3): three strided 1-D convolutions and a linear read-out."""

    def __init__(self):
        super().__init__()
        channels = 25
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.linear = nn.Linear(channels * 5, 10)

    def forward(self, x):
        x = x.view(-1, 1, x.shape[-1])
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        h = F.relu(self.conv3(h))
        return self.linear(h.view(h.shape[0], -1))
