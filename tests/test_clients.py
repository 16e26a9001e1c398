"""The controller's clients: live trainer capacity, failover and retries in one place.

A stand-in Trainer service (a real gRPC server on a free port) answers GetCapacity with
whatever slot count the test sets and counts the Evaluate calls it runs at once, so the
client's behaviour is checked over the wire, without training anything.
"""

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import pytest
from evo.v1 import common_pb2 as common
from evo.v1 import trainer_pb2 as pb
from evo.v1 import trainer_pb2_grpc as pb_grpc

from controller.clients import CallFailed, Trainers
from services.common import server as grpc_server


@dataclass
class StandInTrainer(pb_grpc.TrainerServicer):
    slots: int = 1
    fail_with: grpc.StatusCode | None = None
    evaluate_seconds: float = 0.3
    calls: list[str] = field(default_factory=list)
    running: int = 0
    most_at_once: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def GetCapacity(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append("GetCapacity")
        if self.fail_with:
            context.abort(self.fail_with, "down for the test")
        return pb.Capacity(slots_total=self.slots)

    def GetTask(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append("GetTask")
        if self.fail_with:
            context.abort(self.fail_with, "down for the test")
        return pb.TaskInfo(name=request.name)

    def Evaluate(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append("Evaluate")
        if self.fail_with:
            context.abort(self.fail_with, "down for the test")
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(self.evaluate_seconds)
        with self.lock:
            self.running -= 1
        return pb.EvaluateResponse(status=common.EVAL_STATUS_OK, trainer_id="stand-in")


@pytest.fixture
def serve() -> Iterator:  # type: ignore[type-arg]
    started = []

    def start(servicer: StandInTrainer) -> str:
        service = grpc_server.start(
            lambda s: pb_grpc.add_TrainerServicer_to_server(servicer, s),
            [pb.DESCRIPTOR.services_by_name["Trainer"].full_name],
            host="127.0.0.1",
            port=0,
        )
        started.append(service)
        return f"127.0.0.1:{service.port}"

    yield start
    for service in started:
        service.stop(grace=0)


def evaluate_many(trainers: Trainers, n: int) -> list[pb.EvaluateResponse]:
    request = pb.EvaluateRequest(task="mnist1d")
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: trainers.evaluate(request, timeout=10), range(n)))


def test_slots_follow_live_capacity_at_each_rediscovery(serve) -> None:  # type: ignore[no-untyped-def]
    stand_in = StandInTrainer(slots=1)
    trainers = Trainers([serve(stand_in)], attempts=2)
    assert trainers.discover() == 1
    evaluate_many(trainers, 3)
    assert stand_in.most_at_once == 1  # one slot: one at a time
    stand_in.slots, stand_in.most_at_once = 3, 0  # the trainer scaled up mid-search
    assert trainers.discover() == 3
    evaluate_many(trainers, 3)
    assert stand_in.most_at_once == 3
    stand_in.fail_with = grpc.StatusCode.UNAVAILABLE  # gone for a while: keeps its count
    assert trainers.discover() == 3
    trainers.close()


def test_an_evaluation_moves_to_a_trainer_that_answers(serve) -> None:  # type: ignore[no-untyped-def]
    down = StandInTrainer(fail_with=grpc.StatusCode.UNAVAILABLE)
    up = StandInTrainer(evaluate_seconds=0.0)
    trainers = Trainers([serve(down), serve(up)], attempts=3)
    replies = evaluate_many(trainers, 4)
    assert all(r.status == common.EVAL_STATUS_OK for r in replies)
    assert up.calls.count("Evaluate") == 4
    assert trainers.task("mnist1d").name == "mnist1d"  # GetTask too, from the one that answers
    trainers.close()


def test_a_request_the_trainer_refuses_is_not_retried(serve) -> None:  # type: ignore[no-untyped-def]
    wrong = StandInTrainer(fail_with=grpc.StatusCode.INVALID_ARGUMENT)
    trainers = Trainers([serve(wrong)], attempts=4)
    with pytest.raises(CallFailed, match="INVALID_ARGUMENT"):
        trainers.evaluate(pb.EvaluateRequest(task="mnist1d"), timeout=5)
    assert wrong.calls.count("Evaluate") == 1
    trainers.close()


def test_a_draining_trainer_is_dropped_at_rediscovery(serve) -> None:  # type: ignore[no-untyped-def]
    """A real trainer told to drain (as on SIGTERM) answers GetCapacity UNAVAILABLE: the
    controller takes it as gone, not as a trainer down for a while that keeps its slots."""
    from services.trainer import server

    real = server.Trainer(server.TrainerConfig(backend="bwrap", slots=2, warm=0))
    service = server.start(real, "127.0.0.1", 0)
    other = StandInTrainer(slots=1, evaluate_seconds=0.0)
    trainers = Trainers([f"127.0.0.1:{service.port}", serve(other)], attempts=3)
    try:
        assert trainers.discover() == 3
        assert real.drain(timeout=5)
        started = time.monotonic()
        assert trainers.discover() == 1  # the draining one offers nothing, at once
        assert time.monotonic() - started < 5  # not retried as if it were down
        replies = evaluate_many(trainers, 3)
        assert all(r.trainer_id == "stand-in" for r in replies)
        assert other.calls.count("Evaluate") == 3
    finally:
        trainers.close()
        service.stop(grace=0)
        real.close()
