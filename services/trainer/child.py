"""The process inside the sandbox: one phase of one untrusted candidate's evaluation.

Started ahead of time (torch already imported), it waits for one job on stdin
(services.trainer.protocol), then either trains the candidate and writes its state at
each scheduled checkpoint (the train phase), or rebuilds the candidate from its code,
loads each checkpoint strictly and writes its predictions (the score phase). Everything
here shares a process with the candidate, so nothing here is trusted: the trainer counts
parameters from the checkpoints, takes steps and the schedule from its own job, times the
run, and scores predictions against labels that never enter a sandbox.
"""

import os
import resource
import sys
import traceback
from typing import Any, BinaryIO

import numpy as np

from services.trainer import gpu_child, protocol
from services.trainer.protocol import ChildJob, Outcome, StageFailure, failure_from

_LIMITS = {
    "memory_bytes": resource.RLIMIT_AS,
    "cpu_seconds": resource.RLIMIT_CPU,
    "max_processes": resource.RLIMIT_NPROC,
    "file_bytes": resource.RLIMIT_FSIZE,
    "open_files": resource.RLIMIT_NOFILE,
}


def apply_limits(limits: protocol.Rlimits) -> None:
    """Lower soft and hard limits before any candidate code runs; it cannot raise them back."""
    # GPU sandboxes: RLIMIT_DATA instead of RLIMIT_AS (services/trainer/gpu_child.py).
    for key, which in {**_LIMITS, "memory_bytes": gpu_child.memory_rlimit()}.items():
        value = int(getattr(limits, key) or 0)
        if value > 0:
            _, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, value))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _device() -> Any:
    """The sandbox's torch device (gpu_child): the CPU, or its one GPU. A sandbox given a
    GPU that cannot reach CUDA fails the evaluation saying so (never the CPU in silence)."""
    try:
        return gpu_child.torch_device()
    except BaseException as e:
        raise failure_from(e, "build") from None


def load_factory(job: ChildJob) -> Any:
    """Stages parse and load: run the program's module-level code, find its model."""
    compiled = protocol.compile_candidate(job.code)
    namespace: dict[str, Any] = {"__name__": "candidate"}
    try:
        exec(compiled, namespace)
    except BaseException as e:
        raise failure_from(e, "load") from None
    factory = namespace.get("build_model") or namespace.get("Model")
    if not callable(factory):
        raise StageFailure(
            "INVALID",
            "load",
            "the program defines neither class Model(nn.Module) nor build_model()",
        )
    return factory


def state_tensors(model: Any) -> dict[str, Any]:
    """Everything the model holds that training can change: parameters, buffers (persistent
    or not) and tensors kept as plain attributes. This is what a checkpoint carries and what
    the parameter count counts."""
    import torch

    state: dict[str, Any] = dict(model.named_parameters())
    state.update(model.named_buffers())
    for path, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
                state.setdefault(f"{path}.{attr}" if path else attr, value)
    return state


def state_arrays(state: dict[str, Any]) -> dict[str, np.ndarray]:
    """The state as the protocol carries it: floating tensors as float32, others as int64."""
    out = {}
    for name, tensor in state.items():
        t = tensor.detach()
        if t.is_complex():
            raise StageFailure("INVALID", "checkpoint", f"tensor {name!r} is complex")
        t = t.float() if t.is_floating_point() else t.long()
        out[name] = t.cpu().contiguous().numpy()
    return out


