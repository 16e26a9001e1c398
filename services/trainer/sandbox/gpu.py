"""GPUs for sandboxed candidates: which device nodes a sandbox sees, which GPU each slot
gets, and what the child is told.

A candidate reaches a GPU through device nodes only: its GPU's own /dev/nvidiaN, the
control node /dev/nvidiactl and /dev/nvidia-uvm (CUDA's unified memory), plus, on a MIG
slice, the capability nodes the container runtime gave the pod. Nothing else: never
/dev/nvidia-uvm-tools (profiling counters of every process on the GPU), nvidia-modeset
(display), /dev/dri (render nodes) or /sys. The driver's user-space libraries are the
ones the NVIDIA container runtime put under /usr, which every sandbox binds read-only.

The memory limit changes with a GPU: CUDA reserves far more address space than any
RLIMIT_AS a candidate could be given (it cannot even initialise under 4 GiB), so a GPU
sandbox is bounded by RLIMIT_DATA (private writable memory: what malloc, numpy and
torch's CPU tensors use) and, where the backend has one, the memory cgroup, which also
counts pinned host memory that the driver maps on the candidate's behalf.

Sharing: one candidate per GPU at a time ("exclusive", the default) is the only bound
on GPU memory that the candidate's own code cannot lift on a plain GPU. Several small
candidates per GPU are run safely as MIG slices, one slice per trainer pod (k8s/README.md,
"Several candidates per GPU"); README.md explains why MPS and time-slicing are not
offered.
"""

import os
import re
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What the child reads before any candidate code runs.
from services.trainer.gpu_child import DEVICE_ENV, MEMORY_RLIMIT_ENV

DEV = Path("/dev")
PROC_DRIVER = Path("/proc/driver/nvidia")
# Every CUDA process needs these besides its own GPU's node.
SHARED_NODES = ("nvidiactl", "nvidia-uvm")
# Present on GPU machines and never given to a candidate (see the module docstring).
FORBIDDEN_NODES = ("nvidia-uvm-tools", "nvidia-modeset", "dri")
CAPS_DIR = "nvidia-caps"
# The driver's table of MIG capability minors: "config 1", "monitor 2", "gpu0/gi1/access 12"...
MIG_MINORS = Path("/proc/driver/nvidia-caps/mig-minors")
# MIG management capabilities (repartition the GPU, watch every slice): never a candidate's.
PRIVILEGED_CAPS = ("config", "monitor")
_GPU_NODE = re.compile(r"nvidia(\d+)")
SHARING_MODES = ("exclusive",)


NO_GPU_FIX = (
    "run the trainer on a GPU node with the NVIDIA container runtime (Kubernetes: a "
    "nvidia.com/gpu limit and runtimeClassName), or use --gpus none for the CPU"
)


class GpuUnavailable(RuntimeError):
    """The trainer was asked for a GPU this machine does not give it; it must not start."""


@dataclass(frozen=True)
class Gpu:
    """One GPU as this machine (or pod) sees it: /dev/nvidia<minor>."""

    minor: int
    model: str = ""
    uuid: str = ""

    @property
    def device(self) -> str:
        """The name results and Capacity carry, e.g. "cuda:0"."""
        return f"cuda:{self.minor}"

    def describe(self) -> str:
        return f"{self.device} ({self.model})" if self.model else self.device


@dataclass(frozen=True)
class GpuConfig:
    """Which GPUs a trainer uses and how many candidates share each.

    `gpus`: "none" (CPU only), "all" (every /dev/nvidiaN present) or a comma list of
    minor numbers ("0,2"). `slots_per_gpu` must be 1 in "exclusive" mode.
    """

    gpus: str = "none"
    slots_per_gpu: int = 1
    sharing: str = "exclusive"

    def __post_init__(self) -> None:
        if self.sharing not in SHARING_MODES:
            raise ValueError(
                f"unknown GPU sharing mode {self.sharing!r}; choose one of {SHARING_MODES} "
                "(several candidates per GPU: one MIG slice per trainer, see README.md)"
            )
        if self.slots_per_gpu != 1:
            raise ValueError(
                "--slots-per-gpu must be 1: only one candidate per GPU keeps each "
                "candidate's GPU memory bounded; for several per GPU give each trainer a "
                "MIG slice (README.md, 'Several candidates per GPU')"
            )
        if self.gpus not in ("none", "all") and not re.fullmatch(r"\d+(,\d+)*", self.gpus):
            raise ValueError(f"--gpus takes none, all or minor numbers like 0,2; not {self.gpus!r}")

    @property
    def enabled(self) -> bool:
        return self.gpus != "none"


def _is_char_device(path: Path) -> bool:
    try:
        return stat.S_ISCHR(path.stat().st_mode)
    except OSError:
        return False


