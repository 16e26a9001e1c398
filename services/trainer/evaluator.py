"""The trusted side of an evaluation: build the jobs, run them in two sandboxes, score.

An evaluation is two runs, each in a fresh sandbox (services/trainer/protocol.py): the
training run returns the model's state at each checkpoint of the job's schedule; the
scoring run rebuilds the model from its code, loads those checkpoints and returns
predictions on validation and test inputs. Everything that is scored is computed here:
the parameter count (the checkpoints' elements), the schedule and steps (the job's), the
training time (measured around the training run), the accuracies (predictions against
labels that never leave this process). What comes back is read with the protocol's
bounds; anything malformed makes the candidate CRASHED with the reason.
"""

import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import BinaryIO

import numpy as np
from evo.v1 import common_pb2 as common
from evo.v1 import trainer_pb2 as pb

from services.common.text import escape_controls, escaped_tail
from services.trainer import protocol, tasks
from services.trainer.protocol import ProtocolError
from services.trainer.sandbox.base import Limits, RawRun, Sandbox, Spool
from services.trainer.tasks.base import Task

STATUSES = {
    "OK": common.EVAL_STATUS_OK,
    "INVALID": common.EVAL_STATUS_INVALID,
    "REJECTED": common.EVAL_STATUS_REJECTED,
    "TIMEOUT": common.EVAL_STATUS_TIMEOUT,
    "OOM": common.EVAL_STATUS_OOM,
    "CRASHED": common.EVAL_STATUS_CRASHED,
    "DIVERGED": common.EVAL_STATUS_DIVERGED,
}

CPU_MARGIN_SECONDS = 30
# The scoring run gets what is left of the wall-clock limit, but never less than this.
MIN_SCORING_SECONDS = 30.0
# Reading and scoring what came back: past this, the result is refused (CRASHED).
SCORING_BUDGET_SECONDS = 1.0
LANGUAGES = {pb.PROGRAM_LANGUAGE_PYTORCH: "pytorch", pb.PROGRAM_LANGUAGE_JAX: "jax"}

ProgressCallback = Callable[[dict], None]


class BadRequest(ValueError):
    """The request itself is wrong (unknown task, empty code): the caller's error, not the
    candidate's."""


