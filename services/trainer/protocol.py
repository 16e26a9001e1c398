"""The one contract between the trainer and the sandboxed child: jobs, frames, tensors, outcomes.

Both sides import this module: the child (an untrusted process that shares its interpreter
with the candidate) to read its job and write its frames, and the trusted trainer to build
jobs and to decode, with hard bounds, whatever comes back. Nothing here imports torch or
JAX, so the trusted side stays light and the child can import it before the candidate runs.

An evaluation is two runs in two fresh sandboxes:

- **train**: the job carries the code, the training split and the checkpoint schedule. The
  child trains and writes one CHECKPOINT frame per scheduled step (the training loss and
  the model's state: parameters, buffers and any tensor it holds), then one END frame.
- **score**: the job carries the code, the validation and test *inputs* and, after the
  job, the checkpoints the trainer kept. The child rebuilds the model from the code, loads
  each checkpoint strictly and writes one PREDICTIONS frame per checkpoint (test
  predictions with the last), then END.

The trainer counts parameters from the checkpoints, takes steps and the schedule from the
job, times the training run itself, and scores predictions against labels that never enter
a sandbox.

A frame is a 1-byte kind, an 8-byte little-endian payload size and the payload. Tensors
travel as a *bundle*: an 8-byte header size, a JSON header `[[name, dtype, shape], ...]`
and the tensors' bytes in that order; unlike an archive, its cost to read is bounded by
the header, which is bounded here.
"""

import io
import json
import math
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

import numpy as np

from services.trainer import gpu_child

FRAME = struct.Struct("<cQ")
SIZE = struct.Struct("<Q")
LOSS = struct.Struct("<d")

PROGRESS = b"P"  # informational: {"step": int, "train_loss": float}; never scored
CHECKPOINT = b"C"  # train phase: LOSS, then a bundle of the model's state
PREDICTIONS = b"V"  # score phase: a bundle of one checkpoint's predictions
END = b"E"  # the last frame: an Outcome as JSON
KINDS = (PROGRESS, CHECKPOINT, PREDICTIONS, END)

TRAIN, SCORE = "train", "score"
STATUSES = ("OK", "INVALID", "REJECTED", "TIMEOUT", "OOM", "CRASHED", "DIVERGED")

# Bounds on what the trusted side reads. A frame over one of them is a malformed result.
MAX_PROGRESS_BYTES = 1024
PROGRESS_PER_SECOND = 20  # delivered to the caller; the rest are read and dropped
MAX_END_BYTES = 8 * 1024
MAX_MESSAGE_CHARS = 2000
MAX_CHECKPOINTS = 100
MAX_TENSORS = 4096
MAX_BUNDLE_HEADER_BYTES = 1024 * 1024
MAX_NAME_CHARS = 256
MAX_DIMS = 8
# Tensors cross the boundary in these types only (the child converts to them).
DTYPES = {"float32": np.dtype("<f4"), "int64": np.dtype("<i8"), "int16": np.dtype("<i2")}


class ProtocolError(ValueError):
    """What came back breaks this contract: the candidate's fault, a CRASHED evaluation."""


class StageFailure(Exception):
    """A stage of the child's cascade failed; becomes the END frame's Outcome."""

    def __init__(self, status: str, stage: str, message: str) -> None:
        super().__init__(message)
        self.status, self.stage, self.message = status, stage, message


def failure_from(exc: BaseException, stage: str) -> StageFailure:
    text = f"{type(exc).__name__}: {exc}".strip()
    if gpu_child.is_gpu_oom(exc):
        return StageFailure("OOM", stage, f"ran out of GPU memory during {stage}: {text[:300]}")
    if isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text:
        return StageFailure("OOM", stage, f"ran out of memory during {stage}: {text[:300]}")
    return StageFailure("CRASHED", stage, f"{stage} failed: {text[:500]}")


def compile_candidate(code: str) -> Any:
    """Stage: parse. INVALID with the line for a syntax error."""
    try:
        return compile(code, "candidate.py", "exec")
    except SyntaxError as e:
        where = f"line {e.lineno}" + (f": {e.text.strip()}" if e.text else "")
        raise StageFailure("INVALID", "parse", f"syntax error at {where} ({e.msg})") from None


# ---- the job ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rlimits:
    """Per-process limits the child sets on itself before any candidate code runs (0: none)."""

    memory_bytes: int = 0
    cpu_seconds: int = 0
    max_processes: int = 0
    file_bytes: int = 0
    open_files: int = 0


