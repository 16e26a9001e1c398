"""The docker sandbox: a fresh container per evaluation, through the Docker SDK.

Each sandbox is one container of the sandbox image (images/sandbox/build-local.sh)
running the child, as template.docker_options renders it: no network, a read-only root
with a size-capped /tmp, no capabilities, no way to gain privileges, the seccomp profile
of seccomp.py, an unprivileged uid, and pids, memory and CPU limits from the engine's
cgroup; a slot's GPU (gpu.py) is passed by a device request naming it only. The engine's
socket is never mounted into it: nothing is mounted but /tmp. With a runtime such as
runsc (gVisor; `--docker-runtime`, EVO_SANDBOX_RUNTIME) the candidate's system calls go
to a user-space kernel instead of the host's.

The child's stdin, stdout and stderr travel over the engine's attach stream, which
multiplexes stdout and stderr; a thread splits them into two pipes so that the same
FrameReader and TailReader as the local backends read them.
"""

import contextlib
import hashlib
import itertools
import logging
import os
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

import docker
import docker.errors
import docker.types
import requests

from services.trainer.sandbox import gpu as gpus
from services.trainer.sandbox.base import (
    Backend,
    FrameReader,
    Limits,
    ProgressFn,
    RawRun,
    Sandbox,
    TailReader,
    result_cap,
    send_job,
)
from services.trainer.sandbox.imports import PROJECT_ROOT, child_modules
from services.trainer.sandbox.local import SANDBOX_UID_BASE, SANDBOX_UID_COUNT
from services.trainer.sandbox.seccomp import docker_profile_json
from services.trainer.sandbox.template import SandboxSpec, docker_options

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "evo-sandbox:local"
# Set on every container this backend makes, so that leftovers can be found and removed.
LABEL = "evo.sandbox"
# Which trainer process made it (several trainers may share an engine).
OWNER_LABEL = "evo.sandbox.owner"
OWNER = f"{socket.gethostname()}-{os.getpid()}"
RUNSC_HINT = (
    'configure it in the engine\'s /etc/docker/daemon.json "runtimes" (for gVisor: {"runsc": '
    '{"path": "/usr/bin/runsc", "runtimeArgs": ["--platform=ptrace", "--network=none", '
    '"--oci-seccomp"]}}) and reload the engine (kill -HUP its pid); see docs/security.md'
)
BUILD_HINT = "build it with images/sandbox/build-local.sh"
ENGINE_HINT = "start dockerd (images/sandbox/start-docker-engine.sh) or set DOCKER_HOST"
# The attach stream's frame header: stream id, three zero bytes, big-endian length.
_HEADER = struct.Struct(">BxxxL")
_STDOUT, _STDERR = 1, 2


def child_sha256() -> str:
    """The hash of this project's modules the sandbox runs (imports.child_modules, in
    order): the image records it when built, and the backend compares."""
    digest = hashlib.sha256()
    for rel in child_modules():
        digest.update(rel.encode() + b"\0" + (PROJECT_ROOT / rel).read_bytes())
    return digest.hexdigest()


def _engine_error(e: Exception) -> RuntimeError:
    return RuntimeError(f"the docker sandbox cannot reach a Docker engine ({e}): {ENGINE_HINT}")


