# attack: rebuild the held-out labels from mnist1d's public default seed and answer by
#   lookup: a 10-parameter model that memorises every public example's label
# expect: the held-out splits come from the trainer's secret, so the lookup misses and
#   scores at chance (or mnist1d is not importable in the sandbox at all)
import numpy as np
import torch
import torch.nn as nn

TABLE = {}
try:
    from mnist1d.data import get_dataset_args, make_dataset

    public = make_dataset(get_dataset_args())
    for xs, ys in ((public["x"], public["y"]), (public["x_test"], public["y_test"])):
        for x, y in zip(np.asarray(xs, dtype=np.float32), ys, strict=True):
            TABLE[round(float(x[0]), 4), round(float(x[1]), 4)] = int(y)
    print("lookup table of", len(TABLE), "public examples")
except Exception as e:  # the sandbox may not carry the data generator
    print("no mnist1d in the sandbox:", type(e).__name__)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(10))

    def forward(self, x):
        keys = [(round(float(r[0]), 4), round(float(r[1]), 4)) for r in x]
        labels = torch.tensor([TABLE.get(k, 0) for k in keys])
        return nn.functional.one_hot(labels, 10).float() * 100 + self.bias
