"""The child's side of the GPU: which memory limit it sets, where it trains, JAX's platform.

The sandbox tells the child its device through its environment (services/trainer/sandbox/
gpu.py, `child_env`); the child reads it here before any candidate code runs. A sandbox
told "cuda" that cannot reach CUDA fails the evaluation saying so: it never trains on the
CPU in silence, and results name the device the trainer gave it.
"""

import os
import resource
from typing import Any

DEVICE_ENV = "EVO_DEVICE"
MEMORY_RLIMIT_ENV = "EVO_MEMORY_RLIMIT"


def wants_cuda() -> bool:
    return os.environ.get(DEVICE_ENV, "cpu") == "cuda"


def memory_rlimit() -> int:
    """RLIMIT_AS on the CPU; RLIMIT_DATA on a GPU, where CUDA's address-space
    reservations (far beyond any sensible RLIMIT_AS) would stop it initialising."""
    if os.environ.get(MEMORY_RLIMIT_ENV) == "data":
        return resource.RLIMIT_DATA
    return resource.RLIMIT_AS


def torch_device() -> Any:
    """The torch device the child trains on: CUDA device 0 (the sandbox's only GPU) when
    the sandbox has a GPU, else the CPU. Raises RuntimeError when told CUDA and CUDA is
    not there (the child reports it as CRASHED with this message)."""
    import torch

    if not wants_cuda():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            "this sandbox was given a GPU but torch cannot use CUDA (a CPU-only torch build, "
            "or device nodes missing); the trainer image must be the CUDA one"
        )
    # Initialise CUDA here, so that a broken driver fails this stage and not training. The
    # sandbox's only GPU node is its own: nothing the candidate sets can reach another GPU.
    torch.cuda.init()
    return torch.device("cuda", 0)


def configure_jax() -> str:
    """Select JAX's platform before `import jax`: "cuda" in a GPU sandbox, else "cpu".

    Call before JAX is imported. No preallocation: JAX would otherwise take 75% of the
    GPU at start (the sandbox's environment also says so, for code that imports JAX first).
    """
    platform = "cuda" if wants_cuda() else "cpu"
    os.environ["JAX_PLATFORMS"] = platform
    if platform == "cuda":
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    return platform


def is_gpu_oom(exc: BaseException) -> bool:
    """Whether an exception is the GPU running out of memory (torch or XLA)."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return (
        "outofmemoryerror" in text
        or "cuda out of memory" in text
        or ("resource_exhausted" in text and "memory" in text)
        or "cuda_error_out_of_memory" in text
    )
