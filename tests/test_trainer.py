"""The Trainer service and `evo sandbox run`, with real sandboxes and real training."""

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from evo.v1 import common_pb2 as common
from evo.v1 import trainer_pb2 as pb
from evo.v1 import trainer_pb2_grpc as pb_grpc

from services.trainer import protocol, server, tasks
from services.trainer.evaluator import Job
from services.trainer.sandbox.base import Limits
from services.trainer.tasks import clrs_available
from services.trainer.tasks.clrs import algorithms as clrs_algorithms

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "services/trainer/tasks/seeds/mnist1d"
EVO = str(Path(sys.executable).parent / "evo")
LOOP = "import torch.nn as nn\nwhile True:\n    pass\n"


def request(code: str, steps: int = 200, seed: int = 1, **limits: float) -> pb.EvaluateRequest:
    return pb.EvaluateRequest(
        program=pb.Program(code=code, language=pb.PROGRAM_LANGUAGE_PYTORCH),
        task="mnist1d",
        budget=pb.Budget(steps=steps, seed=seed),
        limits=pb.Limits(**limits),
    )


@pytest.fixture(scope="module")
def trainer() -> Iterator[server.Trainer]:
    t = server.Trainer(server.TrainerConfig(backend="bwrap", slots=1, warm=1, max_queue=0))
    yield t
    t.close()


@pytest.fixture(scope="module")
def stub(trainer: server.Trainer) -> Iterator[pb_grpc.TrainerStub]:
    service = server.start(trainer, "127.0.0.1", 0)
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield pb_grpc.TrainerStub(channel)
    service.stop(grace=1)


def test_sound_cnn_trains_and_is_scored(stub: pb_grpc.TrainerStub) -> None:
    result = stub.Evaluate(request((SEEDS / "cnn.py").read_text(), steps=400), timeout=120)
    assert result.status == common.EVAL_STATUS_OK, result.message
    m = result.metrics
    assert m.num_params == 5210 and m.steps_completed == 400
    assert len(m.val_curve) == 20 and m.val_curve[-1].step == 400
    assert m.best_val_error == pytest.approx(min(p.val_error for p in m.val_curve))
    assert m.test_accuracy > 0.4  # well above chance (0.1) after 400 steps
    assert result.sandbox.backend == "bwrap" and result.sandbox.isolated


def test_same_seed_same_scores(stub: pb_grpc.TrainerStub) -> None:
    code = (SEEDS / "mlp.py").read_text()
    a = stub.Evaluate(request(code, steps=60, seed=7), timeout=120).metrics
    b = stub.Evaluate(request(code, steps=60, seed=7), timeout=120).metrics
    assert [p.val_accuracy for p in a.val_curve] == [p.val_accuracy for p in b.val_curve]
    assert a.test_accuracy == b.test_accuracy


def test_stream_reports_progress_then_the_result(stub: pb_grpc.TrainerStub) -> None:
    events = list(stub.EvaluateStream(request((SEEDS / "mlp.py").read_text(), 100), timeout=120))
    progress = [e.progress for e in events if e.HasField("progress")]
    assert [p.step for p in progress] == list(range(5, 101, 5))
    assert events[-1].HasField("result")
    assert events[-1].result.status == common.EVAL_STATUS_OK


