"""GPUs for sandboxed candidates, without a GPU: stand-in device nodes (/dev/null under the
names /dev/nvidiaN, nvidiactl, ...) and a stand-in driver /proc.

What runs for real: discovery and the refusals at start, the allow-list as bwrap builds it
(a real sandbox lists its /dev), the child told "cuda" refusing to train on the CPU, the
slot assignment, the memory limit's kind, and Capacity naming the device.
"""

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from evo.v1 import common_pb2 as common
from evo.v1 import trainer_pb2 as pb

from services.trainer import gpu_child, server
from services.trainer.sandbox import gpu as gpus
from services.trainer.sandbox.gpu import Gpu, GpuConfig, GpuUnavailable

ROOT = Path(__file__).resolve().parent.parent
EVO = str(Path(sys.executable).parent / "evo")
NODES = ["nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"]


def stand_in_dev(root: Path, nodes: list[str] = NODES, caps: list[str] = ()) -> Path:
    """A /dev whose NVIDIA nodes are /dev/null (a character device) under their names."""
    dev = root / "dev"
    dev.mkdir()
    for name in nodes:
        (dev / name).symlink_to("/dev/null")
    (dev / "dri").mkdir()
    (dev / "dri" / "renderD128").symlink_to("/dev/null")
    (dev / "nvidia-notanode").write_text("")  # a plain file: never a GPU
    if caps:
        (dev / "nvidia-caps").mkdir()
        for name in caps:
            (dev / "nvidia-caps" / name).symlink_to("/dev/null")
    return dev


