"""One description of a sandbox, rendered by each backend: bwrap argv, docker options, a process.

`SandboxSpec` says what a sandbox is: the entry command, the environment, the uid, the
limits, the files it sees (the import tree) and its scratch space. The three renderers
below are the only places that turn it into a backend's terms, so that a limit or a
mount added here reaches every backend it applies to. A sandbox given a GPU (gpu.py) gets
its device nodes (bwrap), its device request by UUID (docker), its device named in the
environment, and RLIMIT_DATA where RLIMIT_AS would bound its memory (CUDA reserves far more
address space than any sensible RLIMIT_AS).

What each rendering enforces, and what it cannot, is in docs/security.md.
"""

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path
from typing import Any

from services.trainer.sandbox import gpu as gpus
from services.trainer.sandbox.base import MIB, Limits
from services.trainer.sandbox.imports import ImportTree

# The entry command's arguments after the interpreter.
CHILD = ("-I", "-B", "-m", "services.trainer.child")
HOSTNAME = "sandbox"
WORKDIR = "/tmp"
# System V and POSIX shared memory (/dev/shm) of a docker sandbox; counted in its memory.
SHM_BYTES = 64 * MIB
# Other Python installations' packages under /usr, hidden from the bwrap sandbox (the
# candidate could put them on sys.path): Debian's dist-packages, a system pip's.
FOREIGN_PACKAGES = (
    "/usr/lib/python3*/dist-packages",
    "/usr/lib/python3*/site-packages",
    "/usr/local/lib/python3*/dist-packages",
    "/usr/local/lib/python3*/site-packages",
)


def child_env(threads: int) -> dict[str, str]:
    """The whole environment a candidate sees: nothing of the trainer's."""
    n = str(threads)
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": WORKDIR,
        "TMPDIR": WORKDIR,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
    }


@dataclass(frozen=True)
class SandboxSpec:
    """One sandbox, described once."""

    # The interpreter that runs the child (the trainer's own; the image's for docker).
    python: str
    limits: Limits
    threads: int = 1
    # The unprivileged uid the candidate runs as (None: the trainer's own, process only).
    uid: int | None = None
    # The files the sandbox sees, read-only (bwrap binds them; the docker image holds them).
    tree: ImportTree | None = None
    # Memory is bounded by the sandbox's cgroup (so not per process by RLIMIT_AS).
    memory_by_cgroup: bool = False
    # The one GPU this sandbox may use (None: the CPU only); see gpu.py.
    gpu: gpus.Gpu | None = None
    # bwrap's /proc: "fresh" or "minimal" (GPU pods, no user namespace; gpus.proc_args).
    proc: str = "fresh"
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"a sandbox needs at least one thread, not {self.threads}")
        if self.uid is not None and self.uid <= 0:
            raise ValueError(f"a sandbox must not run as uid {self.uid}")
        if self.proc not in gpus.PROC_MODES:
            raise ValueError(
                f"unknown sandbox /proc mode {self.proc!r}; use one of {gpus.PROC_MODES}"
            )
        if not self.env:
            env = {**child_env(self.threads), **gpus.child_env(self.gpu)}
            object.__setattr__(self, "env", env)

    @property
    def device(self) -> str:
        """The device results and Capacity name: "cuda:N" or "cpu"."""
        return self.gpu.device if self.gpu else "cpu"

    @property
    def command(self) -> list[str]:
        return [self.python, *CHILD]

    @property
    def cpu_seconds(self) -> int:
        """RLIMIT_CPU: a backstop under the wall-clock kill, for all the threads."""
        return int(self.limits.wall_seconds * self.threads) + 60

    def rlimits(self) -> dict[str, int]:
        """The per-process limits (prlimit's names); the child lowers them per job."""
        lim = self.limits
        values = {
            "cpu": self.cpu_seconds,
            "fsize": lim.file_bytes,
            "nofile": lim.open_files,
            "core": 0,
        }
        if not self.memory_by_cgroup:
            # RLIMIT_DATA with a GPU: CUDA cannot initialise under any sensible RLIMIT_AS.
            values[gpus.memory_rlimit_flag(self.gpu).removeprefix("--")] = lim.memory_bytes
        return values


