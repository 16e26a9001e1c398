"""Local sandboxes: bubblewrap (the default on Linux) and a plain process (development only)."""

import itertools
import os
import shutil
import sys
import threading
from pathlib import Path

import services
from services.trainer.sandbox import gpu as gpus
from services.trainer.sandbox.base import Backend, Limits, ProcessSandbox, Sandbox
from services.trainer.sandbox.seccomp import filter_fd

CHILD = ["-I", "-B", "-m", "services.trainer.child"]
# Each sandbox runs as its own unprivileged uid from this range, so that the
# process limit (counted per uid by the kernel) of one cannot starve another.
SANDBOX_UID_BASE = 61000
SANDBOX_UID_COUNT = 1000


def child_env(threads: int) -> dict[str, str]:
    """The whole environment a candidate sees: nothing of the trainer's."""
    n = str(threads)
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
    }


def rlimit_prefix(limits: Limits, threads: int, gpu: gpus.Gpu | None = None) -> list[str]:
    """`prlimit` with the trainer's maximum limits; the child lowers them per job.

    A command, not a preexec function: Python code between fork and exec in a
    multi-threaded server (gRPC) can crash or deadlock the child.
    """
    prlimit = shutil.which("prlimit")
    if not prlimit:
        raise RuntimeError("sandboxes need prlimit: apt-get install util-linux")
    cpu = int(limits.wall_seconds * max(threads, 1)) + 60
    return [
        prlimit,
        f"{gpus.memory_rlimit_flag(gpu)}={limits.memory_bytes}",
        f"--cpu={cpu}",
        f"--fsize={limits.file_bytes}",
        f"--nofile={limits.open_files}",
        "--core=0",
        "--",
    ]


def python_paths() -> list[str]:
    """What the child needs to run: the interpreter, the environment, this package."""
    paths = {sys.base_prefix, sys.prefix, str(Path(services.__file__).resolve().parent)}
    return sorted(p for p in paths if os.path.isdir(p))


class BwrapBackend(Backend):
    """bubblewrap: new PID, network, IPC and UTS namespaces, read-only system and Python
    paths, a size-capped private /tmp, no capabilities, an unprivileged uid, and a
    seccomp filter against namespace, mount and kernel-interface syscalls."""

    name = "bwrap"
    isolated = True
    _uids = itertools.count()
    _uid_lock = threading.Lock()

    def __init__(
        self,
        limits: Limits,
        threads: int = 1,
        gpu: gpus.Gpu | None = None,
        proc: str = "fresh",
    ) -> None:
        super().__init__(limits, threads)
        # GPU: this backend's sandboxes get this one GPU (gpu.py); proc: see gpu.proc_args.
        self.gpu, self.proc = gpu, proc
        self.bwrap = shutil.which("bwrap")
        self.setpriv = shutil.which("setpriv")
        if not self.bwrap:
            raise RuntimeError(
                "the bwrap sandbox needs bubblewrap: apt-get install bubblewrap "
                "(or choose --backend docker)"
            )
        if os.geteuid() == 0 and not self.setpriv:
            raise RuntimeError("the bwrap sandbox needs setpriv (apt-get install util-linux)")

    def _next_uid(self) -> int:
        with self._uid_lock:
            return SANDBOX_UID_BASE + next(self._uids) % SANDBOX_UID_COUNT

    def argv(self, uid: int, seccomp_fd: int) -> list[str]:
        assert self.bwrap
        args = [
            self.bwrap,
            "--seccomp", str(seccomp_fd),
            "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
            "--unshare-cgroup-try",
            "--die-with-parent", "--new-session",
            "--hostname", "sandbox",
            "--ro-bind", "/usr", "/usr",
            *gpus.proc_args(self.proc),
            "--dev", "/dev",
            *(gpus.bwrap_args(self.gpu) if self.gpu else []),
            "--perms", "1777", "--size", str(self.limits.scratch_bytes), "--tmpfs", "/tmp",
            "--chdir", "/tmp",
            "--clearenv",
        ]  # fmt: skip
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(top):
                args += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                args += ["--ro-bind", top, top]
        for etc in ("/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives"):
            if os.path.exists(etc):
                args += ["--ro-bind", etc, etc]
        # /tmp is the sandbox's own tmpfs (mode 1777): a checkout under /tmp must not
        # remake it 0755, which would leave the candidate no writable scratch.
        made: set[str] = {"/tmp"}
        for path in python_paths():
            # Parents bwrap makes on its own are private (0700) to the unprivileged uid.
            for parent in reversed(Path(path).parents[:-1]):
                if str(parent) not in made:
                    made.add(str(parent))
                    args += ["--perms", "0755", "--dir", str(parent)]
            args += ["--ro-bind", path, path]
        for key, value in {**child_env(self.threads), **gpus.child_env(self.gpu)}.items():
            args += ["--setenv", key, value]
        if os.geteuid() == 0:
            # bwrap needs root to build the mounts; the candidate then runs as a plain uid
            # with every capability gone and no way to gain one.
            args += ["--", self.setpriv or "setpriv", f"--reuid={uid}", f"--regid={uid}",
                     "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
                     "--no-new-privs"]  # fmt: skip
        else:
            args += ["--unshare-user", "--cap-drop", "ALL", "--"]
        return [*args, sys.executable, *CHILD]

    def start(self) -> Sandbox:
        uid = self._next_uid()
        limits, threads = self.limits, self.threads
        seccomp_fd = filter_fd()
        try:
            sandbox = ProcessSandbox(
                rlimit_prefix(limits, threads, self.gpu) + self.argv(uid, seccomp_fd),
                env=child_env(threads),
                backend=self.name,
                isolated=True,
                pass_fds=(seccomp_fd,),
            )
        finally:
            os.close(seccomp_fd)
        sandbox.uid = uid
        sandbox.device = self.gpu.device if self.gpu else "cpu"
        return sandbox


class ProcessBackend(Backend):
    """A plain subprocess with resource limits and a clean environment. It does not
    isolate the filesystem or the network: for development only, and labelled so."""

    name = "process"
    isolated = False

    def start(self) -> Sandbox:
        limits, threads = self.limits, self.threads
        return ProcessSandbox(
            [*rlimit_prefix(limits, threads), sys.executable, *CHILD],
            env=child_env(threads),
            backend=self.name,
            isolated=False,
        )
