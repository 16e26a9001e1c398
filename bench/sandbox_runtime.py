"""What gVisor costs per evaluation: the docker backend under runc and under runsc, side by side.

For each sandbox (bwrap, docker, docker+runsc) it measures, alternating between them so
that the shared machine's noise falls on all alike:

- start: from asking for a sandbox to its child having imported torch and waiting
  (what a warm pool hides, and what an evaluation costs when the pool is empty);
- evaluate: one evaluation of the MNIST-1D CNN on a pre-started sandbox (`--steps`).

    .venv/bin/python -m bench.sandbox_runtime [--steps 1000] [--repeats 3]
        [--sandboxes bwrap,docker,docker+runsc]

runsc must be a runtime of the engine (docs/security.md, "gVisor").
"""

import argparse
import statistics
import time
from pathlib import Path

from evo.v1 import common_pb2 as common
from evo.v1 import trainer_pb2 as pb

from services.trainer import server
from services.trainer.evaluator import Job, evaluate
from services.trainer.sandbox.base import GIB, Backend, Limits, Sandbox

CNN = Path(__file__).resolve().parent.parent / "services/trainer/tasks/seeds/mnist1d/cnn.py"
READY_PROBE = "import torch.nn as nn\n\ndef build_model():\n    return nn.Linear(40, 10)\n"


def backend_for(name: str, limits: Limits) -> Backend:
    kind, _, runtime = name.partition("+")
    return server.make_backend(
        server.TrainerConfig(backend=kind, limits=limits, docker_runtime=runtime)
    )


def request(code: str, steps: int) -> pb.EvaluateRequest:
    return pb.EvaluateRequest(
        program=pb.Program(code=code), task="mnist1d", budget=pb.Budget(steps=steps, seed=1)
    )


def start_seconds(backend: Backend, limits: Limits) -> float:
    """From start() to a finished 1-step evaluation, less what that evaluation itself
    takes on a warm sandbox: the child's start-up, as an empty pool would pay it."""
    job = Job.from_request(request(READY_PROBE, 1), limits)
    started = time.perf_counter()
    result = evaluate(job, backend.start(), backend.threads)
    cold = time.perf_counter() - started
    warm_sandbox = warmed(backend)
    started = time.perf_counter()
    evaluate(job, warm_sandbox, backend.threads)
    assert result.status == common.EVAL_STATUS_OK, result.message
    return cold - (time.perf_counter() - started)


def warmed(backend: Backend) -> Sandbox:
    sandbox = backend.start()
    time.sleep(8)  # the child imports torch meanwhile, as in a warm pool
    return sandbox


def evaluate_seconds(backend: Backend, limits: Limits, steps: int) -> float:
    job = Job.from_request(request(CNN.read_text(), steps), limits)
    sandbox = warmed(backend)
    started = time.perf_counter()
    result = evaluate(job, sandbox, backend.threads)
    took = time.perf_counter() - started
    assert result.status == common.EVAL_STATUS_OK, result.message
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sandboxes", default="bwrap,docker,docker+runsc")
    args = parser.parse_args()
    limits = Limits(wall_seconds=600, memory_bytes=2 * GIB)
    names = args.sandboxes.split(",")
    backends = {name: backend_for(name, limits) for name in names}
    starts: dict[str, list[float]] = {n: [] for n in names}
    evals: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.repeats):
        for name, backend in backends.items():
            starts[name].append(start_seconds(backend, limits))
            evals[name].append(evaluate_seconds(backend, limits, args.steps))
    base = statistics.median(evals[names[0]])
    print(f"| sandbox | start (s) | evaluate {args.steps} steps (s) | vs {names[0]} |")
    print("|---|---|---|---|")
    for name in names:
        s, e = statistics.median(starts[name]), statistics.median(evals[name])
        print(f"| {name} | {s:.2f} | {e:.2f} | {e / base:.2f}x |")
    print(f"(medians of {args.repeats}; runs: {evals})")
    for backend in backends.values():
        backend.close()


if __name__ == "__main__":
    main()
