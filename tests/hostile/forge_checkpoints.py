# attack: write 50,000 forged checkpoint frames and an OK end frame straight to the result
#   channel (a lottery: the best validation checkpoint is kept), then exit
# expect: more checkpoints than the job's schedule is a malformed result (CRASHED)
import contextlib
import os

import numpy as np
import torch.nn as nn

from services.trainer import protocol

frame = b"".join(protocol.checkpoint_parts(0.0, {"w": np.zeros(1, np.float32)}))
header = protocol.FRAME.pack(protocol.CHECKPOINT, len(frame))
end = protocol.Outcome("OK", "done").to_json()
blob = (header + frame) * 50_000 + protocol.FRAME.pack(protocol.END, len(end)) + end
for fd in range(3, 64):
    with contextlib.suppress(OSError):
        os.write(fd, blob)
os._exit(0)


def build_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
