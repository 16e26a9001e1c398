"""Trainers that die or are told to stop: real `evo serve trainer` processes (bwrap).

- SIGKILL in the middle of an evaluation: the controller retries the candidate on the other
  trainer, the search finishes as an uninterrupted one would, every candidate is evaluated
  once, and the dead trainer's sandbox died with it.
- SIGTERM (what Kubernetes sends): an evaluation that fits in the grace period finishes and
  is answered; one that does not is handed back as UNAVAILABLE, which the controller retries
  elsewhere; new work is refused at once; then the process exits and leaves nothing behind.
"""

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from evo.v1 import common_pb2 as common
from evo.v1 import lineage_pb2 as pb
from evo.v1 import trainer_pb2, trainer_pb2_grpc

from controller.clients import RETRYABLE
from services.common.server import SHUTDOWN_GRACE_SECONDS
from services.trainer.server import task_info
from tests.reliability import (
    LM_SEARCH,
    ControllerThread,
    Stack,
    differences,
    reference,
    running,
    search_config,
    service_processes,
    snapshot,
    stack_in_process,
    trainer_capacity,
    wait_until,
)
from tests.reliability import candidates as list_candidates

pytestmark = pytest.mark.filterwarnings("ignore:The `dict` method is deprecated")
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
TRAINER = ["--backend", "bwrap", "--slots", "1", "--memory-limit-mb", "2048"]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with stack_in_process(f"sqlite:///{tmp_path / 'lineage.db'}") as s:
        yield s


def test_a_trainer_killed_mid_evaluation(stack: Stack, tmp_path: Path) -> None:
    stub = stack.lineage.stub
    want = reference(stack.config(), stub)
    with service_processes(tmp_path) as serve:
        doomed = serve("trainer", TRAINER).start()
        spare = serve("trainer", TRAINER).start()
        doomed_id = trainer_capacity(doomed.address).trainer_id
        config = search_config(
            LM_SEARCH,
            lineage=stack.lineage.address,
            trainers=[doomed.address, spare.address],
            proposer=stack.proposer.address,
        )
        run = ControllerThread(config)
        try:

            def doomed_busy_in_round_1() -> bool:
                if not run.thread.is_alive():
                    return True
                round_1 = [c for c in list_candidates(stub, run.search_id) if c.round_index == 1]
                return bool(round_1) and trainer_capacity(doomed.address).slots_busy > 0

            wait_until(doomed_busy_in_round_1, "the first trainer to evaluate a child", 300)
            assert run.thread.is_alive(), run.log()
            sandboxes = doomed.descendants()
            assert sandboxes, "an evaluation in flight runs in a sandbox process"
            doomed.kill(signal.SIGKILL)
            doomed.wait_exit(30)
            wait_until(
                lambda: not running(sandboxes), "the dead trainer's sandbox to die with it", 30
            )
            run.wait(400)
        finally:
            run.close()
    failures = run.messages("evaluation attempt")
    assert any(doomed.address in m and "UNAVAILABLE" in m for m in failures), run.log()
    found = list_candidates(stub, run.search_id)
    assert not [c.id for c in found if c.state == pb.CANDIDATE_STATE_PENDING]
    trainers = {c.evaluation.trainer_id for c in found if c.HasField("evaluation")}
    assert trainers - {doomed_id, ""}, "nothing was evaluated on the other trainer"
    # Every candidate evaluated once (the store keeps one evaluation each), with the scores
    # an uninterrupted run gets: the retried one included.
    got = snapshot(stub, run.search_id)
    assert got == want, differences(got, want)


SLEEPER = """import time
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        time.sleep(300)  # outlasts any grace period
        self.fc = nn.Linear(40, 10)

    def forward(self, x):
        return self.fc(x)
"""


def test_sigterm_finishes_or_hands_back_the_evaluations_in_flight(tmp_path: Path) -> None:
    seed = next(s.code for s in task_info("mnist1d").seeds if s.name == "cnn")
    with service_processes(tmp_path) as serve:
        # A drain shorter than the long evaluation (in Kubernetes it is longer than any).
        args = ["--backend", "bwrap", "--slots", "2", "--memory-limit-mb", "2048"]
        trainer = serve("trainer", [*args, "--drain-seconds", "10"]).start()
        channel = grpc.insecure_channel(trainer.address)
        stub = trainer_pb2_grpc.TrainerStub(channel)
        answers: dict[str, object] = {}

        def evaluate(name: str, code: str) -> None:
            request = trainer_pb2.EvaluateRequest(
                program=trainer_pb2.Program(
                    code=code, language=trainer_pb2.PROGRAM_LANGUAGE_PYTORCH
                ),
                task="mnist1d",
                budget=trainer_pb2.Budget(steps=40),
                limits=trainer_pb2.Limits(wall_seconds=120),
                request_id=name,
            )
            try:
                answers[name] = stub.Evaluate(request, timeout=300)
            except grpc.RpcError as e:
                answers[name] = e

        calls = [
            threading.Thread(target=evaluate, args=("short", seed)),
            threading.Thread(target=evaluate, args=("long", SLEEPER)),
        ]
        try:
            for call in calls:
                call.start()
            wait_until(
                lambda: trainer_capacity(trainer.address).slots_busy == 2,
                "both evaluations to start",
                120,
            )
            sandboxes = trainer.descendants()
            signalled = time.monotonic()
            trainer.kill(signal.SIGTERM)
            # New work is refused at once, while the evaluations in flight go on.

            def refused() -> grpc.StatusCode | None:
                try:
                    stub.GetCapacity(trainer_pb2.GetCapacityRequest(), timeout=5)
                except grpc.RpcError as e:
                    return e.code()  # type: ignore[attr-defined,no-any-return]
                return None

            assert wait_until(refused, "new calls to be refused", 10) == UNAVAILABLE
            for call in calls:
                call.join(SHUTDOWN_GRACE_SECONDS + 60)
            assert trainer.wait_exit(60) == 0, trainer.log()
            exited = time.monotonic() - signalled
        finally:
            channel.close()
    short, long = answers["short"], answers["long"]
    # The evaluation that fits in the grace period is finished and answered...
    assert isinstance(short, trainer_pb2.EvaluateResponse), short
    assert short.status == common.EVAL_STATUS_OK, short.message
    # ...the one that does not is handed back with a status the controller retries elsewhere.
    assert isinstance(long, grpc.RpcError), long
    assert long.code() == UNAVAILABLE, long  # type: ignore[attr-defined]
    assert UNAVAILABLE in RETRYABLE
    # Within Kubernetes' default 30 s between SIGTERM and SIGKILL, with nothing left behind.
    assert exited < 30, f"exited {exited:.0f} s after SIGTERM:\n{trainer.log()}"
    assert not running(sandboxes)