class Refused(Exception):
    """The evaluation ends here with this status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def schedule(steps: int, eval_every: int) -> tuple[int, ...]:
    """The checkpoint steps: every `eval_every` steps, and the last step."""
    points = list(range(eval_every, steps + 1, eval_every))
    if not points or points[-1] != steps:
        points.append(steps)
    return tuple(points)


@dataclass(frozen=True)
class Job:
    code: str
    task: Task
    steps: int
    seed: int
    eval_every: int
    limits: Limits

    @classmethod
    def from_request(cls, req: pb.EvaluateRequest, cap: Limits) -> "Job":
        if not req.program.code.strip():
            raise BadRequest("program.code is empty")
        try:
            task = tasks.get(req.task or "mnist1d")
        except KeyError as e:
            raise BadRequest(str(e.args[0])) from None
        except (ValueError, ModuleNotFoundError) as e:
            raise BadRequest(str(e)) from None
        language = LANGUAGES.get(req.program.language)
        if language and language != task.language:
            raise BadRequest(f"task {task.name} takes {task.language} programs, not {language}")
        if req.budget.steps < 0 or req.budget.eval_every < 0:
            raise BadRequest("budget.steps and budget.eval_every must be 0 (default) or more")
        steps = req.budget.steps or task.recipe.default_steps
        eval_every = req.budget.eval_every or task.recipe.eval_every(steps)
        if len(schedule(steps, eval_every)) > protocol.MAX_CHECKPOINTS:
            raise BadRequest(
                f"budget.eval_every {eval_every} makes more than {protocol.MAX_CHECKPOINTS} "
                f"checkpoints in {steps} steps: raise it"
            )
        asked = Limits(
            wall_seconds=req.limits.wall_seconds,
            memory_bytes=req.limits.memory_bytes,
            max_processes=req.limits.max_processes,
            max_output_bytes=req.limits.max_output_bytes,
            max_params=req.limits.max_params,
        )
        if min(asked.wall_seconds, asked.memory_bytes, asked.max_processes,
               asked.max_output_bytes, asked.max_params) < 0:  # fmt: skip
            raise BadRequest("limits must be 0 (the trainer's default) or more")
        if math.isnan(asked.wall_seconds):
            raise BadRequest("limits.wall_seconds is not a number")
        return cls(
            code=req.program.code,
            task=task,
            steps=steps,
            seed=req.budget.seed,
            eval_every=eval_every,
            limits=asked.capped_by(cap),
        )

    @property
    def checkpoint_steps(self) -> tuple[int, ...]:
        return schedule(self.steps, self.eval_every)

    def child_job(self, phase: str, threads: int, limits: Limits) -> protocol.ChildJob:
        return protocol.ChildJob(
            phase=phase,
            code=self.code,
            seed=self.seed,
            steps=self.steps,
            checkpoint_steps=self.checkpoint_steps,
            threads=threads,
            max_params=self.limits.max_params,
            rlimits=protocol.Rlimits(
                memory_bytes=limits.memory_bytes,
                # A backstop under the wall-clock kill: whatever happens to the trainer, a
                # sandboxed process cannot burn more CPU than its run was allowed.
                cpu_seconds=int(limits.wall_seconds * max(threads, 1)) + CPU_MARGIN_SECONDS,
                max_processes=limits.max_processes,
                file_bytes=limits.file_bytes,
                open_files=limits.open_files,
            ),
            **self.task.job_settings(),
        )

    def train_job(self, threads: int) -> BinaryIO:
        """The training run's stdin: the job and the training split, nothing held out."""
        job = self.child_job(protocol.TRAIN, threads, self.limits)
        return io.BytesIO(protocol.encode_job(job, self.task.train_arrays()))

    def score_job(self, threads: int, limits: Limits, checkpoints: "Checkpoints") -> BinaryIO:
        """The scoring run's stdin: the job, validation and test inputs (never labels), then
        the checkpoint frames, streamed from the spool."""
        job = self.child_job(protocol.SCORE, threads, limits)
        head = protocol.encode_job(job, self.task.score_arrays())
        stream = JobStream(checkpoints.spool, [head, *checkpoints.frames()])
        return stream  # type: ignore[return-value]

    # Kept for callers that only want the training run's bytes (tests, benchmarks).
    def encode(self, threads: int) -> bytes:
        return self.train_job(threads).read()


class JobStream:
    """A job read in pieces: bytes, and byte ranges of a spool file (never all in memory)."""

    def __init__(self, spool: Spool, pieces: list[bytes | tuple[int, int]]) -> None:
        self._spool = spool
        self._pieces = iter(pieces)
        self._current = io.BytesIO()
        self._offset = self._left = 0  # the spool range being read

    def read(self, size: int = -1) -> bytes:
        size = 1 << 20 if size is None or size < 0 else size
        while True:
            if self._left:
                self._spool.file.seek(self._offset)
                chunk = self._spool.file.read(min(size, self._left))
                if not chunk:
                    raise OSError("the spool file ended early")
                self._offset += len(chunk)
                self._left -= len(chunk)
                return chunk
            if chunk := self._current.read(size):
                return chunk
            piece = next(self._pieces, None)
            if piece is None:
                return b""
            if isinstance(piece, bytes):
                self._current = io.BytesIO(piece)
            else:
                self._offset, self._left = piece


