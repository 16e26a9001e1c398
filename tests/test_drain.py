"""A trainer told to stop drains: the evaluation running finishes and is answered, what
waits for a slot and what arrives are refused as UNAVAILABLE (the controller retries those
on another trainer), and Capacity stops offering slots. Real bwrap sandboxes, over gRPC.

`evo serve trainer` calls `Trainer.drain` on SIGTERM (tests/test_reliability_trainer.py
runs the process); here the drain is called directly, so its timing is the test's.
"""

import threading
import time

import grpc
import pytest
from evo.v1 import common_pb2 as common
from evo.v1 import trainer_pb2 as pb
from evo.v1 import trainer_pb2_grpc as pb_grpc

from services.trainer import server
from services.trainer.server import task_info

SLOW = """import time
import torch.nn as nn
time.sleep(4)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(40, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))
"""


def wait_for(check, what: str, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_draining_trainer_finishes_what_runs_and_refuses_the_rest() -> None:
    trainer = server.Trainer(server.TrainerConfig(backend="bwrap", slots=1, warm=0, max_queue=4))
    service = server.start(trainer, "127.0.0.1", 0)
    channel = grpc.insecure_channel(f"127.0.0.1:{service.port}")
    stub = pb_grpc.TrainerStub(channel)
    answers: dict[str, object] = {}

    def evaluate(name: str, code: str) -> None:
        request = pb.EvaluateRequest(
            program=pb.Program(code=code), task="mnist1d", budget=pb.Budget(steps=20)
        )
        try:
            answers[name] = stub.Evaluate(request, timeout=120)
        except grpc.RpcError as e:
            answers[name] = e.code()  # type: ignore[attr-defined]

    mlp = next(s.code for s in task_info("mnist1d").seeds if s.name == "mlp")
    running = threading.Thread(target=evaluate, args=("running", SLOW))
    waiting = threading.Thread(target=evaluate, args=("waiting", mlp))
    drained: list[bool] = []
    try:
        running.start()
        wait_for(lambda: trainer.busy == 1, "the first evaluation to start")
        waiting.start()
        wait_for(lambda: trainer.queued == 1, "the second to queue")
        drain = threading.Thread(target=lambda: drained.append(trainer.drain(120)))
        drain.start()
        wait_for(lambda: trainer.draining, "the drain to begin")
        evaluate("new", mlp)
        with pytest.raises(grpc.RpcError) as capacity:
            stub.GetCapacity(pb.GetCapacityRequest(), timeout=10)
        assert capacity.value.code() == grpc.StatusCode.UNAVAILABLE
        assert trainer.capacity().slots_total == 0
        drain.join(120)
        running.join(10)
        waiting.join(10)
    finally:
        channel.close()
        service.stop(grace=1)
        trainer.close()
    assert drained == [True], "the drain ends when nothing runs"
    finished = answers["running"]
    assert isinstance(finished, pb.EvaluateResponse), finished
    assert finished.status == common.EVAL_STATUS_OK, finished.message
    assert answers["waiting"] == grpc.StatusCode.UNAVAILABLE
    assert answers["new"] == grpc.StatusCode.UNAVAILABLE
    assert trainer.busy == 0 and trainer.queued == 0


def test_a_drain_that_times_out_says_so() -> None:
    trainer = server.Trainer(server.TrainerConfig(backend="bwrap", slots=1, warm=0, max_queue=0))
    done = threading.Event()

    def run() -> None:
        trainer.evaluate(
            pb.EvaluateRequest(
                program=pb.Program(code=SLOW), task="mnist1d", budget=pb.Budget(steps=20)
            )
        )
        done.set()

    worker = threading.Thread(target=run)
    try:
        worker.start()
        wait_for(lambda: trainer.busy == 1, "the evaluation to start")
        assert trainer.drain(0.5) is False
        assert trainer.drain(60) is True
        worker.join(60)
        assert done.is_set()
    finally:
        worker.join(60)
        trainer.close()
