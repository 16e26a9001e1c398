"""What every sandbox backend provides: pre-started, single-use sandboxes.

A backend starts a sandbox ahead of time: the child process (`services.trainer.child`)
is running, has imported torch, and waits for its one job on stdin. `Sandbox.run`
sends the job, enforces the wall-clock limit and the output cap, and returns what
came out. The caller scores it; nothing here trusts the candidate.
"""

import contextlib
import json
import os
import signal
import struct
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from services.trainer.child import PROGRESS, RESULT

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

    result: bytes | None = None
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


ProgressFn = Callable[[dict[str, Any]], None]


class Sandbox(ABC):
    """One pre-started sandbox; used for exactly one job, then destroyed."""

    backend: str
    isolated: bool
    device: str = "cpu"

    @abstractmethod
    def run(self, job: bytes, limits: Limits, on_progress: ProgressFn | None = None) -> RawRun: ...

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


def encode_job(arrays_npz: bytes) -> bytes:
    return struct.pack("<Q", len(arrays_npz)) + arrays_npz


class FrameReader:
    """Reads the child's frames (progress, then one result), refusing oversize ones."""

    def __init__(self, stream: BinaryIO, max_result_bytes: int, on_progress: ProgressFn | None):
        self.stream = stream
        self.max_result_bytes = max_result_bytes
        self.on_progress = on_progress
        self.result: bytes | None = None
        self.overflow = False

    def __call__(self) -> None:
        try:
            while self.result is None:
                header = _read_exact(self.stream, 9)
                if header is None:
                    return
                kind, size = header[:1], struct.unpack("<Q", header[1:])[0]
                if size > self.max_result_bytes:
                    self.overflow = True
                    return
                payload = _read_exact(self.stream, size)
                if payload is None:
                    return
                if kind == RESULT:
                    self.result = payload
                elif kind == PROGRESS and self.on_progress is not None:
                    # Progress is informational; a forged frame changes nothing.
                    with contextlib.suppress(ValueError, TypeError):
                        self.on_progress(json.loads(payload))
        except (OSError, ValueError):
            return


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = stream.read(min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


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

    def run(self, job: bytes, limits: Limits, on_progress: ProgressFn | None = None) -> RawRun:
        proc = self.proc
        assert proc.stdin and proc.stdout and proc.stderr
        out = RawRun()
        overflow = threading.Event()

        def output_limit() -> None:
            overflow.set()
            self._kill()

        frames = FrameReader(proc.stdout, limits.max_params * 4 + 64 * MIB, on_progress)
        logs = TailReader(proc.stderr, limits.log_tail_bytes, limits.max_output_bytes, output_limit)
        readers = [threading.Thread(target=t, daemon=True) for t in (frames, logs)]
        for t in readers:
            t.start()
        started = time.monotonic()

        def send() -> None:
            try:
                proc.stdin.write(job)  # type: ignore[union-attr]
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
