"""One cgroup per sandbox: memory, processes and CPU limited for the sandbox as a whole.

Resource limits count per process (RLIMIT_AS) or per uid (RLIMIT_NPROC), and shared
memory belongs to no process: memfd files, System V segments, /dev/shm and /tmp files
and a few extra interpreters each held 3 GiB under a 1 GiB RLIMIT_AS. A memory cgroup
charges every page the sandbox's processes touch (anonymous, shared memory, tmpfs, page
cache, kernel memory) to one counter, and kills inside the group when it is full; the
pids controller counts the group's processes and threads; the cpu controller caps its
CPU time at `threads` CPUs.

Both cgroup versions: v1 (one hierarchy per controller, as on this development machine)
and v2 (one unified hierarchy: current clusters and the trainer pod). Sandbox groups go
under the trainer's own cgroup, in `evo-sandboxes/`, so that whatever limits the trainer
holds still hold its sandboxes. On v2 a cgroup with processes cannot hand controllers to
children, so the trainer first moves its own processes into a leaf `evo-trainer/`, as
container engines do when nested.

A sandbox joins its group before anything of it runs: the command is prefixed with a
shell line that writes its own pid into each group's `cgroup.procs` and then execs the
sandbox (no Python between fork and exec; see template.prlimit_argv). Its processes run
as an unprivileged uid with no /sys, so they cannot leave it.
"""

import contextlib
import errno
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CONTROLLERS = ("memory", "pids", "cpu")
PARENT = "evo-sandboxes"
TRAINER_LEAF = "evo-trainer"
CPU_PERIOD_US = 100_000
V1_SHARES = 1024  # cgroup v1's weight of one task
# `sh -c JOIN_SCRIPT evo-cgroup-join PROCS... -- COMMAND...`
JOIN_SCRIPT = 'while [ "$1" != -- ]; do echo $$ >"$1" || exit 125; shift; done; shift; exec "$@"'
FIX_HINT = (
    "run the trainer as root with the cgroup hierarchy mounted read-write (cgroup v1: the "
    "memory, pids and cpu hierarchies; v2: a delegated subtree with those controllers), "
    "or choose --backend docker, whose engine gives each container its own cgroup"
)


@dataclass(frozen=True)
class Mount:
    version: int
    root: str  # the cgroup path mounted there (as /proc/self/cgroup spells paths)
    point: Path
    controllers: frozenset[str]


def _mounts(mountinfo: str) -> list[Mount]:
    found = []
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        version = 2 if tail[0] == "cgroup2" else 1
        opts = set(tail[2].split(","))
        point = Path(fields[4].replace("\\040", " "))
        controllers = frozenset(opts & set(CONTROLLERS)) if version == 1 else frozenset()
        found.append(Mount(version, fields[3], point, controllers))
    return found


def _own_paths(proc_cgroup: str) -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path."""
    paths: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for name in parts[1].split(",") if parts[1] else [""]:
            paths[name] = parts[2]
    return paths


def _directory(mount: Mount, path: str) -> Path:
    """The directory of cgroup `path` under `mount` (a container may mount a sub-tree)."""
    rel = path
    if mount.root != "/" and (path == mount.root or path.startswith(mount.root + "/")):
        rel = path[len(mount.root) :]
    return mount.point / rel.lstrip("/")


def _is_v2(directory: Path) -> bool:
    return (directory / "cgroup.controllers").exists()


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read_int(path: Path, key: str | None = None) -> int:
    """A number from a cgroup file: its whole content, or the `key value` line's value."""
    try:
        text = path.read_text()
    except OSError:
        return 0
    if key is None:
        return int(text.split()[0]) if text.split() and text.split()[0].isdigit() else 0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


