"""gRPC clients of the three services, with retries, deadlines and trainer balancing.

Retries and failover live here and nowhere else: the search calls typed methods
(`Proposer.generate`, `Trainers.evaluate`, ...) and gets an answer or `CallFailed`.
A call that fails for a reason that may pass (the service restarting, busy, cut off)
is retried with exponential backoff; after the last attempt the caller gets `CallFailed`
and records the candidate as failed. A request the service calls wrong is never retried.
"""

import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from evo.v1 import common_pb2 as common
from evo.v1 import lineage_pb2_grpc, proposer_pb2, proposer_pb2_grpc, trainer_pb2, trainer_pb2_grpc

from services.common import addresses

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
LINEAGE_TIMEOUT_SECONDS = 30.0
# The store must not lose a write: it is retried for longer than other calls.
LINEAGE_ATTEMPTS = 12
# A model server restarting can take minutes: proposer calls wait at least this many tries.
PROPOSER_MIN_ATTEMPTS = 10
# In the UNAVAILABLE of a trainer that is stopping (services/trainer/server.py, on SIGTERM).
DRAINING = "draining"


class TrainerDraining(Exception):
    """A trainer answered that it is stopping: as good as gone, not worth retrying."""


def is_draining(e: grpc.RpcError) -> bool:
    code, details = e.code(), e.details() or ""  # type: ignore[attr-defined]
    return bool(code == grpc.StatusCode.UNAVAILABLE and DRAINING in details)


class CallFailed(Exception):
    """A call that did not succeed within its attempts; the message says why."""

    def __init__(self, what: str, code: grpc.StatusCode | None, details: str) -> None:
        name = code.name if code else "ERROR"
        super().__init__(f"{what}: {name}: {details}")
        self.code = code


@dataclass(frozen=True)
class Backoff:
    first_seconds: float = 0.5
    max_seconds: float = 30.0

    def delay(self, attempt: int) -> float:
        """Full jitter: many controllers retrying at once do not retry in step."""
        return random.uniform(0, min(self.max_seconds, self.first_seconds * 2**attempt))


def call_with_retries(
    fn: Callable[[], T],
    what: str,
    attempts: int,
    backoff: Backoff = Backoff(),
    should_stop: Callable[[], bool] = lambda: False,
) -> T:
    last: grpc.RpcError | None = None
    for attempt in range(attempts):
        try:
            return fn()
        except grpc.RpcError as e:
            code = e.code()  # type: ignore[attr-defined]
            if code not in RETRYABLE:
                raise CallFailed(what, code, e.details()) from None  # type: ignore[attr-defined]
            last = e
            if attempt + 1 < attempts and not should_stop():
                pause = backoff.delay(attempt)
                log.info("retrying %s after %s (%.1f s)", what, code.name, pause)
                time.sleep(pause)
    assert last is not None
    raise CallFailed(what, last.code(), last.details())  # type: ignore[attr-defined]


def channel(target: str) -> grpc.Channel:
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # A DNS name with several addresses (a headless Kubernetes Service) is balanced.
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.enable_retries", 0),
    ]
    return grpc.insecure_channel(target, options=options)


