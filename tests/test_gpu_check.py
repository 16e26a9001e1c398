"""The GPU check's logic, without a GPU: its exit code where there is none, its judgement of
what a sandbox sees, and a whole run against stand-in device nodes (/dev/null as
/dev/nvidia0), where the node allow-list passes and everything that needs CUDA fails."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.trainer import gpu_check
from services.trainer.sandbox import gpu as gpus
from services.trainer.sandbox.gpu import Gpu
from tests.test_gpu import stand_in_dev, stand_in_proc

EVO = str(Path(sys.executable).parent / "evo")


def test_no_gpu_says_so_and_exits_77(tmp_path: Path) -> None:
    if list(Path("/dev").glob("nvidia[0-9]*")):
        pytest.skip("this machine has a GPU")
    done = subprocess.run(
        [EVO, "sandbox", "gpu-check", "--quick"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EVO_HOME": str(tmp_path)},
    )
    assert done.returncode == gpu_check.EXIT_NO_GPU == 77
    assert done.stdout.startswith("NO GPU") and "nothing checked" in done.stdout


def test_every_probe_is_a_valid_candidate() -> None:
    bodies = [gpu_check.DEVICES_PROBE, gpu_check.TORCH_PROBE, gpu_check.JAX_PROBE]
    bodies += [gpu_check.HOST_MEMORY_PROBE, gpu_check.GPU_HOG_PROBE]
    for body in bodies:
        compile(gpu_check.probe_code(body, gpu_check.CUDA_MODEL, gpu_check.GPU_HOG), "p", "exec")
    assert "GPUCHECK-DEVICE" in gpu_check.CUDA_MODEL, "the CNN's forward reports its device"
    log = 'noise\nGPUCHECK {"dev": ["null"]}\nmore'
    assert gpu_check.parse_seen(log) == {"dev": ["null"]}
    assert gpu_check.parse_seen("GPUCHECK {broken") == {}


def test_the_device_node_judgement(tmp_path: Path) -> None:
    dev = stand_in_dev(tmp_path, caps=["nvidia-cap21"])
    gpu = Gpu(1)
    exact = {"dev": ["null", "nvidia-caps", "nvidia-uvm", "nvidia1", "nvidiactl"],
             "caps": ["nvidia-cap21"], "sys": False}  # fmt: skip
    assert gpu_check.judge_device_nodes(exact, gpu, dev).ok
    other_gpu = {**exact, "dev": [*exact["dev"], "nvidia0"]}
    check = gpu_check.judge_device_nodes(other_gpu, gpu, dev)
    assert not check.ok and "beyond the allow-list: nvidia0" in check.detail
    tools = {**exact, "dev": [*exact["dev"], "nvidia-uvm-tools", "dri"]}
    check = gpu_check.judge_device_nodes(tools, gpu, dev)
    assert not check.ok and "nvidia-uvm-tools" in check.detail and "dri" in check.detail
    other_cap = {**exact, "caps": ["nvidia-cap21", "nvidia-cap99"]}
    assert "nvidia-cap99" in gpu_check.judge_device_nodes(other_cap, gpu, dev).detail
    with_sys = {**exact, "sys": True}
    assert "/sys is visible" in gpu_check.judge_device_nodes(with_sys, gpu, dev).detail
    missing = {**exact, "dev": ["null", "nvidia1"]}
    assert (
        "missing: nvidia-uvm, nvidiactl" in gpu_check.judge_device_nodes(missing, gpu, dev).detail
    )
    assert not gpu_check.judge_device_nodes({}, gpu, dev).ok


def test_a_run_on_stand_in_nodes_passes_the_allow_list_and_fails_without_cuda(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gpus, "DEV", stand_in_dev(tmp_path))
    monkeypatch.setattr(gpus, "PROC_DRIVER", stand_in_proc(tmp_path, {0: "Stand-in", 1: "B"}))
    monkeypatch.delenv("NVIDIA_VISIBLE_DEVICES", raising=False)
    lines: list[str] = []
    config = gpu_check.CheckConfig(gpu="0", quick=True, parallel=2, memory_mb=2048)
    code = gpu_check.run_checks(config, lines.append)
    assert code == gpu_check.EXIT_FAIL
    assert lines[0] == "GPU     cuda:0 (Stand-in), bwrap sandbox, /proc fresh"
    by_name = {line.split()[1]: line for line in lines[1:]}
    assert list(by_name) == [
        "torch-cuda", "jax-cuda", "device-nodes", "host-memory", "gpu-memory-cap", "parallel",
    ]  # fmt: skip
    assert by_name["device-nodes"].startswith("PASS"), by_name["device-nodes"]
    assert "nvidia-uvm, nvidia0, nvidiactl only" in by_name["device-nodes"]
    assert by_name["torch-cuda"].startswith("FAIL")
    assert "CRASHED" in by_name["torch-cuda"] and "torch cannot use CUDA" in by_name["torch-cuda"]
    assert by_name["gpu-memory-cap"].startswith("FAIL")
    assert by_name["parallel"].startswith("FAIL") and "CRASHED, CRASHED" in by_name["parallel"]
    assert "2x plain refused" in by_name["host-memory"], "RLIMIT_DATA holds on the GPU path"
