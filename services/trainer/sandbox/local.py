"""Local sandboxes: bubblewrap (the default on Linux) and a plain process (development only).

Both render a `SandboxSpec` (template.py) into a command, and both put each sandbox in
its own cgroup (cgroups.py) where the host lets the trainer create one: memory, processes
and CPU are then limited for the sandbox as a whole, not per process.
"""

import itertools
import logging
import os
import shutil
import sys
import threading

from services.trainer.sandbox import cgroups
from services.trainer.sandbox import gpu as gpus
from services.trainer.sandbox.base import Backend, Limits, ProcessSandbox, ProgressFn, RawRun
from services.trainer.sandbox.imports import import_tree
from services.trainer.sandbox.seccomp import filter_fd
from services.trainer.sandbox.template import (
    SandboxSpec,
    bwrap_argv,
    child_env,
    prlimit_argv,
    process_argv,
)

log = logging.getLogger(__name__)

# Each sandbox runs as its own unprivileged uid from this range, so that the
# process limit (counted per uid by the kernel) of one cannot starve another.
SANDBOX_UID_BASE = 61000
SANDBOX_UID_COUNT = 1000
_names = itertools.count()


class CgroupSandbox(ProcessSandbox):
    """A local sandbox in its own cgroup: the job's limits are set on the group before
    the job is sent, an OOM kill is read from it, and destroying the sandbox kills
    whatever the group still holds (also processes that left its process group)."""

    def __init__(self, argv: list[str], group: cgroups.SandboxCgroup | None, **kw) -> None:  # type: ignore[no-untyped-def]
        self.group = group
        self.memory_peak_bytes = 0
        try:
            super().__init__(argv, **kw)
        except BaseException:
            if group is not None:
                group.remove()
            raise

    def run(self, job: bytes, limits: Limits, on_progress: ProgressFn | None = None) -> RawRun:
        if self.group is not None:
            # Started with the trainer's maximum; this job may ask for less.
            try:
                self.group.set_limits(limits.memory_bytes, limits.max_processes, 0)
            except OSError as e:
                # The kernel refuses a memory limit below what the group already holds
                # (the interpreter and torch, before any candidate code): that job cannot run.
                log.info("could not lower a sandbox's limits to the job's: %s", e)
                self.destroy()
                return RawRun(oom_killed=True, log_tail=f"the job's limits do not fit: {e}")
        out = super().run(job, limits, on_progress)
        if self.group is not None:
            out.oom_killed = self.group.oom_killed()
            self.memory_peak_bytes = self.group.peak_bytes()
            log.debug("sandbox memory peak: %d bytes", self.memory_peak_bytes)
        return out

    def destroy(self) -> None:
        super().destroy()
        if self.group is not None:
            self.group.remove()


class LocalBackend(Backend):
    """What the bwrap and process backends share: a cgroup per sandbox where possible."""

    def __init__(self, limits: Limits, threads: int = 1) -> None:
        super().__init__(limits, threads)
        self.cgroups = cgroups.detect()
        self.shell = shutil.which("sh") or "/bin/sh"
        if warning := self.cgroups.warning():
            log.warning("%s backend: %s", self.name, warning)
        else:
            log.info(
                "%s backend: each sandbox gets its own cgroup (v%d: %s)",
                self.name,
                self.cgroups.version,
                ", ".join(sorted(self.cgroups.enforced)),
            )

    @property
    def memory_by_cgroup(self) -> bool:
        return "memory" in self.cgroups.enforced

    def _group(self) -> cgroups.SandboxCgroup | None:
        group = self.cgroups.create(f"{self.name}-{os.getpid()}-{next(_names)}")
        if group is not None:
            group.set_limits(self.limits.memory_bytes, self.limits.max_processes, self.threads)
        return group

    def _start(  # type: ignore[no-untyped-def]
        self, argv: list[str], uid: int | None, device: str = "cpu", **kw
    ) -> CgroupSandbox:
        group = self._group()
        prefix = group.join_prefix(self.shell) if group is not None else []
        sandbox = CgroupSandbox(
            prefix + argv,
            group,
            env=child_env(self.threads),
            backend=self.name,
            isolated=self.isolated,
            **kw,
        )
        sandbox.uid = uid
        sandbox.device = device
        return sandbox


class BwrapBackend(LocalBackend):
    """bubblewrap: see template.bwrap_argv for what the sandbox gets."""

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
        if proc not in gpus.PROC_MODES:
            raise ValueError(f"unknown sandbox /proc mode {proc!r}; use one of {gpus.PROC_MODES}")
        # gpu: this backend's sandboxes get this one GPU (gpu.py); proc: see gpus.proc_args.
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
        super().__init__(limits, threads)
        self.tree = import_tree()

    def _next_uid(self) -> int:
        with self._uid_lock:
            return SANDBOX_UID_BASE + next(self._uids) % SANDBOX_UID_COUNT

    def spec(self, uid: int) -> SandboxSpec:
        return SandboxSpec(
            python=sys.executable,
            limits=self.limits,
            threads=self.threads,
            uid=uid,
            tree=self.tree,
            memory_by_cgroup=self.memory_by_cgroup,
            gpu=self.gpu,
            proc=self.proc,
        )

    def argv(self, uid: int, seccomp_fd: int) -> list[str]:
        assert self.bwrap
        spec = self.spec(uid)
        setpriv = self.setpriv if os.geteuid() == 0 else None
        return prlimit_argv(spec) + bwrap_argv(spec, self.bwrap, seccomp_fd, setpriv)

    def start(self) -> CgroupSandbox:
        uid = self._next_uid()
        seccomp_fd = filter_fd()
        try:
            return self._start(
                self.argv(uid, seccomp_fd),
                uid,
                self.gpu.device if self.gpu else "cpu",
                pass_fds=(seccomp_fd,),
            )
        finally:
            os.close(seccomp_fd)


class ProcessBackend(LocalBackend):
    """A plain subprocess with resource limits, a clean environment and (where possible)
    a cgroup. It does not isolate the filesystem or the network: for development only,
    and labelled so."""

    name = "process"
    isolated = False

    def argv(self) -> list[str]:
        spec = SandboxSpec(
            python=sys.executable,
            limits=self.limits,
            threads=self.threads,
            memory_by_cgroup=self.memory_by_cgroup,
        )
        return process_argv(spec)

    def start(self) -> CgroupSandbox:
        return self._start(self.argv(), None)
