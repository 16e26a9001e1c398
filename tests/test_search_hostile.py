"""A search survives any one candidate: hostile programs in a real search, run to its end.

The real lineage store and a real bwrap trainer over gRPC (tests/test_search.py's stack);
the hostile programs of tests/hostile/ enter as seeds of the task, so that they are trained,
scored and mutated like every candidate. One more program stands for a trainer that lets a
value through that the store refuses (a NaN training time, what once stopped searches for
good): the store refuses its record, and the search must record it failed and go on.
"""

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from evo.v1 import common_pb2 as common
from evo.v1 import lineage_pb2 as pb
from evo.v1 import trainer_pb2

from controller.clients import Trainers
from services.trainer import server as trainer_server
from services.trainer.sandbox.base import GIB, Limits
from tests.test_search import Stack, check_lineage, make_config, run, serving

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = ROOT / "tests" / "hostile"
# Quick ones: each is contained within a few seconds (see their `# expect:` headers).
PROGRAMS = [
    "forge_checkpoints",
    "malformed_end",
    "huge_progress_frame",
    "many_members",
    "forge_numbers",
    "replaced_encoder",
    "terminal_escapes",
    "lazy_linear",
]
NAN_MARKER = "# evo-test: the trainer reports a NaN training time for this one"
NAN_PROGRAM = """import torch.nn as nn


def build_model():
    return nn.Sequential(nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 10))
"""
pytestmark = pytest.mark.filterwarnings("ignore:The `dict` method is deprecated")


def with_hostile_seeds(
    task: Callable[[Trainers, str], trainer_pb2.TaskInfo],
) -> Callable[..., object]:
    """The trainers' task description with the hostile programs added as seeds."""

    def patched(self: Trainers, name: str) -> trainer_pb2.TaskInfo:
        info = task(self, name)
        for name in PROGRAMS:
            info.seeds.add(name=name, code=(HOSTILE / f"{name}.py").read_text())
        info.seeds.add(name="nan_time", code=f"{NAN_MARKER}\n{NAN_PROGRAM}")
        return info

    return patched


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """The lineage store and a bwrap trainer as real gRPC servers; the trainer reports a
    NaN training time for the marked program, as a trainer without finite checks did."""

    def nan_for_the_marked(evaluate: Callable[..., Any]) -> Callable[..., Any]:
        def reply_nan(request, *args, **kwargs):  # type: ignore[no-untyped-def]
            reply = evaluate(request, *args, **kwargs)
            if NAN_MARKER in request.program.code:
                reply.metrics.train_seconds = math.nan
            return reply

        return reply_nan

    limits = Limits(wall_seconds=60, memory_bytes=2 * GIB)
    config = trainer_server.TrainerConfig(backend="bwrap", limits=limits)
    with serving(tmp_path, config, nan_for_the_marked) as running:
        yield running


def test_a_search_with_hostile_children_runs_to_its_end(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Trainers, "task", with_hostile_seeds(Trainers.task))

    config = make_config(stack, alpha=0.95, rounds=1, prompts_per_round=1, samples_per_prompt=2)
    config.evolution.seeds = ["mlp", "nan_time", *PROGRAMS]
    config.training.steps = 60
    sid, top, log = run(config, "mutation")
    assert "round 1 of 1" in log
    found = check_lineage(stack.stub, sid, top, p=3)

    by_name = {c.name: c for c in found if c.round_index == 0}
    assert set(by_name) == {"mlp", "nan_time", *PROGRAMS}
    nan = by_name["nan_time"]
    assert nan.state == pb.CANDIDATE_STATE_FAILED
    assert "lineage store refused" in nan.evaluation.message
    assert "finite" in nan.evaluation.message
    for name in ("forge_checkpoints", "malformed_end", "huge_progress_frame", "many_members"):
        c = by_name[name]
        assert c.state == pb.CANDIDATE_STATE_FAILED, (name, c.evaluation.message)
        assert c.evaluation.status == common.EVAL_STATUS_CRASHED, (name, c.evaluation.message)
    assert by_name["lazy_linear"].evaluation.metrics.num_params == 410
    assert "\x1b" not in by_name["terminal_escapes"].evaluation.log_tail
    assert by_name["mlp"].state == pb.CANDIDATE_STATE_SCORED
    assert [c for c in found if c.round_index == 1], "the search did not go on to round 1"
