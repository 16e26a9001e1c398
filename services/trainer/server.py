"""The Trainer service: slots, a warm pool of sandboxes, and the gRPC surface.

`Trainer` is the whole evaluation path; the gRPC servicer and `evo sandbox run` both
call `Trainer.evaluate`, so a person at the command line sees exactly what a search gets.
"""

import logging
import os
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
from evo.v1 import common_pb2 as common
from evo.v1 import trainer_pb2 as pb
from evo.v1 import trainer_pb2_grpc as pb_grpc

from services.common import addresses
from services.common import server as grpc_server
from services.trainer import tasks
from services.trainer.evaluator import BadRequest, Job, evaluate
from services.trainer.sandbox.base import Backend, Limits, Sandbox

log = logging.getLogger(__name__)

DEFAULT_PORT = addresses.DEFAULT_PORTS["trainer"]
# An evaluation runs in two fresh sandboxes: training, then scoring (see evaluator.py).
SANDBOXES_PER_EVALUATION = 2
BACKENDS = ("bwrap", "docker", "process")


class Busy(Exception):
    """Every slot is taken and the queue is full."""


@dataclass
class TrainerConfig:
    backend: str = "bwrap"
    slots: int = 1
    threads_per_slot: int = 1
    # Evaluations whose sandboxes are started ahead of time, so that back-to-back evaluations
    # wait on no start-up: the pool holds SANDBOXES_PER_EVALUATION for each.
    warm: int = 1
    max_queue: int = 16
    limits: Limits = field(default_factory=Limits)
    allow_unisolated: bool = False
    # The docker backend's container runtime ("runsc": gVisor); the engine's default if empty.
    docker_runtime: str = ""
    trainer_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")


def make_backend(config: TrainerConfig) -> Backend:
    if config.backend == "bwrap":
        from services.trainer.sandbox.local import BwrapBackend

        return BwrapBackend(config.limits, config.threads_per_slot)
    if config.backend == "docker":
        from services.trainer.sandbox.docker import DockerBackend

        return DockerBackend(
            config.limits, config.threads_per_slot, runtime=config.docker_runtime or None
        )
    if config.backend == "process":
        if not config.allow_unisolated:
            raise RuntimeError(
                "the process backend does not isolate the candidate from this machine; "
                "use it for development only, with --allow-unisolated (EVO_ALLOW_UNISOLATED=1)"
            )
        from services.trainer.sandbox.local import ProcessBackend

        log.warning(
            "process backend: candidates run UNISOLATED (the filesystem, the network and "
            "this machine's other processes are theirs to reach); development only"
        )
        return ProcessBackend(config.limits, config.threads_per_slot)
    raise RuntimeError(f"unknown sandbox backend {config.backend!r}; choose one of {BACKENDS}")


def check_config(config: TrainerConfig) -> None:
    """Say so at start when a setting will not apply."""
    if config.docker_runtime and config.backend != "docker":
        log.warning(
            "the docker runtime %r ($EVO_SANDBOX_RUNTIME, --docker-runtime) applies to the "
            "docker backend only; the %s backend ignores it",
            config.docker_runtime,
            config.backend,
        )


class WarmPool:
    """Pre-started sandboxes, each handed out once; refilled in the background.

    One long-lived thread starts them all: `bwrap --die-with-parent` kills a sandbox
    when the *thread* that spawned it exits (PR_SET_PDEATHSIG follows the parent
    thread), so a sandbox must never be started from a short-lived thread.
    """

    def __init__(self, backend: Backend, size: int) -> None:
        self.backend = backend
        self.size = size
        self.ready: queue.Queue[Sandbox] = queue.Queue()
        self.closed = False
        self._wanted: queue.Queue[bool] = queue.Queue()
        self._starter = threading.Thread(target=self._start_loop, daemon=True, name="warm-pool")
        self._starter.start()
        for _ in range(size):
            self._refill()

    def _start_loop(self) -> None:
        while self._wanted.get():
            try:
                sandbox = self.backend.start()
                if self.closed:
                    sandbox.destroy()
                else:
                    self.ready.put(sandbox)
            except Exception:
                log.warning("could not pre-start a sandbox", exc_info=True)
            finally:
                self._wanted.task_done()

    def starting(self) -> int:
        """Sandboxes asked for and not in `ready` yet (being started, or about to be)."""
        return self._wanted.unfinished_tasks

    def _refill(self) -> None:
        self._wanted.put(True)

    def take(self) -> Sandbox:
        try:
            sandbox = self.ready.get_nowait()
        except queue.Empty:
            sandbox = self.backend.start()  # in the caller's thread, which then runs it
        if self.size and not self.closed:
            self._refill()
        return sandbox

    def close(self) -> None:
        self.closed = True
        self._wanted.put(False)
        while True:
            try:
                self.ready.get_nowait().destroy()
            except queue.Empty:
                return


