"""What the sandbox costs: an evaluation through the Trainer service against the same
training loop run bare in-process, and evaluations per minute with 1, 2 and 4 slots.

    .venv/bin/python -m bench.trainer_overhead [--steps 8000] [--repeats 3]
        [--throughput-steps 1000] [--throughput-evals 8] [--backend bwrap]
"""

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
from evo.v1 import common_pb2 as common
from evo.v1 import trainer_pb2 as pb
from evo.v1 import trainer_pb2_grpc as pb_grpc

from services.trainer import child, protocol, server, tasks
from services.trainer.evaluator import Job
from services.trainer.sandbox.base import Limits

CNN = Path(__file__).resolve().parent.parent / "services/trainer/tasks/seeds/mnist1d/cnn.py"


def make_request(steps: int, seed: int) -> pb.EvaluateRequest:
    return pb.EvaluateRequest(
        program=pb.Program(code=CNN.read_text()), task="mnist1d",
        budget=pb.Budget(steps=steps, seed=seed),
    )  # fmt: skip


def bare_seconds(steps: int, seed: int) -> float:
    """The same training and evaluation in this process, with no sandbox, no transfer, no
    checkpoints: train, predict the validation split at each checkpoint of the schedule
    and the test split at the end."""
    import torch
    import torch.nn.functional as F

    job = Job.from_request(make_request(steps, seed), Limits())
    train, data = protocol.read_job(job.train_job(threads=1))
    held_out = job.task.score_arrays()
    started = time.perf_counter()
    train_x, train_y = torch.from_numpy(data["train_x"]), torch.from_numpy(data["train_y"])
    val_x, test_x = torch.from_numpy(held_out["val_x"]), torch.from_numpy(held_out["test_x"])
    model = child.build(train, child.load_factory(train), train_x, torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr)
    generator = torch.Generator().manual_seed(train.seed)

    def predict(x: torch.Tensor) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            labels = torch.cat([model(chunk) for chunk in torch.split(x, 512)]).argmax(dim=1)
        model.train()
        return labels.numpy()

    model.train()
    for step in range(1, train.steps + 1):
        idx = torch.randint(0, train_x.shape[0], (train.batch_size,), generator=generator)
        loss = F.cross_entropy(model(train_x[idx]), train_y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step in train.checkpoint_steps:
            predict(val_x)
    predict(test_x)
    return time.perf_counter() - started


def wait_warm(trainer: server.Trainer, count: int) -> None:
    deadline = time.monotonic() + 120
    while trainer.pool.ready.qsize() < count * server.SANDBOXES_PER_EVALUATION and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    time.sleep(3)  # the pre-started children finish importing torch


def serve(backend: str, slots: int) -> tuple[server.Trainer, object, pb_grpc.TrainerStub]:
    trainer = server.Trainer(
        server.TrainerConfig(backend=backend, slots=slots, warm=slots, max_queue=64)
    )
    service = server.start(trainer, "127.0.0.1", 0)
    channel = grpc.insecure_channel(f"127.0.0.1:{service.port}")  # type: ignore[attr-defined]
    return trainer, service, pb_grpc.TrainerStub(channel)


def overhead(backend: str, steps: int, repeats: int) -> list[str]:
    """Bare and sandboxed runs alternate, so that a shared machine's load falls on both."""
    import torch

    torch.set_num_threads(1)
    bare_seconds(10, 0)  # torch's first operations in this process are slow: not the loop's
    trainer, service, stub = serve(backend, 1)
    bare, sandboxed = [], []
    for seed in range(repeats):
        bare.append(bare_seconds(steps, seed))
        wait_warm(trainer, 1)
        started = time.perf_counter()
        result = stub.Evaluate(make_request(steps, seed), timeout=3600)
        sandboxed.append(time.perf_counter() - started)
        assert result.status == common.EVAL_STATUS_OK, result.message
    service.stop(1)  # type: ignore[attr-defined]
    trainer.close()
    b, s = statistics.median(bare), statistics.median(sandboxed)
    return [
        f"| bare in-process training loop | {steps} | {b:.2f} s | 1.00 |",
        f"| through the Trainer service ({backend}, warm sandboxes) | {steps} | {s:.2f} s "
        f"| {s / b:.3f} |",
        f"<!-- runs: bare {', '.join(f'{x:.2f}' for x in bare)}; "
        f"service {', '.join(f'{x:.2f}' for x in sandboxed)} -->",
    ]


def throughput(backend: str, steps: int, evals: int) -> list[str]:
    rows = []
    for slots in (1, 2, 4):
        trainer, service, stub = serve(backend, slots)
        wait_warm(trainer, slots)
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=evals) as pool:
            futures = [pool.submit(stub.Evaluate, make_request(steps, s), timeout=3600)
                       for s in range(evals)]  # fmt: skip
            results = [f.result() for f in futures]
        elapsed = time.perf_counter() - started
        failed = [f"{r.status}: {r.message}" for r in results if r.status != common.EVAL_STATUS_OK]
        assert not failed, failed
        service.stop(1)  # type: ignore[attr-defined]
        trainer.close()
        rows.append(f"| {slots} | {evals} x {steps} steps | {elapsed:.1f} s | "
                    f"{evals / elapsed * 60:.1f} |")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="bwrap")
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--throughput-steps", type=int, default=1000)
    parser.add_argument("--throughput-evals", type=int, default=8)
    args = parser.parse_args()
    tasks.get("mnist1d").dataset()  # generate and cache the data before timing
    np.random.seed(0)
    print("| run | steps | median wall time | ratio to bare |\n| --- | --- | --- | --- |")
    print("\n".join(overhead(args.backend, args.steps, args.repeats)))
    if args.throughput_evals:  # 0: the overhead only
        print("\n| slots | work | wall time | evaluations per minute |\n| --- | --- | --- | --- |")
        print("\n".join(throughput(args.backend, args.throughput_steps, args.throughput_evals)))


if __name__ == "__main__":
    main()