class Lineage:
    """The lineage store, each call retried (writes are idempotent, so retrying is safe)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._channel = channel(target)
        self.stub = lineage_pb2_grpc.LineageStub(self._channel)

    def __call__(self, method: str, request: Any) -> Any:
        rpc = getattr(self.stub, method)
        return call_with_retries(
            lambda: rpc(request, timeout=LINEAGE_TIMEOUT_SECONDS),
            f"lineage store {self.target} {method}",
            LINEAGE_ATTEMPTS,
        )

    def candidates(self, request: Any) -> list[Any]:
        """Every candidate a ListCandidatesRequest matches, all pages of it."""
        found: list[Any] = []
        request.page_size = request.page_size or 1000
        while True:
            page = self("ListCandidates", request)
            found.extend(page.candidates)
            if not page.next_page_token:
                return found
            request.page_token = page.next_page_token

    def close(self) -> None:
        self._channel.close()


class Proposer:
    """The proposal service; each call waits patiently for a restarting model server."""

    def __init__(
        self,
        target: str,
        attempts: int = 4,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.target = target
        self._channel = channel(target)
        self.stub = proposer_pb2_grpc.ProposerStub(self._channel)
        self.attempts = max(attempts, PROPOSER_MIN_ATTEMPTS)
        # A search being stopped stops waiting between attempts.
        self.should_stop = should_stop

    def _call(self, method: str, request: Any, timeout: float) -> Any:
        rpc = getattr(self.stub, method)
        return call_with_retries(
            lambda: rpc(request, timeout=timeout),
            f"proposer {self.target} {method}",
            self.attempts,
            should_stop=self.should_stop,
        )

    def info(self) -> proposer_pb2.ProposerInfo:
        return self._call("GetInfo", proposer_pb2.GetInfoRequest(), 30.0)

    def generate(
        self, request: proposer_pb2.GenerateRequest, timeout: float
    ) -> proposer_pb2.GenerateResponse:
        return self._call("Generate", request, timeout)

    def train_soft_prompt(
        self, request: proposer_pb2.TrainSoftPromptRequest, timeout: float
    ) -> proposer_pb2.TrainSoftPromptResponse:
        return self._call("TrainSoftPrompt", request, timeout)

    def close(self) -> None:
        self._channel.close()


class Trainer:
    """One trainer address and how many evaluations it is running for this controller."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._channel = channel(target)
        self.stub = trainer_pb2_grpc.TrainerStub(self._channel)
        self.slots = 1
        self.in_flight = 0

    def close(self) -> None:
        self._channel.close()