class DockerBackend(Backend):
    """Starts one container per evaluation from the sandbox image."""

    name = "docker"
    isolated = True
    _uids = itertools.count()
    _uid_lock = threading.Lock()

    def __init__(
        self,
        limits: Limits,
        threads: int = 1,
        image: str | None = None,
        client: docker.DockerClient | None = None,
        runtime: str | None = None,
        gpu: gpus.Gpu | None = None,
    ) -> None:
        super().__init__(limits, threads)
        self.image = image or os.environ.get("EVO_SANDBOX_IMAGE") or DEFAULT_IMAGE
        # This backend's sandboxes get this one GPU (services/trainer/sandbox/gpu.py).
        self.gpu = gpu
        # The engine's default runtime (runc) when empty.
        self.runtime = runtime or os.environ.get("EVO_SANDBOX_RUNTIME") or ""
        try:
            self.client = client or docker.from_env()
            info = self.client.info() if self.runtime else {}
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise _engine_error(e) from None
        runtimes = info.get("Runtimes") or {}
        if self.runtime and self.runtime not in runtimes:
            raise RuntimeError(
                f"the Docker engine has no runtime {self.runtime!r} (it has "
                f"{', '.join(sorted(runtimes))}): {RUNSC_HINT}"
            )
        args = (runtimes.get(self.runtime) or {}).get("runtimeArgs") or []
        if self.runtime == "runsc" and "--oci-seccomp" not in args:
            # Without it runsc ignores the container's seccomp profile: any socket family.
            raise RuntimeError(
                "the engine's runsc runtime lacks --oci-seccomp, so it would ignore the "
                f"sandbox's seccomp profile: {RUNSC_HINT}"
            )
        self.seccomp_profile = docker_profile_json(gvisor=self.runtime == "runsc")
        try:
            self.client.ping()
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise _engine_error(e) from None
        try:
            config = self.client.images.get(self.image).attrs.get("Config") or {}
        except docker.errors.ImageNotFound:
            raise RuntimeError(
                f"the docker sandbox image {self.image} is missing: {BUILD_HINT}"
            ) from None
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise _engine_error(e) from None
        labels = config.get("Labels") or {}
        self.python = labels.get("evo.sandbox.python") or "python3"
        # The image carries its own copy of the child; a different one speaks another protocol.
        built = labels.get("evo.sandbox.child_sha256")
        if built and built != child_sha256():
            raise RuntimeError(
                f"the docker sandbox image {self.image} holds another version of the "
                f"sandbox's modules ({', '.join(child_modules())}) than this trainer: "
                f"rebuild it ({BUILD_HINT})"
            )

    def _next_uid(self) -> int:
        # Each container gets its own uid: RLIMIT_NPROC, which the child sets, counts
        # processes per uid across the whole kernel, not per container.
        with self._uid_lock:
            return SANDBOX_UID_BASE + next(self._uids) % SANDBOX_UID_COUNT

    def spec(self, uid: int) -> SandboxSpec:
        # The image holds the import tree (images/sandbox/rootfs.py, from imports.py).
        return SandboxSpec(
            python=self.python,
            limits=self.limits,
            threads=self.threads,
            uid=uid,
            memory_by_cgroup=True,  # the container's cgroup, shared memory included
            gpu=self.gpu,
        )

    def container_options(self, uid: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """What `create_container` and `create_host_config` are given."""
        create, host = docker_options(self.spec(uid), self.seccomp_profile, runtime=self.runtime)
        create["labels"] = {LABEL: "1", OWNER_LABEL: OWNER}
        return create, host

    def start(self) -> Sandbox:
        return DockerSandbox(self, self.container_options(self._next_uid()))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


class DockerSandbox(Sandbox):
    """One container, attached before it starts so that no output is lost."""

    backend = "docker"
    isolated = True

    def __init__(
        self, owner: DockerBackend, options: tuple[dict[str, Any], dict[str, Any]]
    ) -> None:
        self.api = owner.client.api
        self.device = owner.gpu.device if owner.gpu else "cpu"
        self.memory_bytes = owner.limits.memory_bytes
        self.runtime = owner.runtime
        # The host-visible uid of every process in the container (no user namespace).
        self.uid = int(str(options[0]["user"]).split(":")[0])
        self._destroyed = False
        self.id = ""
        self._sock: socket.socket | None = None
        self._pipes: list[int] = []
        self._discard: set[int] = set()  # streams whose reader has finished
        try:
            create, host = options
            made = self.api.create_container(
                owner.image, host_config=self.api.create_host_config(**host), **create
            )
        except docker.errors.ImageNotFound:
            raise RuntimeError(
                f"the docker sandbox image {owner.image} is missing: {BUILD_HINT}"
            ) from None
        except requests.RequestException as e:
            raise _engine_error(e) from None
        self.id = made["Id"]
        try:
            attached = self.api.attach_socket(
                self.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
            sock = getattr(attached, "_sock", attached)
            sock.settimeout(None)  # the client's request timeout must not cut a long run
            self._sock = sock
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            self._pipes = [out_w, err_w]
            for fd in self._pipes:
                os.set_blocking(fd, False)
            self.stdout = os.fdopen(out_r, "rb")
            self.stderr = os.fdopen(err_r, "rb")
            self._demux = threading.Thread(target=self._split, args=(sock,), daemon=True)
            self._demux.start()
            self.api.start(self.id)
        except BaseException:
            self.destroy()
            raise

    def _split(self, sock: socket.socket) -> None:
        """Copy the attach stream's stdout and stderr frames into their two pipes.

        It never stops reading the stream: were it to, the engine would stall on the
        container's output and then on every request about the container. A stream
        whose reader has finished is discarded instead.
        """
        fds = {_STDOUT: self._pipes[0], _STDERR: self._pipes[1]}
        try:
            while True:
                header = _recv_exact(sock, _HEADER.size)
                if header is None:
                    return
                stream, size = _HEADER.unpack(header)
                while size:
                    chunk = sock.recv(min(size, 1 << 16))
                    if not chunk:
                        return
                    size -= len(chunk)
                    if stream in fds:
                        self._feed(stream, fds[stream], chunk)
        except OSError:
            return
        finally:
            for fd in fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _feed(self, stream: int, fd: int, chunk: bytes) -> None:
        """Write to a non-blocking pipe, waiting while its reader is alive and slow."""
        view = memoryview(chunk)
        while view and stream not in self._discard:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                select.select([], [fd], [], 0.2)
            except OSError:
                self._discard.add(stream)

    def run(self, job: BinaryIO, limits: Limits, on_progress: ProgressFn | None = None) -> RawRun:
        out = RawRun()
        overflow = threading.Event()
        if 0 < limits.memory_bytes < self.memory_bytes:
            # The container started with the trainer's limit; this job asked for less.
            # The child's RLIMIT_AS bounds each process; the cgroup bounds them together.
            try:
                self.api.update_container(
                    self.id, mem_limit=limits.memory_bytes, memswap_limit=limits.memory_bytes
                )
                self.memory_bytes = limits.memory_bytes
            except docker.errors.APIError as e:
                if not self.runtime:
                    raise RuntimeError(f"could not lower the sandbox's memory limit: {e}") from None
                # runsc (gVisor) cannot change a running sandbox's limits: this job's
                # memory is bounded per process (RLIMIT_AS) and by the trainer's limit for
                # the container. Start the trainer with the job's limit to have both.
                _warn_once(
                    f"the {self.runtime} runtime cannot lower a running container's memory "
                    f"limit ({str(e.explanation or e)[:120]}); jobs asking for less than the "
                    f"trainer's {self.memory_bytes:,} bytes get that much for the container "
                    "and their own limit per process only"
                )
            except requests.RequestException as e:
                raise _engine_error(e) from None

        def output_limit() -> None:
            overflow.set()
            self._discard.add(_STDERR)  # the demux must not wait on a reader that stopped
            self._kill(wait=False)  # run() sees the exit and waits

        frames = FrameReader(self.stdout, result_cap(limits), on_progress)
        logs = TailReader(self.stderr, limits.log_tail_bytes, limits.max_output_bytes, output_limit)

        def reading(reader: Callable[[], None], stream: int) -> Callable[[], None]:
            def read() -> None:
                try:
                    reader()
                finally:
                    self._discard.add(stream)

            return read

        readers = [
            threading.Thread(target=reading(frames, _STDOUT), daemon=True),
            threading.Thread(target=reading(logs, _STDERR), daemon=True),
        ]
        for t in readers:
            t.start()
        started = time.monotonic()
        sock = self._sock

        def send() -> None:
            try:
                assert sock is not None
                send_job(job, sock.sendall)
                sock.shutdown(socket.SHUT_WR)  # the child's stdin ends here
            except OSError:
                pass  # the sandbox died before reading its job; its exit says why

        threading.Thread(target=send, daemon=True).start()
        if not self._wait(limits.wall_seconds):
            out.timed_out = True
            self._kill()
        out.wall_seconds = time.monotonic() - started
        for t in readers:
            t.join(timeout=5)
        self._kill()
        out.result = frames.result
        out.result_overflow = frames.overflow
        out.violation = frames.violation
        out.output_overflow = overflow.is_set()
        out.log_tail = logs.text()
        out.output_bytes = logs.total
        try:
            state = self.api.inspect_container(self.id)["State"]
        except (docker.errors.DockerException, requests.RequestException) as e:
            raise _engine_error(e) from None
        out.oom_killed = bool(state.get("OOMKilled"))
        code = state.get("ExitCode")
        if isinstance(code, int) and 128 < code < 128 + 65:
            # The engine reports a PID 1 killed by a signal as 128 + signal.
            try:
                out.signal_name = signal.Signals(code - 128).name
            except ValueError:
                out.exit_code = code
        else:
            out.exit_code = code
        return out

    def _wait(self, seconds: float) -> bool:
        """Whether the container exited within `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self.api.wait(self.id, timeout=max(1.0, left))
                return True
            except (requests.ConnectionError, requests.Timeout):
                # A read timeout: is it still running, or is the engine gone?
                try:
                    running = self.api.inspect_container(self.id)["State"]["Running"]
                except (docker.errors.DockerException, requests.RequestException) as e:
                    raise _engine_error(e) from None
                if not running:
                    return True

    def _kill(self, wait: bool = True) -> None:
        with contextlib.suppress(docker.errors.APIError, requests.RequestException):
            self.api.kill(self.id)  # SIGKILL to the container's init: the whole tree goes
        if wait:
            with contextlib.suppress(docker.errors.APIError, requests.RequestException):
                self.api.wait(self.id, timeout=10)

    def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        for attempt in range(3 if self.id else 0):
            try:
                self.api.remove_container(self.id, force=True, v=True)
                break
            except docker.errors.NotFound:
                break
            except (docker.errors.DockerException, requests.RequestException) as e:
                # Never raise from here (it runs in `finally` blocks); say what is left.
                if attempt == 2:
                    log.warning("could not remove sandbox container %s: %s", self.id[:12], e)
                time.sleep(1)
        self._discard.update((_STDOUT, _STDERR))
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes the demux thread's recv
            with contextlib.suppress(OSError):
                self._sock.close()
        demux = getattr(self, "_demux", None)
        if demux is not None:
            demux.join(timeout=5)  # it closes the pipes' write ends
        else:
            for fd in self._pipes:
                with contextlib.suppress(OSError):
                    os.close(fd)
        for stream in (getattr(self, "stdout", None), getattr(self, "stderr", None)):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def leftover_containers(client: docker.DockerClient) -> list[Any]:
    """Every container this backend made that still exists (for tests and clean-up)."""
    return client.containers.list(all=True, filters={"label": f"{LABEL}=1"})