def read_driver_info(proc: Path | None = None) -> dict[int, dict[str, str]]:
    """Model and UUID by minor number, from the driver's /proc/driver/nvidia/gpus/*/information."""
    proc = proc or PROC_DRIVER
    found: dict[int, dict[str, str]] = {}
    gpus = proc / "gpus"
    if not gpus.is_dir():
        return found
    for info in sorted(gpus.glob("*/information")):
        fields: dict[str, str] = {}
        try:
            text = info.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        try:
            minor = int(fields.get("Device Minor", ""))
        except ValueError:
            continue
        found[minor] = {"model": fields.get("Model", ""), "uuid": fields.get("GPU UUID", "")}
    return found


def discover(dev: Path | None = None, proc: Path | None = None) -> list[Gpu]:
    """Every GPU whose device node this process can see, by minor number."""
    dev = dev or DEV
    info = read_driver_info(proc)
    gpus = []
    for entry in sorted(dev.glob("nvidia*")):
        match = _GPU_NODE.fullmatch(entry.name)
        if match and _is_char_device(entry):
            minor = int(match.group(1))
            details = info.get(minor, {})
            gpus.append(Gpu(minor, details.get("model", ""), details.get("uuid", "")))
    return gpus


def select(
    config: GpuConfig,
    dev: Path | None = None,
    proc: Path | None = None,
    environ: dict[str, str] | None = None,
) -> list[Gpu]:
    """The GPUs the trainer will use; GpuUnavailable (naming the fix) when asked for one
    it does not have. Never falls back to the CPU."""
    if not config.enabled:
        return []
    dev = dev or DEV
    found = discover(dev, proc)
    have = {g.minor: g for g in found}
    seen = ", ".join(f"{dev}/nvidia{m}" for m in have) or "none"
    if config.gpus == "all":
        chosen = found
        if not chosen:
            raise GpuUnavailable(
                f"asked for GPUs (--gpus all) but no {dev}/nvidiaN device node is visible: "
                + NO_GPU_FIX
            )
    else:
        wanted = [int(m) for m in config.gpus.split(",")]
        missing = [m for m in wanted if m not in have]
        if missing:
            fix = "choose from those, or --gpus all" if have else NO_GPU_FIX
            raise GpuUnavailable(
                f"asked for GPU {','.join(map(str, missing))} (--gpus {config.gpus}) but this "
                f"machine has {seen if have else f'no {dev}/nvidiaN device node'}: {fix}"
            )
        chosen = [have[m] for m in dict.fromkeys(wanted)]
    absent = [n for n in SHARED_NODES if not _is_char_device(dev / n)]
    if absent:
        raise GpuUnavailable(
            f"GPU device node(s) {', '.join(f'{dev}/{n}' for n in absent)} missing: CUDA "
            "cannot start without them. Load the driver's modules on the node (nvidia-modprobe "
            "-u -c=0) or let the NVIDIA container runtime create them"
        )
    mig = mig_devices(environ)
    if len(mig) > 1:
        raise GpuUnavailable(
            f"this trainer holds {len(mig)} MIG slices ({', '.join(mig)}); a sandbox could "
            "reach every slice whose capability node it sees, so run one trainer per slice "
            "(Kubernetes: a nvidia.com/mig-* limit of 1)"
        )
    return chosen


def mig_devices(environ: dict[str, str] | None = None) -> list[str]:
    """The MIG slices the NVIDIA device plugin gave this container (NVIDIA_VISIBLE_DEVICES)."""
    env = os.environ if environ is None else environ
    visible = env.get("NVIDIA_VISIBLE_DEVICES", "")
    return [d for d in visible.split(",") if d.strip().startswith("MIG-")]


def privileged_cap_minors(table: Path | None = None) -> set[int]:
    """Minors of the MIG config and monitor capabilities (1 and 2 where the table is absent)."""
    try:
        lines = (table or MIG_MINORS).read_text().splitlines()
    except OSError:
        return {1, 2}
    found = set()
    for line in lines:
        name, _, minor = line.strip().rpartition(" ")
        if name in PRIVILEGED_CAPS and minor.isdigit():
            found.add(int(minor))
    return found or {1, 2}


def allowed_nodes(gpu: Gpu, dev: Path | None = None, mig_minors: Path | None = None) -> list[Path]:
    """The device nodes a sandbox on `gpu` gets: its own node, the shared ones, and the
    MIG slice access nodes this container holds (only its own slice's, see `select`), never
    the MIG config or monitor capabilities."""
    dev = dev or DEV
    nodes = [dev / f"nvidia{gpu.minor}", *(dev / n for n in SHARED_NODES)]
    caps = dev / CAPS_DIR
    if caps.is_dir():
        never = {f"nvidia-cap{m}" for m in privileged_cap_minors(mig_minors)}
        nodes += sorted(p for p in caps.iterdir() if _is_char_device(p) and p.name not in never)
    for node in nodes:
        assert node.name not in FORBIDDEN_NODES, node  # the allow-list's own invariant
    return [n for n in nodes if _is_char_device(n)]