def build(job: ChildJob, factory: Any, probe_x: Any, device: Any) -> Any:
    """Stages count_params, build and shape_check: a model on `device` whose output has the
    right shape, lazy modules materialised by the probe forward pass."""
    import torch
    import torch.nn as nn
    from torch.nn.parameter import is_lazy

    # Count on the meta device first, so that a giant model is refused before any weight
    # is allocated (lazy parameters have no size yet and are counted after the probe).
    try:
        with torch.device("meta"):
            meta_model = factory()
        meta_count = sum(p.numel() for p in meta_model.parameters() if not is_lazy(p))
        del meta_model
    except Exception:
        meta_count = 0
    if job.max_params and meta_count > job.max_params:
        raise StageFailure(
            "REJECTED",
            "count_params",
            f"{meta_count:,} parameters, over the cap of {job.max_params:,}",
        )
    torch.manual_seed(job.seed)
    try:
        model = factory()
    except BaseException as e:
        raise failure_from(e, "build") from None
    if not isinstance(model, nn.Module):
        raise StageFailure(
            "INVALID",
            "build",
            f"build_model() returned {type(model).__name__}, not a torch.nn.Module",
        )

    if not any(True for _ in model.parameters()):
        raise StageFailure("INVALID", "count_params", "the model has no trainable parameters")
    try:
        model = model.to(device)
    except BaseException as e:
        raise failure_from(e, "build") from None

    # Stage: one dummy forward pass checking shapes (and materialising lazy modules).
    try:
        model.eval()
        with torch.no_grad():
            probe = model(probe_x[:2].to(device))
    except BaseException as e:
        failure = failure_from(e, "shape_check")
        if failure.status == "CRASHED":
            failure.status = "INVALID"
            failure.message = (
                f"forward pass on a batch of shape {tuple(probe_x[:2].shape)} "
                f"failed: {type(e).__name__}: {e}"[:500]
            )
        raise failure from None
    if not isinstance(probe, torch.Tensor) or tuple(probe.shape) != (2, job.num_classes):
        got = tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise StageFailure(
            "INVALID",
            "shape_check",
            f"output for an input of shape {tuple(probe_x[:2].shape)} is {got}, "
            f"expected (2, {job.num_classes})",
        )
    count = sum(t.numel() for t in state_tensors(model).values())
    if job.max_params and count > job.max_params:
        raise StageFailure(
            "REJECTED", "count_params", f"{count:,} parameters, over the cap of {job.max_params:,}"
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise StageFailure("INVALID", "count_params", "the model has no trainable parameters")
    return model


def train(job: ChildJob, data: dict[str, np.ndarray], out: BinaryIO) -> int:
    """The train phase: train on the training split, write the state at each checkpoint."""
    import torch
    import torch.nn.functional as F

    factory = load_factory(job)
    device = _device()
    train_x = torch.from_numpy(data["train_x"]).to(device)
    train_y = torch.from_numpy(data["train_y"]).to(device)
    model = build(job, factory, train_x, device)

    optimizer = torch.optim.AdamW(model.parameters(), lr=job.lr)
    generator = torch.Generator().manual_seed(job.seed)
    schedule = set(job.checkpoint_steps)
    model.train()
    try:
        for step in range(1, job.steps + 1):
            # Indices drawn on the CPU (the same batches on any device), then moved.
            idx = torch.randint(0, train_x.shape[0], (job.batch_size,), generator=generator)
            idx = idx.to(device)
            loss = F.cross_entropy(model(train_x[idx]), train_y[idx])
            if not torch.isfinite(loss):
                raise StageFailure("DIVERGED", "train", f"loss became {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step in schedule:
                value = float(loss.item())
                parts = protocol.checkpoint_parts(value, state_arrays(state_tensors(model)))
                protocol.write_frame(out, protocol.CHECKPOINT, *parts)
                protocol.write_frame(out, protocol.PROGRESS, protocol.progress_payload(step, value))
    except StageFailure:
        raise
    except BaseException as e:
        raise failure_from(e, "train") from None
    return 0


def score(job: ChildJob, data: dict[str, np.ndarray], checkpoints: BinaryIO, out: BinaryIO) -> int:
    """The score phase: rebuild the model from the code, load each checkpoint strictly and
    write its predictions on the validation inputs (and the test inputs for the last)."""
    import torch

    factory = load_factory(job)
    device = _device()
    val_x = torch.from_numpy(data["val_x"]).to(device)
    test_x = torch.from_numpy(data["test_x"]).to(device)
    model = build(job, factory, val_x, device)
    state = list(state_tensors(model).values())
    expected = [tuple(t.shape) for t in state]

    def predict(x: Any) -> np.ndarray:
        with torch.no_grad():
            logits = torch.cat([model(chunk) for chunk in torch.split(x, 512)])
        return logits.argmax(dim=1).to(torch.int16).cpu().numpy()

    model.eval()
    last = len(job.checkpoint_steps) - 1
    for i in range(last + 1):
        kind, payload = protocol.read_frame(checkpoints)
        if kind != protocol.CHECKPOINT:
            raise StageFailure("CRASHED", "score", f"checkpoint {i} is missing")
        # The trainer sends tensors by position, in the order the training run wrote them
        # (state_tensors' order, which the same code gives again here).
        tensors = list(protocol.read_checkpoint(payload)[1].values())
        got = [tuple(a.shape) for a in tensors]
        if got != expected:
            raise StageFailure(
                "CRASHED",
                "score",
                f"checkpoint {i} does not fit the model rebuilt from the code: "
                f"{len(got)} tensors of shapes {got[:4]}..., expected {len(expected)} of "
                f"shapes {expected[:4]}...",
            )
        try:
            with torch.no_grad():
                for tensor, value in zip(state, tensors, strict=True):
                    tensor.copy_(torch.from_numpy(value.copy()))
            predictions = {"val.labels": predict(val_x)}
            if i == last:
                predictions["test.labels"] = predict(test_x)
        except BaseException as e:
            raise failure_from(e, "score") from None
        protocol.write_frame(out, protocol.PREDICTIONS, *protocol.bundle_parts(predictions))
    return sum(int(np.prod(s)) for s in expected)


def main() -> None:
    # Keep a private handle on the result channel; the candidate's prints go to the log.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import torch  # noqa: F401 - imported before the job arrives, so a warm sandbox starts fast

    stdin = sys.stdin.buffer
    job, data = protocol.read_job(stdin)
    apply_limits(job.rlimits)
    try:
        if job.runner == "clrs":
            from services.trainer import clrs_child as runner
        else:
            runner = sys.modules[__name__]  # type: ignore[assignment]
        if job.phase == protocol.TRAIN:
            count = runner.train(job, data, out)
        else:
            count = runner.score(job, data, stdin, out)
        outcome = Outcome("OK", "done", "", count)
    except StageFailure as f:
        outcome = Outcome(f.status, f.stage, f.message)
    except BaseException as e:
        traceback.print_exc()
        failure = failure_from(e, "run")
        outcome = Outcome(failure.status, "run", failure.message)
    protocol.write_frame(out, protocol.END, outcome.to_json())
    out.close()
    # Skip interpreter teardown: candidate objects may hang or crash in finalisers.
    os._exit(0)


if __name__ == "__main__":
    main()
