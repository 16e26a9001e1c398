# attack: one 96 MiB progress frame on the result channel (the trainer once read it whole)
# expect: refused as a malformed result (CRASHED) without the trainer reading it into memory
import contextlib
import os

import torch.nn as nn

from services.trainer import protocol

chunk = b"\0" * (1 << 20)
for fd in range(3, 64):
    with contextlib.suppress(OSError):
        os.write(fd, protocol.FRAME.pack(protocol.PROGRESS, 96 << 20))
        for _ in range(96):
            os.write(fd, chunk)
os._exit(0)


def build_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
