"""`evo serve trainer` and `evo sandbox run`: the trainer from the command line."""

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from services.common import addresses
from services.common.metrics import metrics_option

BACKEND_CHOICE = click.Choice(["bwrap", "docker", "process"])


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _config(
    backend: str,
    slots: int,
    threads: int,
    warm: int,
    max_queue: int,
    time_limit: float,
    memory_mb: int,
    allow_unisolated: bool,
    docker_runtime: str = "",
    gpus: str = "none",
    slots_per_gpu: int = 1,
    gpu_sharing: str = "exclusive",
    sandbox_proc: str = "fresh",
):  # type: ignore[no-untyped-def]
    from services.trainer.sandbox.base import MIB, Limits
    from services.trainer.sandbox.gpu import GpuConfig
    from services.trainer.server import TrainerConfig

    try:
        gpu = GpuConfig(gpus=gpus, slots_per_gpu=slots_per_gpu, sharing=gpu_sharing)
    except ValueError as e:
        _fail(str(e))
    return TrainerConfig(
        gpu=gpu,
        sandbox_proc=sandbox_proc,
        backend=backend,
        slots=slots,
        threads_per_slot=threads,
        warm=warm,
        max_queue=max_queue,
        limits=Limits(wall_seconds=time_limit, memory_bytes=memory_mb * MIB),
        allow_unisolated=allow_unisolated or os.environ.get("EVO_ALLOW_UNISOLATED") == "1",
        docker_runtime=docker_runtime,
    )


backend_option = click.option(
    "--backend",
    type=BACKEND_CHOICE,
    default=lambda: os.environ.get("EVO_SANDBOX", "bwrap"),
    show_default="bwrap ($EVO_SANDBOX)",
    help="bwrap: bubblewrap namespaces; docker: a container per evaluation; "
    "process: no isolation, development only.",
)
runtime_option = click.option(
    "--docker-runtime",
    default=lambda: os.environ.get("EVO_SANDBOX_RUNTIME", ""),
    show_default="the engine's default ($EVO_SANDBOX_RUNTIME)",
    help="The docker backend's container runtime, e.g. runsc (gVisor), as named in the "
    "engine's daemon configuration. See docs/security.md.",
)
gpus_option = click.option(
    "--gpus",
    default=lambda: os.environ.get("EVO_GPUS", "none"),
    show_default="none ($EVO_GPUS)",
    help="GPUs for the candidates: none, all (every /dev/nvidiaN), or minor numbers like 0,2. "
    "A GPU asked for and missing stops the trainer at start.",
)
sandbox_proc_option = click.option(
    "--sandbox-proc",
    type=click.Choice(["fresh", "minimal"]),
    default=lambda: os.environ.get("EVO_SANDBOX_PROC", "fresh"),
    show_default="fresh ($EVO_SANDBOX_PROC)",
    help="The bwrap sandbox's /proc: fresh (its own PID namespace's; needs an unmasked /proc) "
    "or minimal (driver and CPU information only; for GPU pods, which cannot unmask /proc).",
)
unisolated_option = click.option(
    "--allow-unisolated",
    is_flag=True,
    help="Permit the process backend, which does not isolate the candidate.",
)


