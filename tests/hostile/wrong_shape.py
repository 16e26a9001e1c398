# attack: none (a common language-model mistake): the output has the wrong number of classes
# expect: INVALID at the shape check, naming the expected shape, before any training
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(40, 5)

    def forward(self, x):
        return self.fc(x)
