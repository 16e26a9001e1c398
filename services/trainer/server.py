"""The Trainer service: slots, a warm pool of sandboxes, and the gRPC surface.

`Trainer` is the whole evaluation path; the gRPC servicer and `evo sandbox run` both
call `Trainer.evaluate`, so a person at the command line sees exactly what a search gets.
"""

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
from evo.v1 import common_pb2 as common
from evo.v1 import trainer_pb2 as pb
from evo.v1 import trainer_pb2_grpc as pb_grpc

from services.common import addresses, metrics
from services.common import server as grpc_server
from services.trainer import tasks
from services.trainer.evaluator import BadRequest, Job, evaluate
from services.trainer.sandbox import gpu as gpus
from services.trainer.sandbox.base import Backend, Limits, Sandbox

log = logging.getLogger(__name__)

DEFAULT_PORT = addresses.DEFAULT_PORTS["trainer"]
# An evaluation runs in two fresh sandboxes: training, then scoring (see evaluator.py).
SANDBOXES_PER_EVALUATION = 2
BACKENDS = ("bwrap", "docker", "process")


class Busy(Exception):
    """Every slot is taken and the queue is full."""


class Draining(Exception):
    """The trainer is stopping: it finishes what it runs and takes nothing new."""


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
    # GPUs: none by default; with some, slots come from them (one candidate per GPU).
    gpu: gpus.GpuConfig = field(default_factory=gpus.GpuConfig)
    # The bwrap sandbox's /proc: "fresh" or "minimal" (GPU pods; see gpus.proc_args).
    sandbox_proc: str = "fresh"


def make_backend(config: TrainerConfig, gpu: gpus.Gpu | None = None) -> Backend:
    """The configured backend; with `gpu`, one whose sandboxes get that GPU only."""
    if config.backend == "bwrap":
        from services.trainer.sandbox.local import BwrapBackend

        return BwrapBackend(config.limits, config.threads_per_slot, gpu, config.sandbox_proc)
    if config.backend == "docker":
        from services.trainer.sandbox.docker import DockerBackend

        return DockerBackend(
            config.limits, config.threads_per_slot, runtime=config.docker_runtime or None, gpu=gpu
        )
    if config.backend == "process":
        if gpu is not None:
            raise RuntimeError("the process backend cannot confine a GPU: use bwrap or docker")
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
    if config.sandbox_proc != "fresh" and config.backend != "bwrap":
        log.warning(
            "--sandbox-proc %s applies to the bwrap backend only; the %s backend ignores it",
            config.sandbox_proc,
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
    """Slots over one backend (CPU) or one backend per GPU, each with its warm pool.

    With GPUs, an evaluation's slot is a place on a GPU (gpus.SlotAssigner) and both its
    sandboxes (training, then scoring) come from that GPU's pool. GpuUnavailable at
    construction: asked for a GPU this machine does not have (the trainer must not start).
    """

    def __init__(self, config: TrainerConfig) -> None:
        self.config = config
        check_config(config)
        self.gpus = gpus.select(config.gpu)
        self.slots = config.slots
        self.assigner: gpus.SlotAssigner | None = None
        if self.gpus:
            self.assigner = gpus.SlotAssigner(self.gpus, config.gpu.slots_per_gpu)
            if config.slots > self.assigner.slots:
                raise RuntimeError(
                    f"--slots {config.slots} is more than the {self.assigner.slots} this "
                    f"trainer's {len(self.gpus)} GPU(s) hold at {config.gpu.slots_per_gpu} "
                    "candidate(s) each: lower --slots or give the trainer more GPUs"
                )
            self.slots = config.slots or self.assigner.slots
        if self.slots < 1:
            raise RuntimeError(f"a trainer needs at least one slot, not {self.slots}")
        lanes: list[gpus.Gpu | None] = list(self.gpus) or [None]
        self.backends = {g.minor if g else None: make_backend(config, g) for g in lanes}
        self.backend = next(iter(self.backends.values()))
        # Evaluations kept warm, spread over the GPUs (rounded up); two sandboxes each
        # (training, then scoring), all pre-started.
        warm = -(-config.warm // len(lanes)) if config.warm else 0
        self.pools = {
            key: WarmPool(b, SANDBOXES_PER_EVALUATION * warm) for key, b in self.backends.items()
        }
        self.pool = next(iter(self.pools.values()))
        self._slots = threading.BoundedSemaphore(self.slots)
        self._lock = threading.Lock()
        self.busy = 0
        self.queued = 0
        self.draining = False
        self._idle = threading.Condition(self._lock)
        metrics.TRAINER_SLOTS.set(self.slots)
        metrics.TRAINER_SLOTS_BUSY.set_function(lambda: self.busy)
        metrics.TRAINER_QUEUED.set_function(lambda: self.queued)
        metrics.TRAINER_DRAINING.set_function(lambda: int(self.draining))

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
            if self.draining:
                raise Draining("trainer draining before it stops; evaluate on another")
            if self.queued >= self.config.max_queue and self.busy >= self.slots:
                raise Busy(f"all {self.slots} slots busy and {self.queued} evaluations queued")
            self.queued += 1
        got = self._slots.acquire(timeout=wait_seconds)
        with self._lock:
            self.queued -= 1
            if got and self.draining:
                # Queued before the drain began: refused, so the caller retries elsewhere.
                self._slots.release()
                self._idle.notify_all()
                raise Draining("trainer draining before it stops; evaluate on another")
            if got:
                self.busy += 1
            self._idle.notify_all()
        if not got:
            raise Busy(f"no slot became free within {wait_seconds:.0f} s")
        gpu = self.assigner.take() if self.assigner else None
        pool = self.pools[gpu.minor if gpu else None]
        started = time.monotonic()

        def sandboxes() -> Sandbox:
            sandbox = pool.take()
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
            if self.assigner and gpu:
                self.assigner.give_back(gpu)
            with self._lock:
                self.busy -= 1
                self._idle.notify_all()
            self._slots.release()
        metrics.record_evaluation(
            common.EvalStatus.Name(response.status).removeprefix("EVAL_STATUS_"),
            gpu.device if gpu else "cpu",
            time.monotonic() - started,
        )
        response.trainer_id = self.config.trainer_id
        response.request_id = request.request_id
        return response

    def capacity(self) -> pb.Capacity:
        with self._lock:
            return pb.Capacity(
                # A draining trainer offers no slot: callers must not send it more work.
                slots_total=0 if self.draining else self.slots,
                slots_busy=self.busy,
                queued=self.queued,
                max_queue=self.config.max_queue,
                backends=[self.backend.name],
                devices=[g.describe() for g in self.gpus] or ["cpu"],
                trainer_id=self.config.trainer_id,
            )

    def drain(self, timeout: float | None = None) -> bool:
        """Refuse new evaluations and wait (up to `timeout`) for those running or queued to
        end; True when none is left. SIGTERM calls it before the server stops."""
        with self._lock:
            self.draining = True
            log.info("draining", extra={"busy": self.busy, "queued": self.queued})
            return self._idle.wait_for(lambda: self.busy == 0 and self.queued == 0, timeout)

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        for backend in self.backends.values():
            backend.close()


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
        except Draining as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(e))

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
        if self.trainer.draining:
            # As good as gone: callers that track live capacity drop this replica.
            context.abort(grpc.StatusCode.UNAVAILABLE, "trainer draining before it stops")
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
        max_workers=trainer.slots + trainer.config.max_queue + 4,
    )