@click.command("trainer")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=addresses.DEFAULT_PORTS["trainer"], show_default=True)
@backend_option
@click.option(
    "--slots",
    default=None,
    type=int,
    help="Evaluations run at once [default: 1; with GPUs, GPUs x --slots-per-gpu].",
)
@click.option(
    "--threads-per-slot", default=1, show_default=True, help="CPU threads each evaluation may use."
)
@click.option(
    "--warm",
    default=None,
    type=int,
    help="Evaluations whose sandboxes (two each) are kept pre-started [default: slots].",
)
@click.option(
    "--max-queue",
    default=16,
    show_default=True,
    help="Evaluations waiting for a slot before RESOURCE_EXHAUSTED.",
)
@click.option(
    "--time-limit",
    default=900.0,
    show_default=True,
    help="Longest wall-clock seconds any evaluation may ask for.",
)
@click.option(
    "--memory-limit-mb",
    default=4096,
    show_default=True,
    help="Most memory any evaluation may ask for.",
)
@runtime_option
@gpus_option
@click.option(
    "--slots-per-gpu",
    default=1,
    show_default=True,
    help="Candidates per GPU at once; only 1 bounds each one's GPU memory (README.md).",
)
@click.option(
    "--gpu-sharing",
    type=click.Choice(["exclusive"]),
    default="exclusive",
    show_default=True,
    help="How candidates share a GPU: exclusive (one at a time). Several per GPU: MIG slices.",
)
@sandbox_proc_option
@click.option(
    "--drain-seconds",
    default=None,
    type=float,
    help="On SIGTERM, how long running evaluations may finish [default: --time-limit + 30]; "
    "Kubernetes' terminationGracePeriodSeconds must be longer.",
)
@metrics_option
@unisolated_option
@click.option("--log-level", default=None)
def serve_trainer(
    host: str,
    port: int,
    backend: str,
    slots: int,
    threads_per_slot: int,
    warm: int | None,
    max_queue: int,
    time_limit: float,
    memory_limit_mb: int,
    docker_runtime: str,
    gpus: str,
    slots_per_gpu: int,
    gpu_sharing: str,
    sandbox_proc: str,
    drain_seconds: float | None,
    metrics_port: int,
    allow_unisolated: bool,
    log_level: str | None,
) -> None:
    """The sandbox trainer: trains and scores untrusted programs."""
    from services.common import logs
    from services.common import server as grpc_server
    from services.trainer import server

    logs.setup(log_level)
    # Without GPUs one slot by default; with them, as many as the GPUs hold (0 here).
    default_slots = 0 if gpus != "none" else 1
    config = _config(
        backend,
        default_slots if slots is None else slots,
        threads_per_slot,
        (1 if slots is None else slots) if warm is None else warm,
        max_queue,
        time_limit,
        memory_limit_mb,
        allow_unisolated,
        docker_runtime,
        gpus,
        slots_per_gpu,
        gpu_sharing,
        sandbox_proc,
    )
    try:
        trainer = server.Trainer(config)
        service = server.start(trainer, host, port)
    except (RuntimeError, OSError, ValueError) as e:
        _fail(str(e))
    devices = ", ".join(g.describe() for g in trainer.gpus) or "CPU"
    click.echo(
        f"trainer serving on {host}:{service.port} ({backend} sandbox"
        + (f", runtime {docker_runtime}" if docker_runtime and backend == "docker" else "")
        + f", {trainer.slots} slots, {devices})",
        err=True,
    )
    drain = time_limit + 30 if drain_seconds is None else drain_seconds
    try:
        grpc_server.serve_forever(
            service,
            metrics_port=metrics_port,
            grace=5.0,
            drain=lambda: _drain(trainer, drain),
        )
    except OSError as e:
        _fail(str(e))
    trainer.close()


def _drain(trainer: Any, seconds: float) -> None:
    if not trainer.drain(seconds):
        click.echo(f"trainer: evaluations still running after {seconds:.0f} s; stopping", err=True)


@click.group()
def sandbox() -> None:
    """Run one candidate through the sandbox, as a search would."""


@sandbox.command("run")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--task", default="mnist1d", show_default=True)
@click.option(
    "--steps", default=0, help="Training steps [default: the task's: mnist1d 8000, clrs/* 2000]."
)
@click.option("--seed", default=0, show_default=True)
@backend_option
@click.option("--time-limit", default=600.0, show_default=True, help="Wall-clock seconds.")
@click.option("--memory-limit", "memory_mb", default=4096, show_default=True, help="MB.")
@click.option("--threads", default=1, show_default=True)
@runtime_option
@gpus_option
@sandbox_proc_option
@unisolated_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def sandbox_run(
    file: Path,
    task: str,
    steps: int,
    seed: int,
    backend: str,
    time_limit: float,
    memory_mb: int,
    threads: int,
    docker_runtime: str,
    gpus: str,
    sandbox_proc: str,
    allow_unisolated: bool,
    as_json: bool,
) -> None:
    """Evaluate one candidate FILE and print its status, scores and log tail."""
    from evo.v1 import trainer_pb2 as pb

    from services.trainer.evaluator import BadRequest
    from services.trainer.server import Trainer

    config = _config(
        backend, 1, threads, 0, 0, time_limit, memory_mb, allow_unisolated, docker_runtime,
        gpus=gpus, sandbox_proc=sandbox_proc,
    )  # fmt: skip
    request = pb.EvaluateRequest(
        # The task decides the language (PyTorch for mnist1d, JAX for clrs/*).
        program=pb.Program(code=file.read_text(errors="replace")),
        task=task,
        budget=pb.Budget(steps=steps, seed=seed),
        request_id=file.name,
    )
    progress = None
    if not as_json and sys.stderr.isatty():

        def progress(p: dict[str, Any]) -> None:
            click.echo(
                f"\r  step {p.get('step')}/{p.get('total_steps')} "
                f"loss {p.get('train_loss', 0):.3f}",
                nl=False,
                err=True,
            )

    try:
        trainer = Trainer(config)
    except RuntimeError as e:
        _fail(str(e))
    try:
        result = trainer.evaluate(request, progress)
    except BadRequest as e:
        _fail(str(e))
    finally:
        trainer.close()
    if progress:
        click.echo("", err=True)
    if as_json:
        click.echo(json.dumps(result_dict(result), indent=2))
    else:
        print_result(result, clrs=task.startswith("clrs/"))
    sys.exit(0 if result.status == 1 else 2)


