"""What every sandbox backend provides: pre-started, single-use sandboxes.

A backend starts a sandbox ahead of time: the child process (`services.trainer.child`)
is running, has imported torch, and waits for its one job on stdin. `Sandbox.run`
sends the job, enforces the wall-clock limit and the output cap, and returns what
came out. The caller scores it; nothing here trusts the candidate.
"""

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from services.trainer import protocol

GIB = 1024**3
MIB = 1024**2

# How long a killed sandbox gets between SIGTERM and SIGKILL.
KILL_GRACE_SECONDS = 2.0


@dataclass(frozen=True)
class Limits:
    """Hard limits of one evaluation. A trainer's own are the maximum any request may ask for."""

    wall_seconds: float = 900.0
    memory_bytes: int = 4 * GIB
    max_processes: int = 64
    max_output_bytes: int = 8 * MIB
    max_params: int = 20_000_000
    scratch_bytes: int = 256 * MIB
    file_bytes: int = 64 * MIB
    open_files: int = 256
    # The part of the output kept for the result.
    log_tail_bytes: int = 16 * 1024
    # Checkpoint frames a run may return (the evaluator sets the job's schedule length).
    max_checkpoints: int = protocol.MAX_CHECKPOINTS

    def capped_by(self, cap: "Limits") -> "Limits":
        """These limits, lowered to `cap` wherever they ask for more (0 means the cap)."""
        fields = {}
        for name in self.__dataclass_fields__:
            mine, theirs = getattr(self, name), getattr(cap, name)
            fields[name] = theirs if not mine or mine > theirs else mine
        return Limits(**fields)


@dataclass
class RawRun:
    """What came out of a sandbox, unjudged."""

    # The returned frames, once the child wrote its end frame (see FrameReader).
    result: "Spool | None" = None
    # Why the result was refused while it was read (a frame over a bound), or "".
    violation: str = ""
    exit_code: int | None = None
    signal_name: str = ""
    timed_out: bool = False
    output_overflow: bool = False
    result_overflow: bool = False
    log_tail: str = ""
    output_bytes: int = 0
    wall_seconds: float = 0.0
    # The memory cgroup killed it (container backends; the local ones cannot tell).
    oom_killed: bool = False


# Called with each delivered progress frame's payload (bytes, untrusted).
ProgressFn = Callable[[bytes], None]


class Sandbox(ABC):
    """One pre-started sandbox; used for exactly one job, then destroyed."""

    backend: str
    isolated: bool
    device: str = "cpu"

    @abstractmethod
    def run(self, job: BinaryIO, limits: Limits, on_progress: ProgressFn | None = None) -> RawRun:
        """Send `job` (a readable stream, see protocol.encode_job) and collect the run."""

    @abstractmethod
    def destroy(self) -> None:
        """Kill everything the sandbox holds and remove its state; safe to call twice."""


class Backend(ABC):
    name: str
    isolated: bool

    def __init__(self, limits: Limits, threads: int = 1) -> None:
        self.limits = limits
        self.threads = threads

    @abstractmethod
    def start(self) -> Sandbox:
        """Start a sandbox that waits for its job."""

    def close(self) -> None:  # noqa: B027 - most backends hold nothing
        """Release what the backend holds (engine clients, images)."""


def result_cap(limits: Limits) -> int:
    """The most a run may spool to disk: its checkpoints at the parameter cap (4 bytes an
    element; int64 buffers count twice, which the margin covers) and the predictions."""
    return limits.max_checkpoints * (limits.max_params * 4 + 4 * MIB) + 64 * MIB


@dataclass(frozen=True)
class SpooledFrame:
    kind: bytes
    offset: int  # of the payload in the spool file
    size: int