def bwrap_args(gpu: Gpu, dev: Path | None = None) -> list[str]:
    """bwrap arguments that put `gpu`'s allowed nodes into the sandbox's fresh /dev, at
    the same paths (CUDA looks for /dev/nvidia*)."""
    dev = dev or DEV
    args: list[str] = []
    nodes = allowed_nodes(gpu, dev)
    if any(n.parent != dev for n in nodes):
        # Directories bwrap makes on its own are private (0700) to the sandbox's uid.
        args += ["--perms", "0755", "--dir", f"/dev/{CAPS_DIR}"]
    for node in nodes:
        inside = Path("/dev") / node.relative_to(dev)
        args += ["--dev-bind", str(node), str(inside)]
    return args


PROC_MODES = ("fresh", "minimal")
# What a "minimal" /proc shows: the driver's GPU information and the machine's CPU and
# memory figures (read by torch, XLA and numpy); no process of anyone's.
MINIMAL_PROC_FILES = ("/proc/driver/nvidia", "/proc/cpuinfo", "/proc/meminfo", "/proc/stat")


def proc_args(mode: str, proc_root: Path = Path("/proc")) -> list[str]:
    """bwrap's /proc: "fresh" mounts a procfs of the sandbox's own PID namespace (needs a
    container whose /proc is unmasked: procMount Unmasked, hence hostUsers: false);
    "minimal" is a tmpfs with MINIMAL_PROC_FILES bound read-only, for GPU pods, which cannot
    run in their own user namespace (NVIDIA/nvidia-container-toolkit#648) and so cannot
    mount a procfs at all. Neither shows the sandbox anything outside itself."""
    if mode == "fresh":
        return ["--proc", "/proc"]
    if mode != "minimal":
        raise ValueError(f"unknown sandbox /proc mode {mode!r}; choose one of {PROC_MODES}")
    args = ["--tmpfs", "/proc"]
    for path in MINIMAL_PROC_FILES:
        source = proc_root / Path(path).relative_to("/proc")
        if source.exists():
            args += ["--ro-bind", str(source), path]
    return args


def child_env(gpu: Gpu | None) -> dict[str, str]:
    """What the child is told about its device; added to the sandbox's whole environment.

    Inside the sandbox the one GPU it sees is CUDA device 0 whatever its minor number.
    """
    if gpu is None:
        return {DEVICE_ENV: "cpu"}
    return {
        DEVICE_ENV: "cuda",
        MEMORY_RLIMIT_ENV: "data",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        # The CUDA kernel cache in the sandbox's own /tmp, gone with it.
        "CUDA_CACHE_PATH": "/tmp/.nv",
        # JAX (CLRS): allocate as needed instead of 75% of the GPU at start.
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    }


def memory_rlimit_flag(gpu: Gpu | None) -> str:
    """The prlimit option bounding a sandbox's memory (see the module docstring)."""
    return "--as" if gpu is None else "--data"


def docker_device_requests(gpu: Gpu | None) -> list[Any]:
    """The docker backend's device requests: this slot's GPU only (never count=-1)."""
    if gpu is None:
        return []
    import docker.types

    return [
        docker.types.DeviceRequest(device_ids=[gpu.uuid or str(gpu.minor)], capabilities=[["gpu"]])
    ]


@dataclass
class SlotAssigner:
    """Hands each evaluation a GPU with a free place, the least busy first.

    The trainer's slot semaphore bounds evaluations to `len(gpus) * per_gpu`, so a GPU
    with a free place always exists when `take` is called.
    """

    gpus: Sequence[Gpu]
    per_gpu: int = 1
    _busy: dict[int, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._busy = {g.minor: 0 for g in self.gpus}

    @property
    def slots(self) -> int:
        return len(self.gpus) * self.per_gpu

    def take(self) -> Gpu:
        with self._lock:
            free = [g for g in self.gpus if self._busy[g.minor] < self.per_gpu]
            if not free:
                raise RuntimeError("no GPU has a free slot (more evaluations than slots)")
            gpu = min(free, key=lambda g: self._busy[g.minor])
            self._busy[gpu.minor] += 1
            return gpu

    def give_back(self, gpu: Gpu) -> None:
        with self._lock:
            self._busy[gpu.minor] -= 1

    def busy(self) -> dict[int, int]:
        with self._lock:
            return dict(self._busy)