def result_dict(result: Any) -> dict[str, Any]:
    from evo.v1 import common_pb2
    from google.protobuf.json_format import MessageToDict

    data = MessageToDict(
        result, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    data["status"] = common_pb2.EvalStatus.Name(result.status).removeprefix("EVAL_STATUS_")
    return data


def print_result(result: Any, clrs: bool = False) -> None:
    from evo.v1 import common_pb2
    from rich.console import Console
    from rich.table import Table

    m = result.metrics
    status = common_pb2.EvalStatus.Name(result.status).removeprefix("EVAL_STATUS_")
    table = Table(show_header=False, title="Evaluation")
    rows = [("status", status)]
    if result.message:
        rows.append(("message", result.message))
    if result.status == common_pb2.EVAL_STATUS_OK:
        rows += [
            ("parameters", f"{m.num_params:,}"),
            ("best val score" if clrs else "best val accuracy", f"{m.best_val_accuracy:.4f}"),
            ("test score (OOD)" if clrs else "test accuracy", f"{m.test_accuracy:.4f}"),
            # Fitness is the search's (controller/population.py), not the trainer's.
            ("best val error", f"{m.best_val_error:.4f}"),
            ("steps", str(m.steps_completed)),
            ("train time", f"{m.train_seconds:.1f} s"),
        ]
    sandbox = result.sandbox
    rows += [
        ("wall time", f"{result.wall_seconds:.1f} s"),
        ("sandbox", f"{sandbox.backend}" + ("" if sandbox.isolated else " (NOT ISOLATED)")),
        ("device", sandbox.device or "cpu"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console = Console()
    console.print(table)
    if result.log_tail.strip():
        console.print("log tail:")
        console.print("\n".join(result.log_tail.splitlines()[-20:]), markup=False, highlight=False)


@sandbox.command("gpu-check")
@click.option(
    "--gpu", default="all", show_default=True, help="Which GPU: all (the first) or a minor number."
)
@backend_option
@sandbox_proc_option
@click.option(
    "--memory-limit-mb", default=4096, show_default=True, help="The sandbox's host memory."
)
@click.option(
    "--steps", default=8000, show_default=True, help="Training steps in the throughput check."
)
@click.option(
    "--evaluations", default=4, show_default=True, help="Sandboxed evaluations timed one at a time."
)
@click.option("--parallel", default=4, show_default=True, help="Sandboxes at once on the GPU.")
@click.option("--quick", is_flag=True, help="Skip the throughput measurement.")
def gpu_check(
    gpu: str,
    backend: str,
    sandbox_proc: str,
    memory_limit_mb: int,
    steps: int,
    evaluations: int,
    parallel: int,
    quick: bool,
) -> None:
    """PASS/FAIL for the sandbox on this machine's GPU (exit 0, 1; 77: no GPU here)."""
    from services.trainer import gpu_check as checks

    try:
        config = checks.CheckConfig(
            gpu=gpu if gpu == "all" else str(int(gpu)),
            backend=backend,
            sandbox_proc=sandbox_proc,
            memory_mb=memory_limit_mb,
            steps=steps,
            evaluations=evaluations,
            parallel=parallel,
            quick=quick,
        )
    except ValueError as e:
        _fail(str(e))
    sys.exit(checks.run_checks(config, lambda line: click.echo(line)))
