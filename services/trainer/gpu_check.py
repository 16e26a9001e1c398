"""`make gpu-check` (`evo sandbox gpu-check`): does the sandbox work on this machine's GPU?

Run on a GPU machine, in the CUDA trainer image or with the trainer pod's settings. Every
check goes through the real path (a Trainer, its bwrap sandboxes, their seccomp filter and
memory limit) with probe candidates that report what they see on stderr, and prints one
PASS or FAIL line each:

  torch-cuda        the reference CNN trains on CUDA in the sandbox; results name the GPU
  jax-cuda          JAX in the sandbox finds the GPU, without preallocating it
  device-nodes      the sandbox sees its allow-list of NVIDIA nodes and nothing more, no /sys
  host-memory       host memory is still capped: a big allocation and a big pinned one fail
  gpu-memory-cap    a candidate that lifts torch's memory fraction and allocates without end
                    is OOM, the trainer lives, and the next candidate on that GPU runs normally
  parallel          N sandboxes at once on one GPU all finish
  throughput        evaluations per minute of the reference CNN at --steps (8,000: the paper's)
                    in sandboxes, against the bare training loop on the same GPU

Exit status: 0 all passed, 1 some failed, 77 no GPU here (nothing was checked; the message
says what was looked for). 77 is the "skipped" code of automake and many test harnesses.
"""

import contextlib
import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXIT_PASS, EXIT_FAIL, EXIT_NO_GPU = 0, 1, 77
MARK = "GPUCHECK "
GIB = 1024**3
# The paper's search: 1,600 children in an hour on one node is 26.7 evaluations a minute.
PAPER_EVALUATIONS_PER_MINUTE = 1600 / 60


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name:<15} {self.detail}"


@dataclass(frozen=True)
class CheckConfig:
    """What the check runs: its GPU, sandbox settings and how much it measures."""

    gpu: str = "all"
    backend: str = "bwrap"
    sandbox_proc: str = "fresh"
    memory_mb: int = 4096
    steps: int = 8000
    evaluations: int = 4
    parallel: int = 4
    quick: bool = False  # skip the throughput measurement (minutes at 8,000 steps)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.evaluations < 1 or self.parallel < 1 or self.memory_mb < 256:
            raise ValueError("steps, evaluations and parallel must be >= 1, memory >= 256 MB")


@dataclass
class Outcome:
    """One probe evaluation: its response and what the probe printed after MARK."""

    response: Any
    seen: dict[str, Any] = field(default_factory=dict)


def probe_code(body: str, model: str = "", after: str = "") -> str:
    """A candidate whose module-level `body` fills `seen` and prints it, then runs `after`
    (unguarded: what it raises fails the evaluation as the child judges it), then a model."""
    indented = "\n".join("    " + line for line in body.strip().splitlines())
    return (
        "import json, os, sys\nseen = {}\ntry:\n"
        f"{indented}\n"
        "except BaseException as e:\n"
        "    seen['error'] = f'{type(e).__name__}: {e}'[:300]\n"
        f"print({MARK!r} + json.dumps(seen), file=sys.stderr, flush=True)\n"
        f"{after.strip()}\n"
        f"{model or CNN}"
    )


CNN = (Path(__file__).parent / "tasks/seeds/mnist1d/cnn.py").read_text()

