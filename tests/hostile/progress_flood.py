# attack: flood the result channel with 100,000 well-formed progress frames, then train
# expect: progress is dropped past its rate; the run is scored normally (OK)
import contextlib
import os

import torch.nn as nn

from services.trainer import protocol

payload = protocol.progress_payload(1, 0.5)
blob = (protocol.FRAME.pack(protocol.PROGRESS, len(payload)) + payload) * 100_000
# The result channel: the one pipe that is neither stdin nor the log.
theirs = {os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 2)}
for fd in range(3, 64):
    with contextlib.suppress(OSError):
        if os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:") and (
            os.readlink(f"/proc/self/fd/{fd}") not in theirs
        ):
            os.write(fd, blob)
            break


def build_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