def prlimit_argv(spec: SandboxSpec) -> list[str]:
    """`prlimit` with the spec's limits: a command, not a preexec function, because
    Python code between fork and exec in a multi-threaded server (gRPC) can crash or
    deadlock the child."""
    prlimit = shutil.which("prlimit")
    if not prlimit:
        raise RuntimeError("sandboxes need prlimit: apt-get install util-linux")
    return [prlimit, *(f"--{k}={v}" for k, v in spec.rlimits().items()), "--"]


def process_argv(spec: SandboxSpec) -> list[str]:
    """The process backend: the limits and the command; nothing isolated."""
    return [*prlimit_argv(spec), *spec.command]


# Bound whole, read-only, before the import tree (bwrap_argv): what lies in it is there as
# on the host, so nothing in it is bound or linked again (bwrap cannot make a symlink where
# the bound tree has a file: a venv whose python is /usr/bin/python3, as in the images).
BOUND_WHOLE = ("/usr",)


def _in_bound_tree(path: str) -> bool:
    return any(path == top or path.startswith(top + "/") for top in BOUND_WHOLE)


class _Binds:
    """bwrap arguments that make a file tree, creating parents readable (0755)."""

    def __init__(self) -> None:
        self.args: list[str] = []
        # /tmp is the sandbox's own tmpfs (mode 1777): a path under /tmp must not remake
        # it 0755, which would leave the candidate no writable scratch.
        self.made: set[str] = {"/", WORKDIR}

    def parents(self, path: str) -> None:
        # Parents bwrap makes on its own are private (0700) to the unprivileged uid.
        for parent in reversed(Path(path).parents[:-1]):
            if str(parent) not in self.made:
                self.made.add(str(parent))
                self.args += ["--perms", "0755", "--dir", str(parent)]

    def bind(self, source: str, dest: str | None = None) -> None:
        dest = dest or source
        if source == dest and _in_bound_tree(dest):
            return
        self.parents(dest)
        self.made.add(dest)
        self.args += ["--ro-bind", source, dest]

    def link_chain(self, path: str) -> None:
        """`path` as the host has it: each symlink on the way made, the file bound."""
        seen: set[str] = set()
        while os.path.islink(path) and path not in seen:
            if _in_bound_tree(path):
                return  # the rest of the chain is there already
            seen.add(path)
            target = os.readlink(path)
            self.parents(path)
            self.args += ["--symlink", target, path]
            path = os.path.normpath(os.path.join(os.path.dirname(path), target))
        self.bind(path)

    def hide(self, path: str) -> None:
        self.args += ["--tmpfs", path]