@dataclass
class SandboxCgroup:
    """The cgroup (one directory per v1 hierarchy, one on v2) of one sandbox."""

    dirs: dict[str, Path]  # controller -> directory
    removed: bool = False

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in sorted(set(self.dirs.values()))]

    def join_prefix(self, shell: str) -> list[str]:
        """The command prefix that puts a process into this group and execs the rest."""
        return [shell, "-c", JOIN_SCRIPT, "evo-cgroup-join", *self.procs_files, "--"]

    def set_limits(self, memory_bytes: int, max_processes: int, cpus: int) -> None:
        """Set (or lower, for a job that asks for less) the group's limits."""
        mem, pids, cpu = (self.dirs.get(c) for c in CONTROLLERS)
        if mem is not None and memory_bytes > 0:
            if not _is_v2(mem):
                # memsw (memory + swap) may never be below memory: order the writes by
                # whether the limit goes up or down.
                files = ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
                if _read_int(mem / files[0]) < memory_bytes:
                    files.reverse()
                for name in files:
                    if (mem / name).exists():
                        _write(mem / name, str(memory_bytes))
            else:
                _write(mem / "memory.max", str(memory_bytes))
                if (mem / "memory.swap.max").exists():
                    _write(mem / "memory.swap.max", "0")
                if (mem / "memory.oom.group").exists():
                    _write(mem / "memory.oom.group", "1")  # one OOM kill takes the group
        if pids is not None and max_processes > 0:
            _write(pids / "pids.max", str(max_processes))
        if cpu is not None and cpus > 0:
            if not _is_v2(cpu):
                _write(cpu / "cpu.shares", str(V1_SHARES * cpus))
                _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(cpu / "cpu.cfs_quota_us", str(cpus * CPU_PERIOD_US))
            else:
                _write(cpu / "cpu.max", f"{cpus * CPU_PERIOD_US} {CPU_PERIOD_US}")

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of this group for going over its memory."""
        mem = self.dirs.get("memory")
        if mem is None:
            return False
        if not _is_v2(mem):
            return _read_int(mem / "memory.oom_control", "oom_kill") > 0
        return _read_int(mem / "memory.events", "oom_kill") > 0

    def peak_bytes(self) -> int:
        """The most memory the group held at once (0 where the kernel does not say)."""
        mem = self.dirs.get("memory")
        if mem is None:
            return 0
        name = "memory.peak" if _is_v2(mem) else "memory.max_usage_in_bytes"
        return _read_int(mem / name)

    def pids(self) -> set[int]:
        found: set[int] = set()
        for procs in self.procs_files:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in Path(procs).read_text().split())
        return found

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL everything in the group, including processes that left the sandbox's
        process group (setsid) or were re-parented; wait until the group is empty."""
        deadline = time.monotonic() + timeout
        kill_file = next(iter(self.dirs.values())) / "cgroup.kill"
        while pids := self.pids():
            if kill_file.exists():  # v2, Linux 5.14 and later
                with contextlib.suppress(OSError):
                    _write(kill_file, "1")
            else:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                log.warning("sandbox cgroup still holds processes %s", sorted(pids))
                return
            time.sleep(0.02)

    def remove(self) -> None:
        """Kill what is left and remove the group's directories; safe to call twice."""
        if self.removed:
            return
        self.removed = True
        self.kill()
        for d in sorted(set(self.dirs.values())):
            for attempt in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or attempt == 49:
                        log.warning("could not remove sandbox cgroup %s: %s", d, e)
                        break
                    time.sleep(0.05)


@dataclass
class Cgroups:
    """What this host lets the trainer enforce per sandbox, and where groups are made."""

    version: int  # 1 or 2 (the hierarchy the memory controller is on), 0 for none
    parents: dict[str, Path] = field(default_factory=dict)  # controller -> parent dir
    missing: dict[str, str] = field(default_factory=dict)  # controller -> why not

    @property
    def enforced(self) -> frozenset[str]:
        return frozenset(self.parents)

    def create(self, name: str) -> SandboxCgroup | None:
        """A new empty group for one sandbox, or None where no controller is writable."""
        if not self.parents:
            return None
        dirs: dict[str, Path] = {}
        made: dict[Path, Path] = {}
        try:
            for controller, parent in self.parents.items():
                if parent not in made:
                    made[parent] = parent / name
                    made[parent].mkdir()
                dirs[controller] = made[parent]
        except OSError:
            SandboxCgroup(dirs).remove()
            raise
        return SandboxCgroup(dirs)

    def warning(self) -> str:
        """A line for the log naming what is not enforced per sandbox ('' if all is)."""
        if not self.missing:
            return ""
        what = {
            "memory": "memory (shared memory, memfd and child processes included; only "
            "the per-process RLIMIT_AS holds)",
            "pids": "the process count (only the per-uid RLIMIT_NPROC holds)",
            "cpu": "the CPU share (only thread variables and RLIMIT_CPU hold)",
        }
        lacking = "; ".join(f"{what[c]}: {why}" for c, why in self.missing.items())
        return f"sandbox limits NOT enforced per sandbox by a cgroup: {lacking}. To fix: {FIX_HINT}"