@dataclass
class Checkpoints:
    """What the training run returned, checked; the tensors' bytes stay in the spool."""

    spool: Spool
    # Where each checkpoint's tensor bytes are in the spool: (offset, size).
    data: list[tuple[int, int]]
    # The tensors' types and shapes, named by position (protocol.anonymous_header).
    header: bytes
    losses: list[float]
    num_params: int

    def frames(self) -> list[bytes | tuple[int, int]]:
        """The checkpoints as the scoring run reads them: no loss, no names, the tensors."""
        pieces: list[bytes | tuple[int, int]] = []
        for offset, size in self.data:
            payload = protocol.LOSS.size + len(self.header) + size
            pieces += [protocol.FRAME.pack(protocol.CHECKPOINT, payload)]
            pieces += [protocol.LOSS.pack(0.0) + self.header, (offset, size)]
        return pieces


def evaluate(
    job: Job,
    sandboxes: Callable[[], Sandbox],
    threads: int,
    on_progress: ProgressCallback | None = None,
) -> pb.EvaluateResponse:
    """Train `job` in one sandbox from `sandboxes`, score it in another, and judge it.
    Every sandbox is destroyed after its run."""
    started = time.monotonic()
    spools: list[Spool] = []
    tails: list[str] = []
    info: list[Sandbox] = []

    def run(payload: Callable[[], BinaryIO], limits: Limits, progress=None) -> RawRun:  # type: ignore[no-untyped-def]
        sandbox = sandboxes()
        info.append(sandbox)
        try:
            raw = sandbox.run(payload(), limits, progress)
        finally:
            sandbox.destroy()
        if raw.result is not None:
            spools.append(raw.result)
        tails.append(raw.log_tail)
        return raw

    limits = replace(job.limits, max_checkpoints=len(job.checkpoint_steps))
    try:
        trained = run(lambda: job.train_job(threads), limits, _progress(job, on_progress))
        train_seconds = trained.wall_seconds
        judge_run(job, trained, limits)
        assert trained.result is not None
        checkpoints = read_checkpoints(job, trained.result)
        left = max(limits.wall_seconds - train_seconds, MIN_SCORING_SECONDS)
        score_limits = replace(limits, wall_seconds=min(left, limits.wall_seconds))
        scored = run(lambda: job.score_job(threads, score_limits, checkpoints), score_limits)
        judge_run(job, scored, score_limits, scoring=True)
        assert scored.result is not None
        response = score(job, scored.result, checkpoints, train_seconds)
    except Refused as r:
        response = pb.EvaluateResponse(status=r.status, message=r.message)
    finally:
        for spool in spools:
            spool.close()

    tail = tails[0] if tails else ""
    if len(tails) > 1 and tails[1]:
        tail += "\n--- scoring run ---\n" + tails[1]
    response.log_tail = escaped_tail(tail, job.limits.log_tail_bytes)
    response.message = escape_controls(response.message)[: protocol.MAX_MESSAGE_CHARS]
    response.wall_seconds = time.monotonic() - started
    if info:
        response.sandbox.CopyFrom(
            pb.SandboxInfo(
                backend=info[0].backend,
                isolated=info[0].isolated,
                device=info[0].device,
                limits=pb.Limits(
                    wall_seconds=job.limits.wall_seconds,
                    memory_bytes=job.limits.memory_bytes,
                    max_processes=job.limits.max_processes,
                    max_output_bytes=job.limits.max_output_bytes,
                    max_params=job.limits.max_params,
                ),
            )
        )
        if not info[0].isolated:
            response.message = (
                "UNISOLATED process backend (development only). " + response.message
            ).strip()
    return response


def _progress(job: Job, on_progress: ProgressCallback | None) -> Callable[[bytes], None] | None:
    if on_progress is None:
        return None

    def deliver(payload: bytes) -> None:
        p = protocol.Progress.decode(payload, job.steps)
        if p is not None:
            on_progress(
                {"stage": p.stage, "step": p.step, "total_steps": p.total_steps,
                 "train_loss": p.train_loss}
            )  # fmt: skip

    return deliver


