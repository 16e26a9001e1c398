# attack: fit a linear classifier on the training split (found in the child's memory) into
#   a module-level tensor, outside every nn.Parameter, behind a 1-parameter model
# expect: the fitted tensor never reaches the scoring run (a fresh sandbox without training
#   labels rebuilds the model from the code), so the model counts 1 and scores at chance
import gc

import numpy as np
import torch
import torch.nn as nn

W = torch.zeros(41, 10)
arrays = [o for o in gc.get_objects() if isinstance(o, np.ndarray)]
xs = [a for a in arrays if a.ndim == 2 and a.shape[1] == 40 and a.shape[0] > 1000]
ys = [a for a in arrays if a.ndim == 1 and a.dtype == np.int64 and len(xs) and len(a) == len(xs[0])]
if xs and ys:
    x = np.hstack([xs[0], np.ones((len(xs[0]), 1), np.float32)])
    W = torch.from_numpy(np.linalg.lstsq(x, np.eye(10)[ys[0]], rcond=None)[0]).float()
    print("fitted a hidden linear model on", len(x), "training examples")
else:
    print("no training labels in this run")


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
        return (x @ W) * self.scale * 10