def bwrap_argv(spec: SandboxSpec, bwrap: str, seccomp_fd: int, setpriv: str | None) -> list[str]:
    """bubblewrap: new PID, network, IPC, UTS and cgroup namespaces, the import tree and
    the system libraries read-only, a size-capped private /tmp, no capabilities, an
    unprivileged uid, and the seccomp filter (seccomp.py) from `seccomp_fd`."""
    args = [
        bwrap,
        "--seccomp", str(seccomp_fd),
        "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent", "--new-session",
        "--hostname", HOSTNAME,
        *(a for top in BOUND_WHOLE for a in ("--ro-bind", top, top)),
        *gpus.proc_args(spec.proc),
        "--dev", "/dev",
        *(gpus.bwrap_args(spec.gpu) if spec.gpu else []),
        "--perms", "1777", "--size", str(spec.limits.scratch_bytes), "--tmpfs", WORKDIR,
        "--chdir", WORKDIR,
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
    tree = spec.tree
    binds = _Binds()
    if tree is not None:
        own = {str(tree.stdlib), str(tree.site_packages)}
        for pattern in FOREIGN_PACKAGES:
            for path in sorted(glob(pattern)):
                if os.path.isdir(path) and not any(p.startswith(path) for p in own):
                    binds.hide(path)
        _interpreter(binds, spec.python, tree)
        site = str(tree.site_packages)
        binds.parents(site + "/")
        for entry in tree.site_entries:
            binds.bind(str(entry))
        for source, rel in tree.child_files:
            binds.bind(str(source), f"{site}/{rel}")
    else:  # no import tree: the whole interpreter and environment (tests of this module)
        for path in sorted({sys.base_prefix, sys.prefix}):
            binds.bind(path)
    args += binds.args
    for key, value in spec.env.items():
        args += ["--setenv", key, value]
    if setpriv is not None:
        # bwrap needs root to build the mounts; the candidate then runs as a plain uid
        # with every capability gone and no way to gain one.
        assert spec.uid is not None
        args += ["--", setpriv, f"--reuid={spec.uid}", f"--regid={spec.uid}",
                 "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
                 "--no-new-privs"]  # fmt: skip
    else:
        args += ["--unshare-user", "--cap-drop", "ALL", "--"]
    return [*args, *spec.command]


def _interpreter(binds: _Binds, python: str, tree: ImportTree) -> None:
    """The interpreter, the venv marker beside it, its shared library and its standard
    library (whose own site-packages stays hidden)."""
    binds.link_chain(python)
    venv = Path(python).parent.parent
    if (venv / "pyvenv.cfg").is_file():
        binds.bind(str(venv / "pyvenv.cfg"))
    real = Path(os.path.realpath(python))
    for lib in sorted(glob(str(real.parent.parent / "lib" / "libpython*.so*"))):
        binds.bind(lib)
    binds.bind(str(tree.stdlib))
    if (tree.stdlib / "site-packages").is_dir():
        binds.hide(str(tree.stdlib / "site-packages"))


def docker_options(
    spec: SandboxSpec,
    seccomp_profile: str,
    runtime: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the Docker SDK's `create_container` and `create_host_config` are given.

    No network, a read-only root (the image) with a size-capped /tmp, no capabilities,
    no way to gain privileges, the seccomp profile, an unprivileged uid, and pids,
    memory (shared memory and tmpfs included: they are the container cgroup's) and CPU
    limits; the spec's GPU only (by UUID, never all of them); `runtime` (runsc: gVisor)
    where configured.
    """
    import docker.types

    lim = spec.limits
    create: dict[str, Any] = {
        "command": spec.command,
        "user": f"{spec.uid}:{spec.uid}",
        "environment": dict(spec.env),
        "working_dir": WORKDIR,
        "hostname": HOSTNAME,
        "stdin_open": True,
        "detach": False,  # with stdin_open: StdinOnce, so stdin closes after the job
        "tty": False,
    }
    host: dict[str, Any] = {
        "auto_remove": False,
        "network_mode": "none",
        "read_only": True,
        # exec stays allowed: torch and numpy may write and load small helpers there.
        "tmpfs": {WORKDIR: f"rw,nosuid,nodev,size={lim.scratch_bytes},mode=1777"},
        "shm_size": SHM_BYTES,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges", f"seccomp={seccomp_profile}"],
        # No init: the child is PID 1. An init (tini) would run as the sandbox uid too,
        # so the candidate could ptrace-stop it; PID 1 has no parent to attack, and
        # when it exits the kernel kills everything left in the container.
        "init": False,
        "pids_limit": lim.max_processes,
        "mem_limit": lim.memory_bytes,
        "memswap_limit": lim.memory_bytes,  # no swap
        "nano_cpus": spec.threads * 1_000_000_000,
        "ulimits": [docker.types.Ulimit(name=k, soft=v, hard=v) for k, v in spec.rlimits().items()],
        "ipc_mode": "private",
        # The attach stream is the only reader; the engine keeps no copy of the
        # candidate's output (a flood would otherwise fill the host's disk).
        "log_config": docker.types.LogConfig(type=docker.types.LogConfig.types.NONE),
    }
    if runtime:
        host["runtime"] = runtime
    if spec.gpu:
        host["device_requests"] = gpus.docker_device_requests(spec.gpu)
    return create, host