class Spool:
    """The frames a run returned (everything but progress), in an unlinked temporary file:
    never held in the trainer's memory. Closed by whoever judges the run."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile(prefix="evo-spool-")  # noqa: SIM115 - closed by close()
        self.frames: list[SpooledFrame] = []
        self.bytes = 0

    def payload(self, frame: SpooledFrame, limit: int) -> bytes:
        """A frame's payload, refused unread when it is over `limit` bytes."""
        if frame.size > limit:
            raise protocol.ProtocolError(f"a frame of {frame.size:,} bytes (at most {limit:,})")
        self.file.seek(frame.offset)
        return self.file.read(frame.size)

    def reader(self, frame: SpooledFrame) -> BinaryIO:
        """The spool positioned at a frame's payload."""
        self.file.seek(frame.offset)
        return self.file  # type: ignore[return-value]

    def close(self) -> None:
        self.file.close()


class FrameReader:
    """Reads the child's frames with every bound of the protocol, keeping nothing in memory.

    Progress frames (at most `protocol.MAX_PROGRESS_BYTES`) go to `on_progress`, at most
    `protocol.PROGRESS_PER_SECOND` a second; the rest are read and dropped. Checkpoint,
    prediction and end frames go to a spool file capped at `max_result_bytes`, at most
    `MAX_CHECKPOINTS + 1` of them; reading stops at the end frame. Anything else (an
    unknown kind, an oversize frame, too many frames) is a `violation`: the stream is then
    drained unread, so the sandbox neither blocks nor gets another frame read, and
    `on_violation` (if given) stops it. `result` is the spool once an end frame was read.
    """

    def __init__(
        self,
        stream: BinaryIO,
        max_result_bytes: int,
        on_progress: ProgressFn | None,
        on_violation: Callable[[], None] | None = None,
    ) -> None:
        self.stream = stream
        self.max_result_bytes = max_result_bytes
        self.on_progress = on_progress
        self.on_violation = on_violation
        self.result: Spool | None = None
        self.violation = ""
        self.progress_frames = 0
        self._spool = Spool()
        self._window = (0.0, 0)  # (second it started, frames delivered in it)

    @property
    def overflow(self) -> bool:
        return bool(self.violation)

    def __call__(self) -> None:
        try:
            while self.result is None and not self.violation:
                header = _read_exact(self.stream, protocol.FRAME.size)
                if header is None:
                    return
                kind, size = protocol.FRAME.unpack(header)
                if kind == protocol.PROGRESS:
                    self._progress(size)
                elif kind in (protocol.CHECKPOINT, protocol.PREDICTIONS, protocol.END):
                    self._keep(kind, size)
                else:
                    self._violate(f"sent a frame of unknown kind {kind!r}")
            _drain(self.stream)
        except (OSError, ValueError):
            return
        finally:
            if self.result is None:
                self._spool.close()

    def _violate(self, why: str) -> None:
        self.violation = why
        if self.on_violation is not None:
            self.on_violation()

    def _progress(self, size: int) -> None:
        if size > protocol.MAX_PROGRESS_BYTES:
            self._violate(
                f"sent a progress frame of {size:,} bytes (at most {protocol.MAX_PROGRESS_BYTES:,})"
            )
            return
        payload = _read_exact(self.stream, size)
        if payload is None:
            return
        self.progress_frames += 1
        now = time.monotonic()
        started, delivered = self._window
        if now - started >= 1.0:
            started, delivered = now, 0
        if self.on_progress is not None and delivered < protocol.PROGRESS_PER_SECOND:
            delivered += 1
            # Progress is informational; a forged or malformed frame changes nothing.
            with contextlib.suppress(ValueError, TypeError):
                self.on_progress(payload)
        self._window = (started, delivered)

    def _keep(self, kind: bytes, size: int) -> None:
        spool = self._spool
        if len(spool.frames) > protocol.MAX_CHECKPOINTS:
            self._violate(f"sent more than {protocol.MAX_CHECKPOINTS} checkpoint frames")
            return
        if spool.bytes + size > self.max_result_bytes:
            self._violate(f"returned more than the {self.max_result_bytes:,}-byte result limit")
            return
        offset = spool.file.tell()
        left = size
        while left:
            chunk = self.stream.read(min(left, 1 << 20))
            if not chunk:
                return  # the child died mid-frame: no end frame, its exit says why
            spool.file.write(chunk)
            left -= len(chunk)
        spool.bytes += size
        spool.frames.append(SpooledFrame(kind, offset, size))
        if kind == protocol.END:
            spool.file.flush()
            self.result = spool


