"""The process inside the sandbox: trains one untrusted candidate and returns predictions.

Started ahead of time (torch already imported), it waits for one job on stdin, runs
the cascade parse -> count parameters on the meta device -> shape check -> train ->
predict, and writes frames to a private copy of stdout. Everything here shares a
process with the candidate, so nothing here is trusted: it returns predictions and
weights, never scores, and the trainer scores them against labels that never enter
the sandbox.
"""

import io
import json
import os
import resource
import struct
import sys
import time
import traceback
from types import CodeType
from typing import Any, BinaryIO

import numpy as np

from services.trainer import gpu_child

# Frame types on the result channel.
PROGRESS = b"P"
RESULT = b"R"

_LIMITS = {
    "memory_bytes": resource.RLIMIT_AS,
    "cpu_seconds": resource.RLIMIT_CPU,
    "max_processes": resource.RLIMIT_NPROC,
    "file_bytes": resource.RLIMIT_FSIZE,
    "open_files": resource.RLIMIT_NOFILE,
}


class StageFailure(Exception):
    def __init__(self, status: str, stage: str, message: str) -> None:
        super().__init__(message)
        self.status, self.stage, self.message = status, stage, message


def write_frame(out: BinaryIO, kind: bytes, payload: bytes) -> None:
    out.write(kind + struct.pack("<Q", len(payload)) + payload)
    out.flush()


def read_job(stream: BinaryIO) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    (size,) = struct.unpack("<Q", stream.read(8))
    arrays = dict(np.load(io.BytesIO(stream.read(size)), allow_pickle=False))
    job = json.loads(bytes(arrays.pop("job")).decode())
    return job, arrays


def apply_limits(job: dict[str, Any]) -> None:
    """Lower soft and hard limits before any candidate code runs; it cannot raise them back."""
    # GPU sandboxes: RLIMIT_DATA instead of RLIMIT_AS (services/trainer/gpu_child.py).
    limits = {**_LIMITS, "memory_bytes": gpu_child.memory_rlimit()}
    for key, which in limits.items():
        value = int(job.get(key) or 0)
        if value > 0:
            _, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, value))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _failure_from(exc: BaseException, stage: str) -> StageFailure:
    text = f"{type(exc).__name__}: {exc}".strip()
    if gpu_child.is_gpu_oom(exc):
        return StageFailure("OOM", stage, f"ran out of GPU memory during {stage}: {text[:300]}")
    if isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text:
        return StageFailure("OOM", stage, f"ran out of memory during {stage}: {text[:300]}")
    return StageFailure("CRASHED", stage, f"{stage} failed: {text[:500]}")


def parse(code: str) -> CodeType:
    """Stage: parse."""
    try:
        return compile(code, "candidate.py", "exec")
    except SyntaxError as e:
        where = f"line {e.lineno}" + (f": {e.text.strip()}" if e.text else "")
        raise StageFailure("INVALID", "parse", f"syntax error at {where} ({e.msg})") from None


def done_meta(steps: int, train_seconds: float, meta_params: int | None) -> dict[str, Any]:
    return {
        "status": "OK",
        "stage": "done",
        "message": "",
        "steps_completed": steps,
        "train_seconds": train_seconds,
        "meta_params": meta_params,
    }