def test_tasks_describe_seeds_and_prompt(stub: pb_grpc.TrainerStub) -> None:
    listed = [t.name for t in stub.ListTasks(pb.ListTasksRequest(), timeout=10).tasks]
    # mnist1d, then one clrs/ALGORITHM per CLRS-30 algorithm where dm-clrs is installed.
    assert listed[0] == "mnist1d"
    assert listed[1:] == ([f"clrs/{a}" for a in clrs_algorithms()] if clrs_available() else [])
    task = stub.GetTask(pb.GetTaskRequest(name="mnist1d"), timeout=10)
    assert sorted(s.name for s in task.seeds) == ["cnn", "gru", "large_cnn", "mlp"]
    assert all("class Model(nn.Module):" in s.code for s in task.seeds)
    assert task.program_opening == "class Model(nn.Module):"
    assert task.default_budget.steps == 8000
    with pytest.raises(grpc.RpcError) as err:
        stub.GetTask(pb.GetTaskRequest(name="imagenet"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    if clrs_available():
        with pytest.raises(grpc.RpcError) as err:
            stub.GetTask(pb.GetTaskRequest(name="clrs/bogosort"), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown CLRS algorithm 'bogosort'" in (err.value.details() or "")


@pytest.mark.parametrize(
    ("req", "detail"),
    [
        (request(""), "program.code is empty"),
        (pb.EvaluateRequest(program=pb.Program(code="x=1"), task="nope"), "unknown task"),
        (request("x=1", wall_seconds=-1), "limits"),
    ],
)
def test_bad_requests_are_invalid_argument(
    stub: pb_grpc.TrainerStub, req: pb.EvaluateRequest, detail: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Evaluate(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail in err.value.details()


def test_full_trainer_answers_resource_exhausted(stub: pb_grpc.TrainerStub) -> None:
    busy = threading.Thread(
        target=lambda: stub.Evaluate(request(LOOP, wall_seconds=8), timeout=60), daemon=True
    )
    busy.start()
    deadline = time.monotonic() + 30
    while stub.GetCapacity(pb.GetCapacityRequest(), timeout=5).slots_busy == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(grpc.RpcError) as err:
        stub.Evaluate(request("x=1"), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    busy.join()
    capacity = stub.GetCapacity(pb.GetCapacityRequest(), timeout=5)
    assert (capacity.slots_total, capacity.slots_busy, capacity.backends) == (1, 0, ["bwrap"])


def test_request_limits_are_capped_by_the_trainer() -> None:
    cap = Limits(wall_seconds=60, memory_bytes=2 << 30)
    job = Job.from_request(request("x=1", wall_seconds=600, memory_bytes=1 << 30), cap)
    assert (job.limits.wall_seconds, job.limits.memory_bytes) == (60, 1 << 30)


def _sent(payload: bytes) -> dict[str, np.ndarray]:
    job, arrays = protocol.read_job(io.BytesIO(payload))
    return {"job": np.asarray(job.phase), **arrays}


def test_held_back_data_never_enters_the_training_run_nor_labels_the_scoring_run() -> None:
    job = Job.from_request(request("x=1"), Limits())
    trained = _sent(job.train_job(threads=1).read())
    assert sorted(trained) == ["job", "train_x", "train_y"] and str(trained["job"]) == "train"
    head = protocol.encode_job(job.child_job(protocol.SCORE, 1, job.limits), {})
    assert protocol.read_job(io.BytesIO(head))[0].checkpoint_steps == job.checkpoint_steps
    scored = job.task.score_arrays()
    assert sorted(scored) == ["test_x", "val_x"]
    data = tasks.get("mnist1d").dataset()
    assert len(trained["train_y"]) == 3500 and len(data.val.y) == 500 and len(data.test.y) == 1000


def test_held_out_splits_come_from_the_trainer_secret_not_the_public_seed() -> None:
    """mnist1d's default seed rebuilds the training split, never the held-out ones."""
    from mnist1d.data import get_dataset_args, make_dataset

    public = make_dataset(get_dataset_args())
    data = tasks.get("mnist1d").dataset()
    assert np.array_equal(data.train.x, public["x"][:3500].astype(np.float32))
    assert not np.isin(data.val.x[:, 0], public["x"][:, 0]).any()
    assert not np.isin(data.test.x[:, 0], public["x_test"][:, 0]).any()
    secret = Path(os.environ.get("EVO_HOME", Path.home() / ".evo")) / "trainer-secret"
    if not os.environ.get("EVO_TRAINER_SECRET"):
        assert secret.stat().st_mode & 0o777 == 0o600


def test_a_read_only_image_reads_the_public_split_and_makes_the_held_out_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer image's layout: the public split made at build time in a read-only folder
    without any secret; the held-out splits made at run time in $EVO_HOME, mode 0600."""
    from services.trainer.tasks import mnist1d

    monkeypatch.setenv("EVO_HOME", str(tmp_path / "build-home"))
    public = mnist1d.write_public_data(tmp_path / "image")
    assert public.stat().st_mode & 0o777 == 0o644
    assert not (tmp_path / "build-home").exists(), "building the image made no secret"
    (tmp_path / "image").chmod(0o555)
    monkeypatch.setenv(mnist1d.PUBLIC_DATA_ENV, str(tmp_path / "image"))
    monkeypatch.setenv("EVO_HOME", str(tmp_path / "run-home"))
    monkeypatch.delenv("EVO_TRAINER_SECRET", raising=False)
    data = mnist1d.Mnist1d().dataset()
    made = sorted(p.name for p in (tmp_path / "run-home" / "data").iterdir())
    assert len(made) == 1 and made[0].startswith("mnist1d-held-out-"), made
    assert (tmp_path / "run-home" / "data" / made[0]).stat().st_mode & 0o777 == 0o600
    assert len(data.train.y) == 3500 and len(data.val.y) == 500 and len(data.test.y) == 1000


def test_process_backend_is_refused_unless_allowed() -> None:
    with pytest.raises(RuntimeError, match="--allow-unisolated"):
        server.Trainer(server.TrainerConfig(backend="process", warm=0))
    allowed = server.Trainer(server.TrainerConfig(backend="process", warm=0, allow_unisolated=True))
    try:
        result = allowed.evaluate(request((SEEDS / "mlp.py").read_text(), steps=20))
    finally:
        allowed.close()
    assert result.status == common.EVAL_STATUS_OK
    assert not result.sandbox.isolated and "UNISOLATED" in result.message


def test_cli_sound_cnn_at_the_default_budget_beats_90_percent() -> None:
    """The issue's bar: `evo sandbox run` on a sound CNN at the default 8,000 steps."""
    run = subprocess.run(
        [EVO, "sandbox", "run", str(SEEDS / "cnn.py"), "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["status"] == "OK"
    assert result["metrics"]["test_accuracy"] > 0.9
    assert int(result["metrics"]["steps_completed"]) == 8000


def test_cli_reports_a_failure_with_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import torch.nn as nn\nclass Model(nn.Module):\n    pass\n")
    run = subprocess.run([EVO, "sandbox", "run", str(bad), "--steps", "10"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2
    assert "INVALID" in run.stdout and "no trainable parameters" in run.stdout


def test_pre_started_sandboxes_survive_the_thread_that_asked_for_them() -> None:
    """`bwrap --die-with-parent` kills a sandbox when the thread that spawned it exits.

    The first half shows that behaviour; the second that the warm pool, asked for
    several sandboxes at once from threads that come and go, keeps every one alive.
    """
    backend = server.make_backend(server.TrainerConfig(backend="bwrap"))
    made = []

    def start_then_exit() -> None:
        made.append(backend.start())
        time.sleep(1)  # bwrap has set its parent-death signal by now

    thread = threading.Thread(target=start_then_exit)
    thread.start()
    thread.join()
    orphan = made[0]
    deadline = time.monotonic() + 10
    while orphan.proc.poll() is None and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.1)
    assert orphan.proc.returncode == -9  # type: ignore[attr-defined]
    orphan.destroy()

    pool = server.WarmPool(backend, 3)
    for _ in range(3):
        threading.Thread(target=lambda: pool.take().destroy()).start()  # refills from threads
    deadline = time.monotonic() + 90
    while pool.ready.qsize() < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    try:
        alive = [sb.proc.poll() is None for sb in list(pool.ready.queue)]  # type: ignore[attr-defined]
        assert len(alive) >= 3 and all(alive), alive
    finally:
        pool.close()


def test_a_lookup_of_the_public_seed_scores_at_chance(stub: pb_grpc.TrainerStub) -> None:
    """tests/hostile/lookup_held_out.py, with time to build its table. In the bwrap sandbox
    mnist1d is not in the import tree at all, so there is no table. Where it is importable
    (the process backend, everything of the venv) the lookup learns the public training
    split perfectly (loss 0) and the held-out splits, made from the trainer's secret, not at
    all: each defence holds on its own."""
    code = (ROOT / "tests/hostile/lookup_held_out.py").read_text()
    result = stub.Evaluate(request(code, steps=100), timeout=300)
    assert result.status == common.EVAL_STATUS_OK, result.message
    assert "no mnist1d in the sandbox" in result.log_tail, result.log_tail
    m = result.metrics
    assert m.test_accuracy < 0.25 and m.best_val_accuracy < 0.25

    unisolated = server.Trainer(
        server.TrainerConfig(backend="process", warm=0, allow_unisolated=True)
    )
    try:
        result = unisolated.evaluate(request(code, steps=100))
    finally:
        unisolated.close()
    assert result.status == common.EVAL_STATUS_OK, result.message
    assert "lookup table of" in result.log_tail, result.log_tail
    m = result.metrics
    assert m.num_params == 10 and m.val_curve[-1].train_loss < 0.01
    assert m.test_accuracy < 0.25 and m.best_val_accuracy < 0.25