class Trainer:
    def __init__(self, config: TrainerConfig) -> None:
        self.config = config
        check_config(config)
        self.backend = make_backend(config)
        # Two sandboxes an evaluation (training, then scoring), each pre-started.
        self.pool = WarmPool(self.backend, SANDBOXES_PER_EVALUATION * config.warm)
        self._slots = threading.BoundedSemaphore(config.slots)
        self._lock = threading.Lock()
        self.busy = 0
        self.queued = 0

    def evaluate(
        self,
        request: pb.EvaluateRequest,
        on_progress: Callable[[dict], None] | None = None,
        wait_seconds: float | None = None,
        on_sandbox: Callable[[Sandbox], None] | None = None,
    ) -> pb.EvaluateResponse:
        """Evaluate one program. BadRequest for a wrong request, Busy when full."""
        job = Job.from_request(request, self.config.limits)
        with self._lock:
            if self.queued >= self.config.max_queue and self.busy >= self.config.slots:
                raise Busy(
                    f"all {self.config.slots} slots busy and {self.queued} evaluations queued"
                )
            self.queued += 1
        got = self._slots.acquire(timeout=wait_seconds)
        with self._lock:
            self.queued -= 1
            if got:
                self.busy += 1
        if not got:
            raise Busy(f"no slot became free within {wait_seconds:.0f} s")

        def sandboxes() -> Sandbox:
            sandbox = self.pool.take()
            if on_sandbox is not None:
                on_sandbox(sandbox)
            return sandbox

        try:
            response = evaluate(job, sandboxes, self.config.threads_per_slot, on_progress)
        except Exception as e:
            log.exception("evaluation failed inside the trainer")
            response = pb.EvaluateResponse(
                status=common.EVAL_STATUS_INTERNAL, message=f"trainer error: {e}"[:500]
            )
        finally:
            with self._lock:
                self.busy -= 1
            self._slots.release()
        response.trainer_id = self.config.trainer_id
        response.request_id = request.request_id
        return response

    def capacity(self) -> pb.Capacity:
        with self._lock:
            return pb.Capacity(
                slots_total=self.config.slots,
                slots_busy=self.busy,
                queued=self.queued,
                max_queue=self.config.max_queue,
                backends=[self.backend.name],
                devices=["cpu"],
                trainer_id=self.config.trainer_id,
            )

    def close(self) -> None:
        self.pool.close()
        self.backend.close()


def task_info(name: str) -> pb.TaskInfo:
    task = tasks.get(name)
    steps = task.recipe.default_steps
    return pb.TaskInfo(
        name=task.name,
        description=task.description,
        language=pb.PROGRAM_LANGUAGE_PYTORCH
        if task.language == "pytorch"
        else pb.PROGRAM_LANGUAGE_JAX,
        prompt_header=task.prompt_header,
        program_opening=task.program_opening,
        seeds=[pb.SeedProgram(name=n, code=c) for n, c in task.seeds()],
        default_budget=pb.Budget(steps=steps, eval_every=task.recipe.eval_every(steps)),
        grammar=task.grammar(),
        grammar_version=task.grammar_version,
    )


class TrainerServicer(pb_grpc.TrainerServicer):
    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def _run(self, request, context, on_progress=None):  # type: ignore[no-untyped-def]
        remaining = context.time_remaining()
        try:
            return self.trainer.evaluate(
                request,
                on_progress,
                wait_seconds=remaining,
                # A caller that gives up takes its sandbox down with it.
                on_sandbox=lambda sandbox: context.add_callback(sandbox.destroy),
            )
        except BadRequest as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Busy as e:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"trainer busy: {e}; retry later")

    def Evaluate(self, request, context):
        return self._run(request, context)

    def EvaluateStream(self, request, context):
        events: queue.Queue[pb.EvaluateEvent | None] = queue.Queue()

        def progress(p: dict) -> None:
            events.put(
                pb.EvaluateEvent(
                    progress=pb.EvaluateProgress(
                        stage=str(p.get("stage", "")),
                        step=int(p.get("step", 0)),
                        total_steps=int(p.get("total_steps", 0)),
                        train_loss=float(p.get("train_loss", 0.0)),
                    )
                )
            )

        outcome: list[pb.EvaluateResponse] = []
        failure: list[BaseException] = []

        def work() -> None:
            try:
                outcome.append(self._run(request, context, progress))
            except BaseException as e:
                failure.append(e)
            finally:
                events.put(None)

        threading.Thread(target=work, daemon=True).start()
        yield from _drain(events)
        if failure:
            raise failure[0]
        yield pb.EvaluateEvent(result=outcome[0])

    def GetCapacity(self, request, context):
        return self.trainer.capacity()

    def ListTasks(self, request, context):
        return pb.ListTasksResponse(tasks=[task_info(n) for n in tasks.names()])

    def GetTask(self, request, context):
        try:
            return task_info(request.name)
        except KeyError as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e.args[0]))
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except ModuleNotFoundError as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))


def _drain(events: "queue.Queue[pb.EvaluateEvent | None]") -> Iterator[pb.EvaluateEvent]:
    while (event := events.get()) is not None:
        yield event


def start(trainer: Trainer, host: str = "127.0.0.1", port: int = DEFAULT_PORT):  # type: ignore[no-untyped-def]
    servicer = TrainerServicer(trainer)
    return grpc_server.start(
        lambda server: pb_grpc.add_TrainerServicer_to_server(servicer, server),
        [pb.DESCRIPTOR.services_by_name["Trainer"].full_name],
        host=host,
        port=port,
        # Queued evaluations hold a thread while they wait for a slot.
        max_workers=trainer.config.slots + trainer.config.max_queue + 4,
    )