DEVICES_PROBE = """
seen['dev'] = sorted(os.listdir('/dev'))
seen['caps'] = sorted(os.listdir('/dev/nvidia-caps')) if os.path.isdir('/dev/nvidia-caps') else []
seen['sys'] = os.path.exists('/sys/bus')
seen['device_env'] = os.environ.get('EVO_DEVICE')
"""
TORCH_PROBE = """
import torch
seen['cuda'] = torch.cuda.is_available()
seen['name'] = torch.cuda.get_device_name(0) if seen['cuda'] else ''
"""
JAX_PROBE = """
import jax
seen['platforms'] = sorted({d.platform for d in jax.devices()})
import jax.numpy as jnp
seen['sum'] = float(jnp.ones(1000).sum())
seen['preallocate'] = os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE')
"""
HOST_MEMORY_PROBE = """
limit = int(os.environ.get('EVO_CHECK_LIMIT', '0'))
try:
    block = bytearray(2 * limit)
    seen['plain'] = 'allocated'
    del block
except MemoryError:
    seen['plain'] = 'refused'
import torch
try:
    pinned = torch.empty(int(1.5 * limit), dtype=torch.uint8, pin_memory=True)
    pinned.fill_(1)
    seen['pinned'] = 'allocated'
    del pinned
except BaseException as e:
    seen['pinned'] = 'refused: ' + type(e).__name__
"""
GPU_HOG_PROBE = """
import torch
torch.cuda.set_per_process_memory_fraction(1.0)  # what a candidate may do: no bound of ours
seen['total'] = torch.cuda.mem_get_info()[1]
"""
# Allocates until the GPU refuses; torch's OutOfMemoryError ends the evaluation.
GPU_HOG = """
import torch
held = []
while True:
    held.append(torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device='cuda'))
    print('GPUCHECK-HELD', len(held) * 256 * 1024 * 1024, file=sys.stderr, flush=True)
"""
CUDA_MODEL = CNN.replace(
    "    def forward(self, x):\n",
    "    def forward(self, x):\n"
    "        if not getattr(self, '_told', False):\n"
    "            self._told = True\n"
    "            where = str(next(self.parameters()).device)\n"
    "            print('GPUCHECK-DEVICE ' + where, file=sys.stderr)\n",
)


def find_gpu(dev: Path | None = None, proc: Path | None = None) -> Any:
    """The first GPU this machine shows, or None."""
    from services.trainer.sandbox import gpu as gpus

    found = gpus.discover(dev, proc)
    return found[0] if found else None


class Runner:
    """A one-GPU trainer and the calls the checks make through it."""

    def __init__(self, config: CheckConfig) -> None:
        from services.trainer import server
        from services.trainer.sandbox.base import MIB, Limits
        from services.trainer.sandbox.gpu import GpuConfig

        self.config = config
        self.trainer = server.Trainer(
            server.TrainerConfig(
                backend=config.backend,
                warm=1,
                slots=0,
                max_queue=0,
                limits=Limits(wall_seconds=1800, memory_bytes=config.memory_mb * MIB),
                gpu=GpuConfig(config.gpu),
                sandbox_proc=config.sandbox_proc,
            )
        )
        self.gpu = self.trainer.gpus[0]

    def close(self) -> None:
        self.trainer.close()

    def evaluate(self, code: str, steps: int = 20, memory_mb: int = 0) -> Outcome:
        from evo.v1 import trainer_pb2 as pb

        from services.trainer.sandbox.base import MIB

        request = pb.EvaluateRequest(
            program=pb.Program(code=code),
            task="mnist1d",
            budget=pb.Budget(steps=steps),
            limits=pb.Limits(memory_bytes=memory_mb * MIB),
        )
        response = self.trainer.evaluate(request)
        return Outcome(response, parse_seen(response.log_tail))


def parse_seen(log: str) -> dict[str, Any]:
    for line in log.splitlines():
        if line.startswith(MARK):
            with contextlib.suppress(ValueError):
                return dict(json.loads(line[len(MARK) :]))
    return {}


def status_name(response: Any) -> str:
    from evo.v1 import common_pb2 as common

    return str(common.EvalStatus.Name(response.status).removeprefix("EVAL_STATUS_"))


# ----------------------------------------------------------------- the checks


def check_torch(run: Runner) -> Check:
    out = run.evaluate(probe_code(TORCH_PROBE, CUDA_MODEL), steps=200)
    r = out.response
    trained_on = next(
        (x.split(" ", 1)[1] for x in r.log_tail.splitlines() if x.startswith("GPUCHECK-DEVICE")),
        "?",
    )
    ok = (
        status_name(r) == "OK"
        and trained_on.startswith("cuda")
        and r.sandbox.device.startswith("cuda")
    )
    return Check(
        "torch-cuda",
        ok,
        f"{status_name(r)}, trained on {trained_on} ({out.seen.get('name') or r.message[:200]}), "
        f"result says {r.sandbox.device}",
    )


def check_jax(run: Runner) -> Check:
    out = run.evaluate(probe_code(JAX_PROBE), steps=20)
    seen = out.seen
    platforms = seen.get("platforms", [])
    ok = (
        bool(platforms) and set(platforms) <= {"gpu", "cuda"} and seen.get("preallocate") == "false"
    )
    detail = (
        seen.get("error")
        or f"platforms {platforms}, preallocation off: {seen.get('preallocate') == 'false'}"
    )
    return Check("jax-cuda", ok, detail)