@dataclass(frozen=True)
class ClrsRecipe:
    """The CLRS runner's model and training settings (the published Triplet-GMPNN ones)."""

    algorithm: str
    processor: str
    hidden_dim: int
    nb_triplet_fts: int
    use_ln: bool
    encode_hints: bool
    decode_hints: bool
    encoder_init: str
    hint_teacher_forcing: float
    hint_repred_mode: str
    grad_clip_max_norm: float
    # Where the candidate goes and what trains it (clrs_processor.py): the paper's
    # signature with out_size, or dm-clrs's; AdamW (the paper's) or Adam (dm-clrs's).
    triplet: str = "paper"
    optimizer: str = "adamw"
    # The algorithm's spec after preprocessing: name -> (stage, location, type).
    spec: dict[str, tuple[str, str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ChildJob:
    phase: str  # TRAIN or SCORE
    runner: str  # "torch" (services.trainer.child) or "clrs" (services.trainer.clrs_child)
    code: str
    seed: int
    steps: int
    checkpoint_steps: tuple[int, ...]
    batch_size: int
    lr: float
    num_classes: int
    threads: int
    max_params: int
    rlimits: Rlimits
    clrs: ClrsRecipe | None = None

    def __post_init__(self) -> None:
        if self.phase not in (TRAIN, SCORE):
            raise ValueError(f"phase must be {TRAIN!r} or {SCORE!r}, not {self.phase!r}")
        s = self.checkpoint_steps
        if not 0 < len(s) <= MAX_CHECKPOINTS or list(s) != sorted(set(s)) or s[-1] != self.steps:
            raise ValueError(
                f"the checkpoint schedule must be 1 to {MAX_CHECKPOINTS} increasing steps "
                f"ending at the last step ({self.steps})"
            )

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "ChildJob":
        fields_ = json.loads(data)
        fields_["checkpoint_steps"] = tuple(fields_["checkpoint_steps"])
        fields_["rlimits"] = Rlimits(**fields_["rlimits"])
        if fields_.get("clrs") is not None:
            recipe = fields_["clrs"]
            recipe["spec"] = {k: tuple(v) for k, v in recipe["spec"].items()}
            fields_["clrs"] = ClrsRecipe(**recipe)
        return cls(**fields_)


def encode_job(job: ChildJob, arrays: dict[str, np.ndarray]) -> bytes:
    """The job and its arrays as the child reads them from stdin (score jobs are followed
    by their checkpoint frames)."""
    buf = io.BytesIO()
    np.savez(buf, job=np.frombuffer(job.to_json(), dtype=np.uint8), **arrays)
    return SIZE.pack(buf.tell()) + buf.getvalue()


def read_job(stream: BinaryIO) -> tuple[ChildJob, dict[str, np.ndarray]]:
    """The child's side of `encode_job` (the trainer wrote it: trusted input)."""
    (size,) = SIZE.unpack(_read_exact(stream, SIZE.size))
    arrays = dict(np.load(io.BytesIO(_read_exact(stream, size)), allow_pickle=False))
    job = ChildJob.from_json(bytes(arrays.pop("job")))
    return job, arrays


# ---- frames and bundles -----------------------------------------------------------------


def write_frame(out: BinaryIO, kind: bytes, *parts: bytes | memoryview) -> None:
    out.write(FRAME.pack(kind, sum(len(p) for p in parts)))
    for part in parts:
        out.write(part)
    out.flush()


def read_frame(stream: BinaryIO) -> tuple[bytes, bytes]:
    """One frame from a trusted stream (the child reads its checkpoints with it)."""
    kind, size = FRAME.unpack(_read_exact(stream, FRAME.size))
    return kind, _read_exact(stream, size)


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ProtocolError(f"stream ended {size - len(data)} bytes early")
    return data


def bundle_parts(tensors: dict[str, np.ndarray]) -> list[bytes | memoryview]:
    """A bundle as pieces to write one after another (no copy of the tensors' bytes)."""
    header, data = [], []
    for name, value in tensors.items():
        array = np.ascontiguousarray(value)
        dtype = next((k for k, d in DTYPES.items() if d == array.dtype), None)
        if dtype is None:
            raise TypeError(f"tensor {name!r} is {array.dtype}; bundles carry {sorted(DTYPES)}")
        header.append([name, dtype, list(array.shape)])
        data.append(memoryview(array).cast("B"))
    head = json.dumps(header).encode()
    return [SIZE.pack(len(head)), head, *data]


def encode_bundle(tensors: dict[str, np.ndarray]) -> bytes:
    return b"".join(bytes(p) for p in bundle_parts(tensors))


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


@dataclass(frozen=True)
class BundleHeader:
    tensors: tuple[TensorInfo, ...]
    raw: bytes  # the header's JSON as sent: equal bytes, equal names, types and shapes
    data_offset: int  # from the start of the bundle

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def elements(self) -> int:
        return sum(t.size for t in self.tensors)

    def shapes(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {t.name: (t.dtype.name, t.shape) for t in self.tensors}


def read_bundle_header(stream: BinaryIO, available: int) -> BundleHeader:
    """The header of a bundle of `available` bytes, from untrusted bytes, with every bound
    checked before anything else is read."""
    if available < SIZE.size:
        raise ProtocolError("a tensor bundle is shorter than its header size")
    (size,) = SIZE.unpack(stream.read(SIZE.size))
    if size > min(MAX_BUNDLE_HEADER_BYTES, available - SIZE.size):
        raise ProtocolError(f"a tensor bundle's header claims {size:,} bytes")
    raw = stream.read(size)
    try:
        entries = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("a tensor bundle's header is not JSON") from None
    if not isinstance(entries, list) or len(entries) > MAX_TENSORS:
        raise ProtocolError(f"a tensor bundle's header must list at most {MAX_TENSORS} tensors")
    tensors, names = [], set()
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 3):
            raise ProtocolError("a tensor bundle's header entry is not [name, dtype, shape]")
        name, dtype, shape = entry
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS or name in names:
            raise ProtocolError("a tensor name is missing, repeated or too long")
        if dtype not in DTYPES:
            raise ProtocolError(f"tensor {name[:80]!r} has type {str(dtype)[:20]!r}")
        # No empty dimension: an empty tensor costs nothing and its shape could carry data.
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_DIMS
            or not all(type(d) is int and 0 < d < 2**40 for d in shape)
        ):
            raise ProtocolError(f"tensor {name[:80]!r} has a malformed shape")
        names.add(name)
        tensors.append(TensorInfo(name, DTYPES[dtype], tuple(shape)))
    header = BundleHeader(tuple(tensors), raw, SIZE.size + size)
    if header.data_offset + header.data_bytes != available:
        raise ProtocolError("a tensor bundle's size does not match its header")
    return header


def read_bundle(stream: BinaryIO, available: int) -> dict[str, np.ndarray]:
    """Every tensor of a bundle (for bundles whose header was bounded by the caller)."""
    header = read_bundle_header(stream, available)
    out = {}
    for t in header.tensors:
        data = stream.read(t.nbytes)
        if len(data) != t.nbytes:
            raise ProtocolError("a tensor bundle ended early")
        out[t.name] = np.frombuffer(data, dtype=t.dtype).reshape(t.shape)
    return out


def anonymous_header(header: BundleHeader) -> bytes:
    """`header` with every name replaced by its position, as the scoring run gets it: the
    names a training run chose could carry data past the parameter count; positions cannot."""
    entries = [[str(i), t.dtype.name, list(t.shape)] for i, t in enumerate(header.tensors)]
    head = json.dumps(entries).encode()
    return SIZE.pack(len(head)) + head


def checkpoint_parts(loss: float, state: dict[str, np.ndarray]) -> list[bytes | memoryview]:
    return [LOSS.pack(loss), *bundle_parts(state)]


def read_checkpoint(payload: bytes) -> tuple[float, dict[str, np.ndarray]]:
    stream = io.BytesIO(payload)
    (loss,) = LOSS.unpack(stream.read(LOSS.size))
    return loss, read_bundle(stream, len(payload) - LOSS.size)


# ---- the outcome ------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How the child's run ended (the END frame). Only the status and message are taken
    from it; every number that is scored is computed on the trusted side."""

    status: str
    stage: str
    message: str = ""
    # Score phase: the element count of the model rebuilt from the code, checked against
    # the checkpoints' (a mismatch is a CRASHED candidate).
    num_params: int = 0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, payload: bytes) -> "Outcome":
        """From untrusted bytes: an allow-list of members, each of the right type."""
        if len(payload) > MAX_END_BYTES:
            raise ProtocolError(f"the end frame is over {MAX_END_BYTES:,} bytes")
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise ProtocolError("the end frame is not JSON") from None
        if not isinstance(data, dict):
            raise ProtocolError(f"the end frame is a JSON {type(data).__name__}, not an object")
        unknown = set(data) - {"status", "stage", "message", "num_params"}
        if unknown:
            raise ProtocolError(f"the end frame has unknown members {sorted(unknown)[:5]}")
        status, stage = data.get("status"), data.get("stage")
        message, num_params = data.get("message", ""), data.get("num_params", 0)
        if status not in STATUSES:
            raise ProtocolError(f"unknown status {str(status)[:40]!r}")
        if not isinstance(stage, str) or not isinstance(message, str):
            raise ProtocolError("the end frame's stage and message must be strings")
        if type(num_params) is not int or num_params < 0:
            raise ProtocolError("the end frame's num_params must be a count")
        return cls(status, stage[:40], message[:MAX_MESSAGE_CHARS], num_params)


def progress_payload(step: int, train_loss: float) -> bytes:
    return json.dumps({"step": step, "train_loss": train_loss}).encode()


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    train_loss: float
    stage: str = TRAIN

    @classmethod
    def decode(cls, payload: bytes, total_steps: int) -> "Progress | None":
        """A progress frame, or None for anything malformed (progress is informational)."""
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(data, dict):
            return None
        step, loss = data.get("step"), data.get("train_loss")
        if type(step) is not int or not 0 <= step <= total_steps:
            return None
        if not isinstance(loss, (int, float)) or not math.isfinite(loss):
            return None
        return cls(step=step, total_steps=total_steps, train_loss=float(loss))