def judge_run(job: Job, raw: RawRun, limits: Limits, scoring: bool = False) -> protocol.Outcome:
    """The run's outcome if it ended well; otherwise Refused with why."""
    during = " while its checkpoints were scored" if scoring else ""
    if raw.timed_out:
        raise Refused(
            common.EVAL_STATUS_TIMEOUT,
            f"ran past the {limits.wall_seconds:g} s wall-clock limit{during}",
        )
    if raw.output_overflow:
        raise Refused(
            common.EVAL_STATUS_CRASHED,
            f"printed more than the {limits.max_output_bytes:,}-byte output limit{during}",
        )
    if raw.violation:
        raise Refused(common.EVAL_STATUS_CRASHED, f"returned a malformed result: {raw.violation}")
    if raw.result_overflow:
        raise Refused(common.EVAL_STATUS_CRASHED, "returned a result over the size limit")
    if raw.result is None:
        if raw.oom_killed:
            raise Refused(
                common.EVAL_STATUS_OOM,
                f"killed for going over the {limits.memory_bytes:,}-byte memory limit{during}",
            )
        if raw.signal_name == "SIGXCPU":
            raise Refused(common.EVAL_STATUS_TIMEOUT, f"ran past its CPU-time limit{during}")
        if raw.signal_name == "SIGKILL":
            raise Refused(
                common.EVAL_STATUS_CRASHED,
                "killed (SIGKILL) before returning a result: a memory limit or the "
                f"candidate itself{during}",
            )
        if raw.signal_name:
            raise Refused(
                common.EVAL_STATUS_CRASHED,
                f"killed by {raw.signal_name} before returning a result{during}",
            )
        raise Refused(
            common.EVAL_STATUS_CRASHED,
            f"exited with code {raw.exit_code} before returning a result{during}",
        )
    try:
        end = raw.result.frames[-1]
        outcome = protocol.Outcome.decode(raw.result.payload(end, protocol.MAX_END_BYTES))
    except ProtocolError as e:
        raise Refused(common.EVAL_STATUS_CRASHED, f"returned a malformed result ({e})") from None
    if outcome.status != "OK":
        prefix = "scoring its checkpoints: " if scoring else ""
        raise Refused(STATUSES[outcome.status], prefix + outcome.message)
    return outcome


def _malformed(e: Exception) -> Refused:
    return Refused(common.EVAL_STATUS_CRASHED, f"returned a malformed result ({e})")


def read_checkpoints(job: Job, spool: Spool) -> Checkpoints:
    """The training run's checkpoints, checked: exactly the job's schedule, each holding
    the same tensors (names, types, shapes), finite losses, the count within the cap."""
    frames = spool.frames[:-1]  # the last is the end frame
    want = len(job.checkpoint_steps)
    try:
        if any(f.kind != protocol.CHECKPOINT for f in frames):
            raise ProtocolError("the training run sent frames other than checkpoints")
        if len(frames) != want:
            raise ProtocolError(
                f"{len(frames)} checkpoints for a schedule of {want} (steps "
                f"{', '.join(map(str, job.checkpoint_steps[:5]))}...)"
            )
        losses, first, data = [], None, []
        for i, frame in enumerate(frames):
            stream = spool.reader(frame)
            (loss,) = protocol.LOSS.unpack(stream.read(protocol.LOSS.size))
            if not math.isfinite(loss):
                raise ProtocolError(f"checkpoint {i} reports a training loss of {loss}")
            losses.append(loss)
            header = protocol.read_bundle_header(stream, frame.size - protocol.LOSS.size)
            if first is None:
                first = header
            elif header.raw != first.raw:
                raise ProtocolError(f"checkpoint {i} holds other tensors than checkpoint 0")
            start = frame.offset + protocol.LOSS.size + header.data_offset
            data.append((start, header.data_bytes))
    except (ProtocolError, OSError) as e:
        raise _malformed(e) from None
    assert first is not None
    count = first.elements
    if count == 0:
        raise Refused(common.EVAL_STATUS_INVALID, "the model has no parameters or buffers")
    if count > job.limits.max_params:
        raise Refused(
            common.EVAL_STATUS_REJECTED,
            f"{count:,} parameters and buffers, over the cap of {job.limits.max_params:,}",
        )
    return Checkpoints(spool, data, protocol.anonymous_header(first), losses, count)


