# attack: fill the disk with a multi-gigabyte file in the scratch space
# expect: the write stops at the file-size or scratch cap; the host disk is untouched
import torch.nn as nn

written = 0
try:
    with open("/tmp/fill", "wb") as f:
        for _ in range(4096):
            f.write(b"\0" * (1 << 20))
            written += 1 << 20
except OSError as e:
    print("stopped after", written, e)


def build_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