def judge_device_nodes(seen: dict[str, Any], gpu: Any, dev: Path | None = None) -> Check:
    """PASS when the sandbox's NVIDIA nodes are exactly its allow-list and /sys is absent."""
    from services.trainer.sandbox import gpu as gpus

    allowed = gpus.allowed_nodes(gpu, dev)
    base = dev or gpus.DEV
    want_top = {p.name for p in allowed if p.parent == base}
    want_caps = {p.name for p in allowed if p.parent != base}
    nvidia = {n for n in seen.get("dev", []) if n.startswith("nvidia") and n != gpus.CAPS_DIR}
    extra = sorted(nvidia - want_top) + sorted(set(seen.get("caps", [])) - want_caps)
    forbidden = sorted(set(seen.get("dev", [])) & set(gpus.FORBIDDEN_NODES))
    problems = []
    if not seen.get("dev"):
        problems.append(f"the probe did not report ({seen.get('error', 'no output')})")
    if extra or forbidden:
        problems.append(f"beyond the allow-list: {', '.join(extra + forbidden)}")
    if nvidia != want_top:
        problems.append(f"missing: {', '.join(sorted(want_top - nvidia))}")
    if seen.get("sys"):
        problems.append("/sys is visible")
    detail = (
        "; ".join(problems)
        or f"{', '.join(sorted(nvidia | {'nvidia-caps/' + c for c in want_caps}))} only, no /sys"
    )
    return Check("device-nodes", not problems, detail)


def check_device_nodes(run: Runner) -> Check:
    return judge_device_nodes(run.evaluate(probe_code(DEVICES_PROBE), steps=20).seen, run.gpu)


def check_host_memory(run: Runner) -> Check:
    limit_mb = min(2048, run.config.memory_mb)
    code = probe_code(
        f"os.environ['EVO_CHECK_LIMIT'] = '{limit_mb * 1024 * 1024}'\n" + HOST_MEMORY_PROBE
    )
    seen = run.evaluate(code, memory_mb=limit_mb).seen
    plain, pinned = seen.get("plain", "?"), seen.get("pinned", "?")
    ok = plain == "refused" and str(pinned).startswith("refused")
    return Check(
        "host-memory",
        ok,
        f"limit {limit_mb} MiB: 2x plain {plain}, 1.5x pinned {pinned}"
        + ("" if ok else " (pinned memory needs the memory cgroup: README.md, GPUs)"),
    )


def check_gpu_memory_cap(run: Runner) -> Check:
    hog = run.evaluate(probe_code(GPU_HOG_PROBE, after=GPU_HOG), steps=20)
    after = run.evaluate(probe_code(TORCH_PROBE, CUDA_MODEL), steps=200)
    held = [x for x in hog.response.log_tail.splitlines() if x.startswith("GPUCHECK-HELD ")]
    reached = int(held[-1].split()[1]) if held else 0
    total = hog.seen.get("total", 0)
    ok = status_name(hog.response) == "OOM" and status_name(after.response) == "OK"
    return Check(
        "gpu-memory-cap",
        ok,
        f"hog: {status_name(hog.response)} at {reached / GIB:.1f} of {total / GIB:.1f} GiB "
        f"(exclusive: its bound is its GPU or MIG slice); next candidate: "
        f"{status_name(after.response)}",
    )


def sandboxes_at_once(run: Runner, n: int, steps: int) -> tuple[list[str], float]:
    """`n` CNN evaluations at once on the runner's GPU, bypassing the one-per-GPU slot
    rule on purpose (the mechanism MIG and any later sharing rely on); statuses, seconds."""
    from evo.v1 import trainer_pb2 as pb

    from services.trainer import server
    from services.trainer.evaluator import Job, evaluate
    from services.trainer.server import SANDBOXES_PER_EVALUATION

    backend = server.make_backend(run.trainer.config, run.gpu)
    request = pb.EvaluateRequest(
        program=pb.Program(code=CNN), task="mnist1d", budget=pb.Budget(steps=steps)
    )
    job = Job.from_request(request, run.trainer.config.limits)
    # Each evaluation is two runs (training, then scoring), each in a fresh sandbox: all
    # pre-started here, in this long-lived thread (bwrap's --die-with-parent follows it).
    started_here = [[backend.start() for _ in range(SANDBOXES_PER_EVALUATION)] for _ in range(n)]
    statuses: list[str] = [""] * n

    def one(i: int) -> None:
        statuses[i] = status_name(evaluate(job, started_here[i].pop, 1))

    started = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for left in started_here:  # an evaluation that stopped before its scoring run
        for sandbox in left:
            sandbox.destroy()
    backend.close()
    return statuses, time.monotonic() - started


