import torch.nn as nn


class Model(nn.Module):
    """A multi-layer perceptron on the raw 40-sample signal."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(40, 100),
            nn.ReLU(),
            nn.Linear(100, 100),
            nn.ReLU(),
            nn.Linear(100, 10),
        )

    def forward(self, x):
        return self.layers(x)