def _drain(stream: BinaryIO) -> None:
    """Read what is left and drop it, so that the writer never blocks on a full pipe."""
    while stream.read(1 << 16):
        pass


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = stream.read(min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def send_job(job: BinaryIO, write: Callable[[bytes], object]) -> None:
    """Copy a job to the sandbox's stdin in pieces (a score job carries checkpoints)."""
    while chunk := job.read(1 << 20):
        write(chunk)


class TailReader:
    """Drains a stream, keeping only its last bytes and counting the rest."""

    def __init__(self, stream: BinaryIO, keep: int, limit: int, on_limit: Callable[[], None]):
        self.stream, self.keep, self.limit, self.on_limit = stream, keep, limit, on_limit
        self.tail = bytearray()
        self.total = 0

    def __call__(self) -> None:
        try:
            while chunk := self.stream.read1(64 * 1024):  # type: ignore[attr-defined]
                self.total += len(chunk)
                self.tail += chunk
                del self.tail[: max(0, len(self.tail) - self.keep)]
                if self.total > self.limit:
                    self.on_limit()
                    return
        except (OSError, ValueError):
            return

    def text(self) -> str:
        return self.tail.decode(errors="replace")


class ProcessSandbox(Sandbox):
    """A sandbox that is one local process tree (bwrap or a plain subprocess)."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        backend: str,
        isolated: bool,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.backend, self.isolated = backend, isolated
        self.uid: int | None = None  # the uid the candidate runs as, where the backend sets one
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: one kill reaches the whole tree
            close_fds=True,
            pass_fds=pass_fds,
        )

    def run(self, job: BinaryIO, limits: Limits, on_progress: ProgressFn | None = None) -> RawRun:
        proc = self.proc
        assert proc.stdin and proc.stdout and proc.stderr
        out = RawRun()
        overflow = threading.Event()

        def output_limit() -> None:
            overflow.set()
            self._kill()

        frames = FrameReader(proc.stdout, result_cap(limits), on_progress, self._kill)
        logs = TailReader(proc.stderr, limits.log_tail_bytes, limits.max_output_bytes, output_limit)
        readers = [threading.Thread(target=t, daemon=True) for t in (frames, logs)]
        for t in readers:
            t.start()
        started = time.monotonic()

        def send() -> None:
            try:
                send_job(job, proc.stdin.write)  # type: ignore[union-attr]
                proc.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass  # the sandbox died before reading its job; its exit says why

        threading.Thread(target=send, daemon=True).start()
        try:
            proc.wait(timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            out.timed_out = True
            self._kill()
        out.wall_seconds = time.monotonic() - started
        for t in readers:
            t.join(timeout=5)
        self._kill()  # anything the candidate left in its group goes too
        out.result = frames.result
        out.result_overflow = frames.overflow
        out.violation = frames.violation
        out.output_overflow = overflow.is_set()
        out.log_tail = logs.text()
        out.output_bytes = logs.total
        code = proc.returncode
        if code is not None and code < 0:
            out.signal_name = signal.Signals(-code).name
        elif code is not None and code > 128 and self.isolated:
            # bwrap reports a child killed by a signal as 128 + signal.
            try:
                out.signal_name = signal.Signals(code - 128).name
            except ValueError:
                out.exit_code = code
        else:
            out.exit_code = code
        return out

    def _kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=KILL_GRACE_SECONDS)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)

    def destroy(self) -> None:
        self._kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
