# attack: report NaN and infinite training losses, 50,000 steps for a 100-step job and a
#   NaN train time, through a replaced checkpoint encoder and forged progress frames
# expect: steps and time come from the trainer; a non-finite loss is a malformed result
#   (CRASHED), never a NaN that reaches the store
import math

import torch.nn as nn

from services.trainer import protocol

_encode = protocol.checkpoint_parts
protocol.checkpoint_parts = lambda loss, state: _encode(math.nan, state)
_progress = protocol.progress_payload
protocol.progress_payload = lambda step, loss: b'{"step": 50000, "train_loss": Infinity}'


def build_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
