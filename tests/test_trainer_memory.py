"""The trainer's memory stays bounded whatever a candidate writes to its result channel.

The trainer runs in this process (bwrap backend). After one ordinary evaluation has loaded
everything the trainer keeps (torch-free: data, gRPC, numpy), its peak resident memory is
reset and each flooding candidate is evaluated: the peak may not rise by more than 300 MB.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
from evo.v1 import common_pb2 as common
from evo.v1 import trainer_pb2 as pb

from services.trainer import server
from services.trainer.sandbox.base import GIB, Limits

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = ROOT / "tests" / "hostile"
MB = 1000**2
BOUND = 300 * MB

# A checkpoint of 60 million float32 elements (240 MB) from a model of 410, twice.
HUGE_CHECKPOINT = """import numpy as np
import torch.nn as nn

from services.trainer import protocol

_encode = protocol.checkpoint_parts
HUGE = {"w": np.zeros(60_000_000, np.float32)}
protocol.checkpoint_parts = lambda loss, state: _encode(loss, HUGE)


def build_model():
    return nn.Linear(40, 10)
"""


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def current_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: VmHWM := VmRSS


@pytest.fixture(scope="module")
def trainer() -> Iterator[server.Trainer]:
    limits = Limits(wall_seconds=60, memory_bytes=2 * GIB)
    t = server.Trainer(server.TrainerConfig(backend="bwrap", limits=limits))
    yield t
    t.close()


def evaluate(trainer: server.Trainer, code: str) -> pb.EvaluateResponse:
    request = pb.EvaluateRequest(
        program=pb.Program(code=code), task="mnist1d", budget=pb.Budget(steps=20, eval_every=10)
    )
    return trainer.evaluate(request, on_progress=lambda p: None)


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("huge_progress_frame", common.EVAL_STATUS_CRASHED),
        ("progress_flood", common.EVAL_STATUS_OK),
        ("many_members", common.EVAL_STATUS_CRASHED),
        ("forge_checkpoints", common.EVAL_STATUS_CRASHED),
        ("huge_checkpoint", common.EVAL_STATUS_CRASHED),
    ],
)
def test_trainer_memory_stays_bounded_whatever_the_candidate_writes(
    trainer: server.Trainer, name: str, status: int
) -> None:
    seed = (ROOT / "services/trainer/tasks/seeds/mnist1d/mlp.py").read_text()
    assert evaluate(trainer, seed).status == common.EVAL_STATUS_OK  # everything loaded
    baseline = current_rss()
    reset_peak()
    code = HUGE_CHECKPOINT if name == "huge_checkpoint" else (HOSTILE / f"{name}.py").read_text()
    result = evaluate(trainer, code)
    grew = peak_rss() - baseline
    assert result.status == status, (name, result.message)
    print(f"{name}: peak rose {grew / MB:.1f} MB over {baseline / MB:.0f} MB")
    assert grew < BOUND, f"{name}: the trainer's peak memory rose by {grew / MB:.0f} MB"
