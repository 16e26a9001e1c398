"""The trusted side of an evaluation: build the job, run it in a sandbox, score what returns.

Validation and test labels stay here. The sandbox returns predictions and weights;
every number in the result is computed below from those and the held-back labels.
"""

import io
import json
import math
import time
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np
from evo.v1 import common_pb2 as common
from evo.v1 import trainer_pb2 as pb

from services.trainer import tasks
from services.trainer.sandbox.base import Limits, ProgressFn, RawRun, Sandbox, encode_job
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
LANGUAGES = {pb.PROGRAM_LANGUAGE_PYTORCH: "pytorch", pb.PROGRAM_LANGUAGE_JAX: "jax"}


class BadRequest(ValueError):
    """The request itself is wrong (unknown task, empty code): the caller's error, not the
    candidate's."""


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
            eval_every=req.budget.eval_every or task.recipe.eval_every(steps),
            limits=asked.capped_by(cap),
        )

    def encode(self, threads: int) -> bytes:
        spec = {
            **self.task.job_fields(),
            "code": self.code,
            "steps": self.steps,
            "seed": self.seed,
            "eval_every": self.eval_every,
            "max_params": self.limits.max_params,
            "threads": threads,
            "memory_bytes": self.limits.memory_bytes,
            # A backstop under the wall-clock kill: whatever happens to the trainer, a
            # sandboxed process cannot burn more CPU than its run was allowed.
            "cpu_seconds": int(self.limits.wall_seconds * max(threads, 1)) + CPU_MARGIN_SECONDS,
            "max_processes": self.limits.max_processes,
            "file_bytes": self.limits.file_bytes,
            "open_files": self.limits.open_files,
        }
        buf = io.BytesIO()
        # Inputs and training labels go in; validation and test labels never do.
        np.savez(
            buf,
            job=np.frombuffer(json.dumps(spec).encode(), dtype=np.uint8),
            **self.task.sandbox_arrays(),
        )
        return encode_job(buf.getvalue())


def evaluate(
    job: Job, sandbox: Sandbox, threads: int, on_progress: ProgressFn | None = None
) -> pb.EvaluateResponse:
    """Run `job` in `sandbox` (which is destroyed afterwards) and score it."""
    started = time.monotonic()
    try:
        raw = sandbox.run(job.encode(threads), job.limits, on_progress)
    finally:
        sandbox.destroy()
    response = judge(job, raw)
    response.log_tail = raw.log_tail
    response.wall_seconds = time.monotonic() - started
    response.sandbox.CopyFrom(
        pb.SandboxInfo(
            backend=sandbox.backend,
            isolated=sandbox.isolated,
            device=sandbox.device,
            limits=pb.Limits(
                wall_seconds=job.limits.wall_seconds,
                memory_bytes=job.limits.memory_bytes,
                max_processes=job.limits.max_processes,
                max_output_bytes=job.limits.max_output_bytes,
                max_params=job.limits.max_params,
            ),
        )
    )
    if not sandbox.isolated:
        response.message = (
            "UNISOLATED process backend (development only). " + response.message
        ).strip()
    return response


def _fail(status: int, message: str) -> pb.EvaluateResponse:
    return pb.EvaluateResponse(status=status, message=message)


def judge(job: Job, raw: RawRun) -> pb.EvaluateResponse:
    """Turn what came out of the sandbox into a status and trusted metrics."""
    lim = job.limits
    if raw.timed_out:
        return _fail(
            common.EVAL_STATUS_TIMEOUT, f"ran past the {lim.wall_seconds:g} s wall-clock limit"
        )
    if raw.output_overflow:
        return _fail(
            common.EVAL_STATUS_CRASHED,
            f"printed more than the {lim.max_output_bytes:,}-byte output limit",
        )
    if raw.result_overflow:
        return _fail(common.EVAL_STATUS_CRASHED, "returned a result over the size limit")
    if raw.result is None:
        if raw.oom_killed:
            return _fail(
                common.EVAL_STATUS_OOM,
                f"killed for going over the {lim.memory_bytes:,}-byte memory limit",
            )
        if raw.signal_name == "SIGXCPU":
            return _fail(common.EVAL_STATUS_TIMEOUT, "ran past its CPU-time limit")
        if raw.signal_name == "SIGKILL":
            return _fail(
                common.EVAL_STATUS_CRASHED,
                "killed (SIGKILL) before returning a result: a memory limit or the "
                "candidate itself",
            )
        if raw.signal_name:
            return _fail(
                common.EVAL_STATUS_CRASHED, f"killed by {raw.signal_name} before returning a result"
            )
        return _fail(
            common.EVAL_STATUS_CRASHED,
            f"exited with code {raw.exit_code} before returning a result",
        )
    try:
        return score(job, raw.result)
    except (ValueError, KeyError, TypeError, OSError, AssertionError, zipfile.BadZipFile) as e:
        return _fail(common.EVAL_STATUS_CRASHED, f"returned a malformed result ({e})")


def score(job: Job, result: bytes) -> pb.EvaluateResponse:
    # The result is an uncompressed .npz; anything else (a zip bomb) is refused unread.
    with zipfile.ZipFile(io.BytesIO(result)) as archive:
        members = archive.infolist()
    if any(m.compress_type != zipfile.ZIP_STORED for m in members) or sum(
        m.file_size for m in members
    ) > len(result):
        raise ValueError("compressed or inconsistent archive")
    with np.load(io.BytesIO(result), allow_pickle=False) as npz:
        arrays: dict[str, Any] = {k: npz[k] for k in npz.files}
    meta = json.loads(bytes(arrays.pop("meta")).decode())
    status = STATUSES.get(str(meta.get("status")))
    if status is None:
        raise ValueError(f"unknown status {meta.get('status')!r}")
    message = str(meta.get("message", ""))[:2000]
    if status != common.EVAL_STATUS_OK:
        return _fail(status, message)

    val_steps = arrays["val_steps"].astype(np.int64)
    losses = arrays["train_loss"].astype(np.float64)
    n = len(val_steps)
    if n == 0 or len(losses) != n:
        raise ValueError("validation checkpoints and losses do not match")
    val_acc, test_acc = job.task.score(arrays, n)
    weights = [v for k, v in arrays.items() if k.startswith("w")]
    if not weights or any(not np.issubdtype(w.dtype, np.number) for w in weights):
        raise ValueError("no numeric weights returned")
    num_params = int(sum(w.size for w in weights))
    if num_params > job.limits.max_params:
        return _fail(
            common.EVAL_STATUS_REJECTED,
            f"{num_params:,} parameters, over the cap of {job.limits.max_params:,}",
        )

    best = int(np.argmax(val_acc))
    metrics = common.Metrics(
        num_params=num_params,
        best_val_error=1.0 - val_acc[best],
        best_val_accuracy=val_acc[best],
        test_accuracy=test_acc,
        train_seconds=float(meta.get("train_seconds") or 0.0),
        steps_completed=int(val_steps[-1]),
        val_curve=[
            common.CurvePoint(step=int(s), train_loss=float(loss), val_accuracy=a, val_error=1 - a)
            for s, loss, a in zip(val_steps, losses, val_acc, strict=True)
        ],
    )
    return pb.EvaluateResponse(status=common.EVAL_STATUS_OK, metrics=metrics)