def stand_in_proc(root: Path, gpus_by_minor: dict[int, str]) -> Path:
    proc = root / "proc-driver-nvidia"
    for minor, model in gpus_by_minor.items():
        info = proc / "gpus" / f"0000:{minor:02x}:00.0"
        info.mkdir(parents=True)
        (info / "information").write_text(
            f"Model: \t\t {model}\nIRQ:   \t\t 42\nGPU UUID: \t GPU-{minor:04d}-stand-in\n"
            f"Bus Location: \t 0000:{minor:02x}:00.0\nDevice Minor: \t {minor}\n"
        )
    return proc


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process sees two stand-in GPUs (minors 0 and 1) as if they were the real ones."""
    dev = stand_in_dev(tmp_path)
    proc = stand_in_proc(tmp_path, {0: "Stand-in A100", 1: "Stand-in H200"})
    monkeypatch.setattr(gpus, "DEV", dev)
    monkeypatch.setattr(gpus, "PROC_DRIVER", proc)
    monkeypatch.delenv("NVIDIA_VISIBLE_DEVICES", raising=False)
    return dev


# ----------------------------------------------------------------- discovery and refusals


def test_discovery_finds_the_gpu_nodes_and_names_them(machine: Path) -> None:
    found = gpus.discover()
    assert found == [
        Gpu(0, "Stand-in A100", "GPU-0000-stand-in"),
        Gpu(1, "Stand-in H200", "GPU-0001-stand-in"),
    ]
    assert found[1].device == "cuda:1"
    assert found[1].describe() == "cuda:1 (Stand-in H200)"


def test_selection_takes_what_was_asked(machine: Path) -> None:
    assert [g.minor for g in gpus.select(GpuConfig("all"))] == [0, 1]
    assert [g.minor for g in gpus.select(GpuConfig("1"))] == [1]
    assert [g.minor for g in gpus.select(GpuConfig("1,0,1"))] == [1, 0]
    assert gpus.select(GpuConfig("none")) == []


def test_a_gpu_asked_for_and_missing_is_refused_naming_what_there_is(machine: Path) -> None:
    with pytest.raises(GpuUnavailable, match=r"asked for GPU 3 .* has .*nvidia0, .*nvidia1"):
        gpus.select(GpuConfig("0,3"))


def test_no_gpu_at_all_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "dev"
    empty.mkdir()
    with pytest.raises(GpuUnavailable, match=r"no .*nvidiaN device node is visible"):
        gpus.select(GpuConfig("all"), dev=empty, proc=tmp_path)


def test_missing_control_nodes_are_refused(tmp_path: Path) -> None:
    dev = stand_in_dev(tmp_path, ["nvidia0", "nvidiactl"])
    with pytest.raises(GpuUnavailable, match="nvidia-uvm missing"):
        gpus.select(GpuConfig("0"), dev=dev, proc=tmp_path)


def test_more_than_one_mig_slice_per_trainer_is_refused(machine: Path) -> None:
    two = {"NVIDIA_VISIBLE_DEVICES": "MIG-aaaa,MIG-bbbb"}
    with pytest.raises(GpuUnavailable, match="one trainer per slice"):
        gpus.select(GpuConfig("all"), environ=two)
    assert gpus.select(GpuConfig("0"), environ={"NVIDIA_VISIBLE_DEVICES": "MIG-aaaa"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"slots_per_gpu": 2}, "only one candidate per GPU"),
        ({"sharing": "mps"}, "unknown GPU sharing mode"),
        ({"gpus": "0;1"}, "--gpus takes"),
    ],
)
def test_unsafe_or_wrong_gpu_configs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GpuConfig(**kwargs)


def test_the_trainer_refuses_to_start_without_its_gpu(tmp_path: Path) -> None:
    """No silent CPU fallback: this machine has no GPU, so `--gpus 0` stops the trainer."""
    if list(Path("/dev").glob("nvidia[0-9]*")):
        pytest.skip("this machine has a GPU; the refusal is covered by the stand-in tests")
    done = subprocess.run(
        [EVO, "serve", "trainer", "--port", "0", "--gpus", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EVO_HOME": str(tmp_path)},
    )
    assert done.returncode == 1
    assert "asked for GPU 0 (--gpus 0) but this machine has no /dev/nvidiaN" in done.stderr
    assert "--gpus none for the CPU" in done.stderr


# ----------------------------------------------------------------- the allow-list


def test_the_allow_list_is_the_gpu_its_control_nodes_and_its_mig_caps(tmp_path: Path) -> None:
    dev = stand_in_dev(tmp_path, caps=["nvidia-cap21", "nvidia-cap22"])
    allowed = [p.relative_to(dev).as_posix() for p in gpus.allowed_nodes(Gpu(1), dev)]
    assert allowed == [
        "nvidia1",
        "nvidiactl",
        "nvidia-uvm",
        "nvidia-caps/nvidia-cap21",
        "nvidia-caps/nvidia-cap22",
    ]
    args = gpus.bwrap_args(Gpu(1), dev)
    assert args[:7] == [
        "--perms", "0755", "--dir", "/dev/nvidia-caps",
        "--dev-bind", str(dev / "nvidia1"), "/dev/nvidia1",
    ]  # fmt: skip
    assert "/dev/nvidia-caps/nvidia-cap21" in args
    for never in ("nvidia0", "nvidia-uvm-tools", "nvidia-modeset", "dri", "renderD128", "/sys"):
        assert not any(a.endswith(never) for a in args), never


def test_mig_management_capabilities_are_never_bound(tmp_path: Path) -> None:
    caps = ["nvidia-cap1", "nvidia-cap2", "nvidia-cap21", "nvidia-cap22"]
    dev = stand_in_dev(tmp_path, caps=caps)
    table = tmp_path / "mig-minors"
    table.write_text("config 1\nmonitor 2\ngpu0/gi1/access 21\ngpu0/gi1/ci0/access 22\n")
    allowed = {p.name for p in gpus.allowed_nodes(Gpu(1), dev, table)}
    assert {"nvidia-cap21", "nvidia-cap22"} <= allowed
    assert not {"nvidia-cap1", "nvidia-cap2"} & allowed
    # Without the driver's table, the minors the driver always gives them.
    missing = tmp_path / "no-such-table"
    assert not {"nvidia-cap1", "nvidia-cap2"} & {
        p.name for p in gpus.allowed_nodes(Gpu(1), dev, missing)
    }


def test_child_env_memory_limit_and_docker_requests() -> None:
    assert gpus.child_env(None) == {"EVO_DEVICE": "cpu"}
    env = gpus.child_env(Gpu(0))
    assert env["EVO_DEVICE"] == "cuda" and env["EVO_MEMORY_RLIMIT"] == "data"
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert gpus.memory_rlimit_flag(None) == "--as"
    assert gpus.memory_rlimit_flag(Gpu(0)) == "--data"
    assert gpus.docker_device_requests(None) == []
    (request,) = gpus.docker_device_requests(Gpu(3))  # no UUID known: the index
    assert request["DeviceIDs"] == ["3"] and request["Count"] == 0


def test_one_spec_renders_a_slots_gpu_for_every_backend(tmp_path: Path) -> None:
    """template.py's SandboxSpec with a GPU: its device and environment, RLIMIT_DATA where
    an rlimit bounds memory, the docker device request for that GPU's UUID only (never
    count=-1), and bwrap's /dev binds and minimal /proc."""
    from services.trainer.sandbox.base import Limits
    from services.trainer.sandbox.template import SandboxSpec, bwrap_argv, docker_options

    gpu = Gpu(1, "stand-in", "GPU-1234")
    plain = SandboxSpec(python=sys.executable, limits=Limits(), uid=61000)
    on_gpu = SandboxSpec(python=sys.executable, limits=Limits(), uid=61000, gpu=gpu)
    assert plain.device == "cpu" and on_gpu.device == "cuda:1"
    assert plain.env["EVO_DEVICE"] == "cpu" and on_gpu.env["EVO_DEVICE"] == "cuda"
    assert "as" in plain.rlimits() and "data" not in plain.rlimits()
    assert "data" in on_gpu.rlimits() and "as" not in on_gpu.rlimits()
    by_cgroup = SandboxSpec(
        python="python3", limits=Limits(), uid=61000, gpu=gpu, memory_by_cgroup=True
    )
    assert not {"as", "data"} & set(by_cgroup.rlimits())  # the cgroup bounds memory there
    create, host = docker_options(by_cgroup, "{}")
    (request,) = host["device_requests"]
    assert request["DeviceIDs"] == ["GPU-1234"] and request["Count"] == 0
    assert create["environment"]["EVO_DEVICE"] == "cuda"
    assert "device_requests" not in docker_options(plain, "{}")[1]
    with pytest.raises(ValueError, match="/proc mode"):
        SandboxSpec(python="python3", limits=Limits(), proc="host")

    dev = stand_in_dev(tmp_path)
    minimal = SandboxSpec(python=sys.executable, limits=Limits(), gpu=gpu, proc="minimal")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gpus, "DEV", dev)
        argv = bwrap_argv(minimal, "bwrap", 3, None)
    binds = {argv[i + 2] for i, a in enumerate(argv) if a == "--dev-bind"}
    assert binds == {"/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-uvm"}
    assert argv.index("--dev") < argv.index("--dev-bind")  # after the fresh /dev
    assert "--proc" not in argv and argv[argv.index("/proc") - 1] == "--tmpfs"