def run(job: dict[str, Any], data: dict[str, np.ndarray], out: BinaryIO) -> dict[str, Any]:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(int(job.get("threads") or 1))
    torch.manual_seed(int(job["seed"]))

    compiled = parse(job["code"])

    # Stage: load (module-level code runs here).
    namespace: dict[str, Any] = {"__name__": "candidate"}
    try:
        exec(compiled, namespace)
    except BaseException as e:
        raise _failure_from(e, "load") from None
    factory = namespace.get("build_model") or namespace.get("Model")
    if not callable(factory):
        raise StageFailure(
            "INVALID",
            "load",
            "the program defines neither class Model(nn.Module) nor build_model()",
        )

    # Stage: count parameters on the meta device, before any weight is allocated.
    max_params = int(job.get("max_params") or 0)
    try:
        with torch.device("meta"):
            meta_model = factory()
        meta_count = sum(p.numel() for p in meta_model.parameters())
        del meta_model
    except Exception:
        meta_count = None
    if max_params and meta_count is not None and meta_count > max_params:
        raise StageFailure(
            "REJECTED",
            "count_params",
            f"{meta_count:,} parameters, over the cap of {max_params:,}",
        )
    try:
        model = factory()
    except BaseException as e:
        raise _failure_from(e, "build") from None
    if not isinstance(model, nn.Module):
        raise StageFailure(
            "INVALID",
            "build",
            f"build_model() returned {type(model).__name__}, not a torch.nn.Module",
        )
    num_params = sum(p.numel() for p in model.parameters())
    if max_params and num_params > max_params:
        raise StageFailure(
            "REJECTED", "count_params", f"{num_params:,} parameters, over the cap of {max_params:,}"
        )
    if num_params == 0:
        raise StageFailure("INVALID", "count_params", "the model has no trainable parameters")

    # The sandbox's device (gpu_child): the model and the data move there once.
    try:
        device = gpu_child.torch_device()
        model = model.to(device)
    except BaseException as e:
        raise _failure_from(e, "build") from None
    train_x = torch.from_numpy(data["train_x"]).to(device)
    train_y = torch.from_numpy(data["train_y"]).to(device)
    val_x = torch.from_numpy(data["val_x"]).to(device)
    test_x = torch.from_numpy(data["test_x"]).to(device)
    num_classes = int(job["num_classes"])

    # Stage: one dummy forward pass checking shapes.
    try:
        model.eval()
        with torch.no_grad():
            probe = model(train_x[:2])
    except BaseException as e:
        failure = _failure_from(e, "shape_check")
        if failure.status == "CRASHED":
            failure.status = "INVALID"
            failure.message = (
                f"forward pass on a batch of shape {tuple(train_x[:2].shape)} "
                f"failed: {type(e).__name__}: {e}"[:500]
            )
        raise failure from None
    if not isinstance(probe, torch.Tensor) or tuple(probe.shape) != (2, num_classes):
        got = tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise StageFailure(
            "INVALID",
            "shape_check",
            f"output for an input of shape {tuple(train_x[:2].shape)} is {got}, "
            f"expected (2, {num_classes})",
        )

    # Stage: train on the training split only.
    steps, batch = int(job["steps"]), int(job["batch_size"])
    eval_every = max(1, int(job["eval_every"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(job["lr"]))
    generator = torch.Generator().manual_seed(int(job["seed"]))

    def predict(x: Any) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(chunk) for chunk in torch.split(x, 512)])
        model.train()
        return logits.argmax(dim=1).to(torch.int16).cpu().numpy()

    val_steps: list[int] = []
    val_preds: list[np.ndarray] = []
    losses: list[float] = []
    started = time.perf_counter()
    model.train()
    step = 0
    try:
        for step in range(1, steps + 1):
            idx = torch.randint(0, train_x.shape[0], (batch,), generator=generator).to(device)
            loss = F.cross_entropy(model(train_x[idx]), train_y[idx])
            if not torch.isfinite(loss):
                raise StageFailure("DIVERGED", "train", f"loss became {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % eval_every == 0 or step == steps:
                losses.append(float(loss.item()))
                val_steps.append(step)
                val_preds.append(predict(val_x))
                progress = {
                    "stage": "train",
                    "step": step,
                    "total_steps": steps,
                    "train_loss": losses[-1],
                }
                write_frame(out, PROGRESS, json.dumps(progress).encode())
        test_preds = predict(test_x)
    except StageFailure:
        raise
    except BaseException as e:
        raise _failure_from(e, "train") from None
    train_seconds = time.perf_counter() - started

    weights = {f"w{i}": p.detach().float().cpu().numpy() for i, p in enumerate(model.parameters())}
    return {
        "meta": done_meta(steps, train_seconds, meta_count),
        "val_steps": np.asarray(val_steps, dtype=np.int64),
        "val_preds": np.stack(val_preds),
        "train_loss": np.asarray(losses, dtype=np.float64),
        "test_preds": test_preds,
        **weights,
    }


def encode_result(result: dict[str, Any]) -> bytes:
    arrays = {k: v for k, v in result.items() if k != "meta"}
    arrays["meta"] = np.frombuffer(json.dumps(result["meta"]).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def main() -> None:
    # Run as `-m services.trainer.child`, this module is __main__: runners that import it
    # by name (clrs_child) must get this module, so their StageFailure is the one caught.
    sys.modules.setdefault("services.trainer.child", sys.modules[__name__])
    # Keep a private handle on the result channel; the candidate's prints go to the log.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import torch  # noqa: F401 - imported before the job arrives, so a warm sandbox starts fast

    job, data = read_job(sys.stdin.buffer)
    apply_limits(job)
    try:
        if job.get("runner") == "clrs":
            from services.trainer import clrs_child

            result = clrs_child.run(job, data, out)
        else:
            result = run(job, data, out)
    except StageFailure as f:
        result = {"meta": {"status": f.status, "stage": f.stage, "message": f.message}}
    except BaseException as e:
        traceback.print_exc()
        failure = _failure_from(e, "run")
        result = {"meta": {"status": failure.status, "stage": "run", "message": failure.message}}
    write_frame(out, RESULT, encode_result(result))
    out.close()
    # Skip interpreter teardown: candidate objects may hang or crash in finalisers.
    os._exit(0)


if __name__ == "__main__":
    main()
