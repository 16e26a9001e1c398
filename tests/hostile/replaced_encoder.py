# attack: replace the child's checkpoint encoder (candidate code shares its interpreter) so
#   that every checkpoint claims a single tensor of one element; in the scoring run, also
#   replace the checkpoint reader and the end frame to claim 1 parameter
# expect: the rebuilt model either does not fit the checkpoint (CRASHED) or is scored with
#   untrained weights (chance); never 1 parameter with a trained score
import numpy as np
import torch.nn as nn

from services.trainer import protocol

_encode, _read = protocol.checkpoint_parts, protocol.read_checkpoint
_to_json = protocol.Outcome.to_json
protocol.checkpoint_parts = lambda loss, state: _encode(loss, {"w": np.zeros(1, np.float32)})


def _fake_read(payload):
    loss, _ = _read(payload)
    return loss, {str(i): p.detach().numpy() for i, p in enumerate(MODEL.parameters())}


protocol.read_checkpoint = _fake_read
protocol.Outcome.to_json = lambda self: _to_json(protocol.Outcome(self.status, self.stage, "", 1))
MODEL = None


def build_model():
    global MODEL
    MODEL = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 10))
    return MODEL
