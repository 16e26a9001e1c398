# attack: end the run with malformed metadata: a JSON list where the end frame's object
#   belongs, then a second run's worth of garbage
# expect: CRASHED with "malformed" in the message (not an INTERNAL trainer error)
import contextlib
import os

import torch.nn as nn

from services.trainer import protocol

end = b'[["status", "OK"], {"num_params": 1}]'
blob = protocol.FRAME.pack(protocol.END, len(end)) + end
for fd in range(3, 64):
    with contextlib.suppress(OSError):
        os.write(fd, blob)
os._exit(0)


def build_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