def test_the_child_bounds_its_memory_by_the_kind_it_is_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EVO_MEMORY_RLIMIT", raising=False)
    assert gpu_child.memory_rlimit() == resource.RLIMIT_AS
    monkeypatch.setenv("EVO_MEMORY_RLIMIT", "data")
    assert gpu_child.memory_rlimit() == resource.RLIMIT_DATA


def test_the_child_selects_jax_platform_and_recognises_gpu_oom(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EVO_DEVICE", "cuda")
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    assert gpu_child.configure_jax() == "cuda"
    assert os.environ["JAX_PLATFORMS"] == "cuda"
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    monkeypatch.setenv("EVO_DEVICE", "cpu")
    assert gpu_child.configure_jax() == "cpu"
    import torch

    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert gpu_child.is_gpu_oom(oom)
    assert gpu_child.is_gpu_oom(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying"))
    assert not gpu_child.is_gpu_oom(ValueError("shapes do not match"))


def test_minimal_proc_shows_no_process(tmp_path: Path) -> None:
    assert gpus.proc_args("fresh") == ["--proc", "/proc"]
    args = gpus.proc_args("minimal")
    assert args[:2] == ["--tmpfs", "/proc"]
    assert "--proc" not in args
    bound = args[3::3]
    assert set(bound) <= set(gpus.MINIMAL_PROC_FILES) and "/proc/cpuinfo" in bound
    with pytest.raises(ValueError, match="unknown sandbox /proc mode"):
        gpus.proc_args("host")


# ----------------------------------------------------------------- slots


def test_slots_go_to_the_least_busy_gpu_and_never_past_its_places() -> None:
    assigner = gpus.SlotAssigner([Gpu(0), Gpu(1)], per_gpu=1)
    assert assigner.slots == 2
    a, b = assigner.take(), assigner.take()
    assert {a.minor, b.minor} == {0, 1}
    with pytest.raises(RuntimeError, match="no GPU has a free slot"):
        assigner.take()
    assigner.give_back(a)
    assert assigner.take() == a


# ----------------------------------------------------------------- a real sandbox


PROBE = """
import json, os, sys
print("PROBE " + json.dumps({
    "dev": sorted(os.listdir("/dev")),
    "caps": sorted(os.listdir("/dev/nvidia-caps")) if os.path.isdir("/dev/nvidia-caps") else [],
    "proc": sorted(os.listdir("/proc")),
    "sys": os.path.exists("/sys/bus"),
    "device": os.environ.get("EVO_DEVICE"),
}), file=sys.stderr)
import torch.nn as nn
class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(40, 10)
    def forward(self, x):
        return self.fc(x.flatten(1))
"""


@pytest.mark.parametrize("proc", ["fresh", "minimal"])
def test_a_gpu_sandbox_sees_its_gpu_only_and_never_trains_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proc: str
) -> None:
    """bwrap builds the sandbox's /dev from the allow-list (stand-ins for the nodes); the
    child, told "cuda" and finding no CUDA, fails the evaluation instead of using the CPU."""
    dev = stand_in_dev(tmp_path, caps=["nvidia-cap21"])
    monkeypatch.setattr(gpus, "DEV", dev)
    monkeypatch.setattr(gpus, "PROC_DRIVER", stand_in_proc(tmp_path, {1: "Stand-in H200"}))
    config = server.TrainerConfig(
        backend="bwrap", warm=0, max_queue=0, slots=0, gpu=GpuConfig("1"), sandbox_proc=proc
    )
    trainer = server.Trainer(config)
    try:
        assert trainer.slots == 1
        capacity = trainer.capacity()
        assert list(capacity.devices) == ["cuda:1 (Stand-in H200)"]
        result = trainer.evaluate(
            pb.EvaluateRequest(
                program=pb.Program(code=PROBE), task="mnist1d", budget=pb.Budget(steps=20)
            )
        )
    finally:
        trainer.close()
    assert result.sandbox.device == "cuda:1"
    assert result.status == common.EVAL_STATUS_CRASHED, result.message
    assert "torch cannot use CUDA" in result.message
    line = next(x for x in result.log_tail.splitlines() if x.startswith("PROBE "))
    import json

    seen = json.loads(line.removeprefix("PROBE "))
    assert seen["device"] == "cuda"
    nvidia = sorted(n for n in seen["dev"] if n.startswith("nvidia"))
    assert nvidia == ["nvidia-caps", "nvidia-uvm", "nvidia1", "nvidiactl"]
    assert "dri" not in seen["dev"] and seen["caps"] == ["nvidia-cap21"]
    assert not seen["sys"], "no /sys in the sandbox"
    if proc == "minimal":
        assert not any(p.isdigit() for p in seen["proc"]), "a minimal /proc shows no process"