class Trainers:
    """Spreads evaluations over several trainer addresses by free slots.

    `evaluate` is the one place an evaluation is retried and moved: `acquire` blocks
    until some trainer has a free slot (as this controller counts them); a trainer that
    answers RESOURCE_EXHAUSTED (shared with other controllers) makes the caller back off
    and try again, possibly elsewhere. `discover` reads each trainer's live Capacity (and
    how many pods a `dns:` name has now); the search calls it every round, so trainers
    scaled up or started late are used from the next round on.
    """

    def __init__(self, targets: list[str], attempts: int = 4) -> None:
        self.trainers = [Trainer(t) for t in targets]
        self.attempts = attempts
        self._cond = threading.Condition()

    def discover(self, attempts: int | None = None) -> int:
        """Ask each trainer for its slots now; returns the total. A trainer that does not
        answer keeps the count it had (one slot at first); one that says it is draining
        (stopping) gets none until it answers again (a `dns:` name's other pods are asked
        on the retry instead)."""
        for t in self.trainers:

            def ask(t: Trainer = t) -> trainer_pb2.Capacity:
                try:
                    return t.stub.GetCapacity(trainer_pb2.GetCapacityRequest(), timeout=10)
                except grpc.RpcError as e:
                    if is_draining(e) and not t.target.startswith("dns:"):
                        raise TrainerDraining(e.details()) from None  # type: ignore[attr-defined]
                    raise

            try:
                capacity = call_with_retries(
                    ask, f"trainer {t.target} GetCapacity", attempts or self.attempts
                )
                slots = max(1, capacity.slots_total) * dns_endpoints(t.target)
            except TrainerDraining as e:
                log.info("trainer %s is draining (%s): no evaluations sent to it", t.target, e)
                slots = 0
            except CallFailed as e:
                log.warning("%s; keeping %d slot(s)", e, t.slots)
                continue
            with self._cond:
                if slots != t.slots:
                    log.info("trainer %s: %d slot(s), was %d", t.target, slots, t.slots)
                t.slots = slots
                self._cond.notify_all()
        return sum(t.slots for t in self.trainers)

    def task(self, name: str) -> trainer_pb2.TaskInfo:
        """The task's description and seeds, from the first trainer that answers."""
        problem: CallFailed | None = None
        for t in self.trainers:
            try:
                return call_with_retries(
                    lambda t=t: t.stub.GetTask(trainer_pb2.GetTaskRequest(name=name), timeout=30),
                    f"trainer {t.target} GetTask",
                    self.attempts,
                )
            except CallFailed as e:
                if e.code not in RETRYABLE:
                    raise
                problem = e
        assert problem is not None
        raise problem

    def evaluate(
        self, request: trainer_pb2.EvaluateRequest, timeout: float
    ) -> trainer_pb2.EvaluateResponse:
        """One evaluation, moved to another trainer when one fails for its own reasons.

        A busy trainer (RESOURCE_EXHAUSTED: shared with other controllers) is waited
        for without using up an attempt; a trainer that is down, cut off or failing
        inside (INTERNAL) uses one, and the next attempt goes elsewhere if it can.
        Returns the trainer's answer (an INTERNAL one after the last attempt, as it is);
        raises CallFailed when no trainer could be asked.
        """
        failures, busy = 0, 0
        last: Trainer | None = None
        problem: CallFailed | trainer_pb2.EvaluateResponse | None = None
        while failures < self.attempts:
            trainer = self.acquire(avoid=last)
            try:
                reply = trainer.stub.Evaluate(request, timeout=timeout)
            except grpc.RpcError as e:
                code = e.code()  # type: ignore[attr-defined]
                if is_draining(e) and not trainer.target.startswith("dns:"):
                    with self._cond:
                        trainer.slots = 0  # stopping: nothing more goes there until rediscovered
                problem = CallFailed(f"trainer {trainer.target} Evaluate", code, e.details())  # type: ignore[attr-defined]
                if code not in RETRYABLE:
                    raise problem from None
            else:
                if reply.status != common.EVAL_STATUS_INTERNAL:
                    return reply
                problem = reply
            finally:
                self.release(trainer)
            last = trainer
            if (
                isinstance(problem, CallFailed)
                and problem.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            ):
                busy += 1
                time.sleep(Backoff().delay(min(busy, 6)))
                continue
            failures += 1
            log.info("evaluation attempt %d of %d failed: %s", failures, self.attempts, problem)
            if failures < self.attempts:
                time.sleep(Backoff().delay(failures))
        if isinstance(problem, CallFailed):
            raise problem
        assert problem is not None
        return problem

    def acquire(self, avoid: Trainer | None = None) -> Trainer:
        """A trainer with a free slot; with several trainers, never `avoid` (the one that
        just failed): wait for another's slot rather than retry a dead trainer at once."""
        with self._cond:
            while True:
                # Every trainer draining or gone: try them all (the caller's attempts bound
                # that) rather than wait for ever for a rediscovery.
                live = [t for t in self.trainers if t.slots > 0] or self.trainers
                free = [t for t in live if t.in_flight < max(1, t.slots)]
                if len(live) > 1 and avoid in free:
                    free.remove(avoid)
                if free:
                    best = min(free, key=lambda t: t.in_flight / max(1, t.slots))
                    best.in_flight += 1
                    return best
                self._cond.wait()

    def release(self, trainer: Trainer) -> None:
        with self._cond:
            trainer.in_flight -= 1
            self._cond.notify_all()

    def close(self) -> None:
        for t in self.trainers:
            t.close()


def dns_endpoints(target: str) -> int:
    """How many addresses a `dns:` target resolves to (a headless Service's pods), else 1.

    The channel spreads calls over all of them round robin, so such a target counts as
    that many trainers, each with the slots the one that answered GetCapacity reports.
    """
    if not target.startswith("dns:"):
        return 1
    name = target.rsplit("/", 1)[-1]
    host = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return 1
    return max(1, len({info[4][0] for info in infos}))


def trainer_targets(configured: list[str]) -> list[str]:
    return configured or [addresses.resolve("trainer", None)]