def detect() -> Cgroups:
    """Find and prepare the cgroup parents this process may create sandbox groups in."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        proc_cgroup = Path("/proc/self/cgroup").read_text()
    except OSError as e:
        why = f"cannot read this process's cgroups ({e})"
        return Cgroups(0, missing=dict.fromkeys(CONTROLLERS, why))
    mounts, own = _mounts(mountinfo), _own_paths(proc_cgroup)
    found = Cgroups(0)
    versions: dict[str, int] = {}
    v2 = next((m for m in mounts if m.version == 2), None)
    for controller in CONTROLLERS:
        v1 = next((m for m in mounts if controller in m.controllers), None)
        try:
            if v1 is not None and controller in own:
                found.parents[controller] = _v1_parent(_directory(v1, own[controller]))
                versions[controller] = 1
            elif v2 is not None and "" in own:
                found.parents[controller] = _v2_parent(_directory(v2, own[""]), controller)
                versions[controller] = 2
            else:
                found.missing[controller] = "no cgroup hierarchy has this controller"
        except OSError as e:
            found.missing[controller] = f"cannot create a cgroup ({e.strerror or e})"
    found.version = versions.get("memory") or next(iter(versions.values()), 0)
    for parent in set(found.parents.values()):
        _sweep(parent)
    return found


def _sweep(parent: Path) -> None:
    """Remove the groups of trainers that died without removing them (named
    `<backend>-<trainer pid>-<n>`), killing what they still hold."""
    for group in parent.iterdir():
        name = group.name.split("-")
        if not group.is_dir() or len(name) != 3 or not name[1].isdigit():
            continue
        if not Path(f"/proc/{name[1]}").exists():
            SandboxCgroup({"any": group}).remove()


def _v1_parent(own: Path) -> Path:
    parent = own / PARENT
    parent.mkdir(exist_ok=True)
    if (parent / "cpu.shares").exists():
        # v1 weighs a group as one task against its siblings (the trainer's own threads,
        # or every task of the root group): give the sandboxes together the weight of
        # one task per CPU, as they had as plain processes.
        _write(parent / "cpu.shares", str(V1_SHARES * (os.cpu_count() or 1)))
    return parent


def _v2_parent(own: Path, controller: str) -> Path:
    """`own/evo-sandboxes`, with `controller` handed down to the groups made in it."""
    available = (own / "cgroup.controllers").read_text().split()
    if controller not in available:
        raise OSError(errno.ENOTSUP, f"the {controller} controller is not delegated to {own}")
    parent = own / PARENT
    if controller not in (own / "cgroup.subtree_control").read_text().split():
        procs = (own / "cgroup.procs").read_text().split()
        if procs and (own / "cgroup.type").exists():  # not the root cgroup
            # No internal processes: move this cgroup's processes to a leaf first.
            leaf = own / TRAINER_LEAF
            leaf.mkdir(exist_ok=True)
            for pid in procs:
                with contextlib.suppress(ProcessLookupError, OSError):
                    _write(leaf / "cgroup.procs", pid)
        _write(own / "cgroup.subtree_control", f"+{controller}")
    parent.mkdir(exist_ok=True)
    if controller not in (parent / "cgroup.subtree_control").read_text().split():
        _write(parent / "cgroup.subtree_control", f"+{controller}")
    return parent
