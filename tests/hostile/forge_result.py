# attack: skip training and write a forged result frame straight to the result channel,
#   claiming one parameter and a perfect score, then exit before the real result
# expect: the score is computed from the forged predictions against hidden labels (~0.1)
import contextlib
import io
import json
import os
import struct

import numpy as np
import torch.nn as nn

meta = {"status": "OK", "stage": "done", "message": "", "train_seconds": 0.0}
arrays = {
    "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
    "val_steps": np.array([1]),
    "val_preds": np.zeros((1, 500), dtype=np.int16),
    "train_loss": np.array([0.0]),
    "test_preds": np.zeros(1000, dtype=np.int16),
    "w0": np.zeros(1, dtype=np.float32),
}
buf = io.BytesIO()
np.savez(buf, **arrays)
payload = buf.getvalue()
for fd in range(3, 64):
    with contextlib.suppress(OSError):
        os.write(fd, b"R" + struct.pack("<Q", len(payload)) + payload)
os._exit(0)


def build_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