def read_predictions(job: Job, spool: Spool, checkpoints: int) -> dict[str, np.ndarray]:
    """The scoring run's predictions, checked against the task's spec before any tensor
    is read: `val{i}.NAME` for each checkpoint and `test.NAME` for the last."""
    deadline = time.monotonic() + SCORING_BUDGET_SECONDS
    frames = spool.frames[:-1]
    if any(f.kind != protocol.PREDICTIONS for f in frames) or len(frames) != checkpoints:
        raise ProtocolError(f"{len(frames)} prediction frames for {checkpoints} checkpoints")
    val_spec, test_spec = job.task.prediction_spec("val"), job.task.prediction_spec("test")
    out: dict[str, np.ndarray] = {}
    for i, frame in enumerate(frames):
        if time.monotonic() > deadline:
            raise ProtocolError(f"reading the predictions took over {SCORING_BUDGET_SECONDS} s")
        expected = {**val_spec, **(test_spec if i == checkpoints - 1 else {})}
        stream = spool.reader(frame)
        header = protocol.read_bundle_header(stream, frame.size)
        if header.shapes() != expected:
            raise ProtocolError(
                f"prediction frame {i} holds {sorted(header.shapes())[:4]}, expected "
                f"{sorted(expected)[:4]} of the splits' shapes"
            )
        for t in header.tensors:
            data = stream.read(t.nbytes)
            array = np.frombuffer(data, dtype=t.dtype).reshape(t.shape)
            split, _, name = t.name.partition(".")
            out[f"{split}{i}.{name}" if split == "val" else t.name] = array
    return out


def score(
    job: Job, spool: Spool, checkpoints: Checkpoints, train_seconds: float
) -> pb.EvaluateResponse:
    """Score the scoring run's predictions against the held-back labels."""
    started = time.monotonic()
    n = len(checkpoints.data)
    try:
        outcome = protocol.Outcome.decode(spool.payload(spool.frames[-1], protocol.MAX_END_BYTES))
        if outcome.num_params != checkpoints.num_params:
            raise ProtocolError(
                f"the model rebuilt from the code holds {outcome.num_params:,} elements, "
                f"its checkpoints {checkpoints.num_params:,}"
            )
        predictions = read_predictions(job, spool, n)
        val_acc, test_acc = job.task.score(predictions, n)
    except (ProtocolError, ValueError, KeyError, OSError) as e:
        raise _malformed(e) from None
    if time.monotonic() - started > SCORING_BUDGET_SECONDS:
        raise Refused(
            common.EVAL_STATUS_CRASHED,
            f"its result took over {SCORING_BUDGET_SECONDS} s to read and score",
        )
    numbers = [*val_acc, test_acc, train_seconds, *checkpoints.losses]
    if not all(math.isfinite(x) for x in numbers):
        raise Refused(common.EVAL_STATUS_CRASHED, "its scores are not all finite numbers")
    best = int(np.argmax(val_acc))
    metrics = common.Metrics(
        num_params=checkpoints.num_params,
        best_val_error=1.0 - val_acc[best],
        best_val_accuracy=val_acc[best],
        test_accuracy=test_acc,
        train_seconds=train_seconds,
        steps_completed=job.steps,
        val_curve=[
            common.CurvePoint(step=s, train_loss=loss, val_accuracy=a, val_error=1 - a)
            for s, loss, a in zip(job.checkpoint_steps, checkpoints.losses, val_acc, strict=True)
        ],
    )
    return pb.EvaluateResponse(status=common.EVAL_STATUS_OK, metrics=metrics)