def check_parallel(run: Runner) -> Check:
    statuses, seconds = sandboxes_at_once(run, run.config.parallel, 500)
    ok = all(s == "OK" for s in statuses)
    return Check(
        "parallel", ok, f"{len(statuses)} at once: {', '.join(statuses)} in {seconds:.0f} s"
    )


def bare_seconds(run: Runner, steps: int) -> float:
    """The child's training phase, in this process on the same GPU: no sandbox, no scoring
    run (the sandboxed figure includes both runs of an evaluation)."""
    from evo.v1 import trainer_pb2 as pb

    from services.trainer import child, protocol
    from services.trainer.evaluator import Job

    request = pb.EvaluateRequest(
        program=pb.Program(code=CNN), task="mnist1d", budget=pb.Budget(steps=steps)
    )
    job = Job.from_request(request, run.trainer.config.limits)
    spec, data = protocol.read_job(job.train_job(1))
    with _env(EVO_DEVICE="cuda", CUDA_VISIBLE_DEVICES=run.gpu.uuid or str(run.gpu.minor)):
        started = time.monotonic()
        child.train(spec, data, io.BytesIO())
        return time.monotonic() - started


def check_throughput(run: Runner) -> Check:
    steps, n = run.config.steps, run.config.evaluations
    started = time.monotonic()
    statuses = [status_name(run.evaluate(CNN, steps=steps).response) for _ in range(n)]
    sandboxed = n / ((time.monotonic() - started) / 60)
    parallel_statuses, seconds = sandboxes_at_once(run, run.config.parallel, steps)
    packed = len(parallel_statuses) / (seconds / 60)
    bare = 60 / bare_seconds(run, steps)
    ok = all(s == "OK" for s in statuses + parallel_statuses)
    return Check(
        "throughput",
        ok,
        f"CNN at {steps} steps, evaluations/min: sandboxed {sandboxed:.1f} (one at a time), "
        f"{packed:.1f} ({run.config.parallel} at once), bare loop {bare:.1f}; "
        f"sandbox/bare {sandboxed / bare:.2f}; the paper's search in an hour needs "
        f"{PAPER_EVALUATIONS_PER_MINUTE:.1f} per node",
    )


CHECKS: list[Callable[[Runner], Check]] = [
    check_torch,
    check_jax,
    check_device_nodes,
    check_host_memory,
    check_gpu_memory_cap,
    check_parallel,
    check_throughput,
]


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_checks(config: CheckConfig, say: Callable[[str], None] = print) -> int:
    """Run every check, printing a line each; the exit status (EXIT_*)."""
    gpu = find_gpu()
    if gpu is None:
        say(
            "NO GPU  no /dev/nvidiaN device node here: nothing checked (run it on a GPU node, "
            "in the CUDA trainer image or with the trainer pod's settings)"
        )
        return EXIT_NO_GPU
    try:
        runner = Runner(config)
    except (RuntimeError, ValueError) as e:
        say(f"FAIL  {'trainer':<15} cannot start a GPU trainer: {e}")
        return EXIT_FAIL
    say(f"GPU     {runner.gpu.describe()}, {config.backend} sandbox, /proc {config.sandbox_proc}")
    results = []
    try:
        for check in CHECKS:
            if config.quick and check is check_throughput:
                continue
            try:
                result = check(runner)
            except Exception as e:  # a check that breaks is a failure, with its reason
                result = Check(
                    check.__name__.removeprefix("check_"), False, f"{type(e).__name__}: {e}"
                )
            say(result.line())
            results.append(result)
    finally:
        runner.close()
    return EXIT_PASS if all(r.ok for r in results) else EXIT_FAIL
