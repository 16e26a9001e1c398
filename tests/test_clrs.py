"""The CLRS task: names and options, what enters the sandbox, trusted scoring, the
published baseline trained in the bwrap sandbox, and a short search end to end.

Sizes are tiny (graphs of 8 nodes, hidden size 16, a few dozen steps) so that each
evaluation takes seconds; the benchmark (bench/clrs_baseline.py) runs the real sizes.
"""

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from click.testing import CliRunner
from evo.v1 import common_pb2 as common
from evo.v1 import lineage_pb2 as pb
from evo.v1 import lineage_pb2_grpc as pb_grpc
from evo.v1 import trainer_pb2

from controller import config as search_config
from controller.cli import main
from services.lineage import server as lineage_server
from services.lineage.rdb import RDBStorage
from services.trainer import clrs_lib, tasks
from services.trainer import server as trainer_server
from services.trainer.sandbox.base import GIB, Limits
from tests.test_search import Stack, check_lineage, proposer, run  # noqa: F401 - fixture

if not tasks.clrs_available():
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI needs the clrs extra: make install (EXTRAS includes clrs)")
    pytest.skip("dm-clrs is not installed: make install EXTRAS=...,clrs", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "services" / "trainer" / "tasks" / "seeds" / "clrs"
TINY = "train=48,val=16,test=16,length=8,test_length=12,hidden=16,batch=8"
BFS = f"clrs/bfs:{TINY}"
STEPS = 40


def perfect(task: tasks.Task, checkpoints: int = 1) -> dict[str, np.ndarray]:
    """Predictions equal to the held-back truth, in the sandbox's format."""
    clrs = clrs_lib.load()
    arrays: dict[str, np.ndarray] = {}
    prefixes = [("val", f"val{i}.") for i in range(checkpoints)] + [("test", "test.")]
    for split, prefix in prefixes:
        for dp in clrs_lib.unflatten(clrs, split, task.arrays(), task.spec).outputs:
            arrays[f"{prefix}out.{dp.name}"] = dp.data.astype(np.float32)
            arrays[f"{prefix}type.{dp.name}"] = np.frombuffer(dp.type_.encode(), np.uint8)
    return arrays


def test_task_names_options_and_errors() -> None:
    assert "clrs/bfs" in tasks.names() and "clrs/mst_kruskal" in tasks.names()
    task = tasks.get(BFS)
    assert task.name == BFS and task.language == "jax"
    assert task.recipe.default_steps == 2000  # the paper's budget per child
    assert "size 12" in task.description
    standard = tasks.get("clrs/articulation_points")
    assert standard.split_plan() == {  # type: ignore[attr-defined]
        "train": (1000, 16, 1),
        "val": (32, 16, 2),
        "test": (32, 64, 3),
    }
    with pytest.raises(ValueError, match=r"unknown CLRS algorithm 'bsf'.*bfs"):
        tasks.get("clrs/bsf")
    with pytest.raises(ValueError, match="'train=many'"):
        tasks.get("clrs/bfs:train=many")
    with pytest.raises(ValueError, match="'nodes=8'"):
        tasks.get("clrs/bfs:nodes=8")
    seeds = dict(task.seeds())
    assert len(seeds) == 9 and "triplet_gmpnn" in seeds
    for code in seeds.values():
        assert task.program_opening in code


def test_loading_clrs_leaves_no_stand_in_tensorflow_behind() -> None:
    """Libraries in the same process (transformers) probe for TensorFlow: a stand-in left in
    sys.modules made find_spec raise and broke the proposer's tests after these."""
    import importlib.util
    import sys

    clrs_lib.load()
    clrs_lib.load()
    assert "tensorflow" not in sys.modules
    importlib.util.find_spec("tensorflow")  # answers (installed or not) instead of raising
    assert clrs_lib.load().probing.tf.__doc__.startswith("evo's stand-in")


def test_the_sandbox_never_sees_held_out_outputs() -> None:
    task = tasks.get(BFS)
    full, seen = task.arrays(), task.sandbox_arrays()  # type: ignore[attr-defined]
    assert "train.output.pi" in seen
    assert not [k for k in seen if ".output." in k and not k.startswith("train.")]
    for split in ("val", "test"):
        hints = [k for k in seen if k.startswith(f"{split}.hint.")]
        assert hints
        for key in hints:
            # Every time step is the first: the model reads nothing later at evaluation.
            assert (seen[key] == seen[key][:1]).all()
            assert seen[key].shape == full[key].shape
        assert not np.array_equal(seen[f"{split}.hint.pi_h"], full[f"{split}.hint.pi_h"])


@pytest.mark.parametrize("algorithm", ["bfs", "insertion_sort"])
def test_scores_are_clrs_own_and_malformed_predictions_are_refused(algorithm: str) -> None:
    task = tasks.get(f"clrs/{algorithm}:{TINY}")
    right = perfect(task, checkpoints=2)
    assert task.score(right, 2) == ([1.0, 1.0], 1.0)

    output = next(k for k in right if k.startswith("test.out."))
    wrong = dict(right)
    wrong[output] = np.zeros_like(right[output])  # every pointer at node 0
    assert task.score(wrong, 2)[1] < 0.6

    missing = {k: v for k, v in right.items() if k != output}
    with pytest.raises(ValueError, match="no test prediction"):
        task.score(missing, 2)
    with pytest.raises(ValueError, match="wrong shape"):
        task.score({**right, output: right[output][:3]}, 2)
    with pytest.raises(ValueError, match="not of type"):
        kind = output.replace(".out.", ".type.")
        task.score({**right, kind: np.frombuffer(b"scalar", np.uint8)}, 2)


def test_the_baseline_triplet_function_scores_in_the_bwrap_sandbox() -> None:
    result = CliRunner().invoke(
        main,
        ["sandbox", "run", str(SEEDS / "triplet_gmpnn.py"), "--task", BFS,
         "--steps", str(STEPS), "--backend", "bwrap", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["status"] == "OK", report
    m = report["metrics"]
    # BFS parent pointers: chance is about 1/8 here; the published model learns it fast.
    assert m["best_val_accuracy"] > 0.6, m
    assert m["test_accuracy"] > 0.5, m
    assert int(m["steps_completed"]) == STEPS and len(m["val_curve"]) >= 2
    assert int(m["num_params"]) > 5000
    assert report["sandbox"]["backend"] == "bwrap" and report["sandbox"]["isolated"]


@pytest.fixture(scope="module")
def trainer() -> Iterator[trainer_server.Trainer]:
    t = trainer_server.Trainer(
        trainer_server.TrainerConfig(
            backend="bwrap", slots=1, warm=1, limits=Limits(wall_seconds=120, memory_bytes=4 * GIB)
        )
    )
    yield t
    t.close()


def evaluate(trainer: trainer_server.Trainer, code: str) -> trainer_pb2.EvaluateResponse:
    return trainer.evaluate(
        trainer_pb2.EvaluateRequest(
            program=trainer_pb2.Program(code=code, language=trainer_pb2.PROGRAM_LANGUAGE_JAX),
            task=BFS,
            budget=trainer_pb2.Budget(steps=5),
        )
    )


HEADER = "import haiku as hk\nimport jax\nimport jax.numpy as jnp\n\n"


@pytest.mark.parametrize(
    ("code", "status", "message"),
    [
        (HEADER + "def get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts):\n  return (",
         common.EVAL_STATUS_INVALID, "syntax error"),
        (HEADER + "def triplets(z):\n  return z\n", common.EVAL_STATUS_INVALID,
         "no get_triplet_msgs"),
        # A (B, N, H) message where (B, N, N, N, H) is needed: the processor cannot build.
        (HEADER + "def get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts):\n"
         "  return hk.Linear(nb_triplet_fts)(z)\n", common.EVAL_STATUS_INVALID,
         "does not build"),
    ],
)  # fmt: skip
def test_broken_triplet_functions_are_reported(
    trainer: trainer_server.Trainer, code: str, status: int, message: str
) -> None:
    result = evaluate(trainer, code)
    assert result.status == status, result
    assert message in result.message


def test_a_pytorch_program_is_refused_for_a_jax_task(trainer: trainer_server.Trainer) -> None:
    from services.trainer.evaluator import BadRequest

    with pytest.raises(BadRequest, match="takes jax programs"):
        trainer.evaluate(
            trainer_pb2.EvaluateRequest(
                program=trainer_pb2.Program(
                    code="x = 1", language=trainer_pb2.PROGRAM_LANGUAGE_PYTORCH
                ),
                task=BFS,
            )
        )


@pytest.fixture
def clrs_stack(tmp_path: Path) -> Iterator[Stack]:
    storage = RDBStorage(f"sqlite:///{tmp_path / 'lineage.db'}")
    lineage = lineage_server.start(storage, "127.0.0.1", 0)
    trainer = trainer_server.Trainer(
        trainer_server.TrainerConfig(
            backend="bwrap", slots=1, warm=1, limits=Limits(wall_seconds=120, memory_bytes=4 * GIB)
        )
    )
    service = trainer_server.start(trainer, "127.0.0.1", 0)
    with grpc.insecure_channel(f"127.0.0.1:{lineage.port}") as channel:
        yield Stack(
            f"127.0.0.1:{lineage.port}",
            f"127.0.0.1:{service.port}",
            pb_grpc.LineageStub(channel),
            Counter(),
        )
    service.stop(grace=1)
    trainer.close()
    lineage.stop(grace=1)
    storage.close()


def test_a_clrs_search_runs_end_to_end(clrs_stack: Stack, proposer: str) -> None:  # noqa: F811
    config = search_config.SearchConfig(name="clrs", seed=3, task=BFS)
    config.evolution.rounds = 1
    config.evolution.prompts_per_round = 2
    config.evolution.samples_per_prompt = 2
    config.evolution.population_size = 2
    config.evolution.alpha = 0.9
    config.evolution.seeds = ["triplet_gmpnn", "nodes_and_graph"]
    config.training.steps = 20
    config.training.wall_seconds = 120
    config.services.lineage = clrs_stack.lineage
    config.services.trainers = [clrs_stack.trainer]
    config.services.proposer = proposer
    sid, top, log = run(config, "evoprompting")
    found = check_lineage(clrs_stack.stub, sid, top, p=2)
    seeds = [c for c in found if c.round_index == 0]
    assert sorted(c.name for c in seeds) == ["nodes_and_graph", "triplet_gmpnn"]
    children = [c for c in found if c.round_index == 1]
    # Beyond sample 2: a duplicate's slot sampled again (controller/sampling.py).
    assert len([c for c in children if c.sample_index < 2]) == 2 * 2
    assert any(c.state == pb.CANDIDATE_STATE_SCORED for c in children), log
    for c in children:
        assert "def get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts):" in c.code
        assert "import haiku as hk" in c.code  # the task's header comes with every child
    prompt = clrs_stack.stub.GetPrompt(
        pb.GetPromptRequest(prompt_id=children[0].prompt_id), timeout=5
    )
    assert prompt.text.endswith("def get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts):")
    assert "Triplet-GMPNN" in prompt.text


def test_unknown_seeds_and_the_mutation_baseline_are_refused(clrs_stack: Stack) -> None:
    config = search_config.SearchConfig(name="clrs", task=BFS)
    config.services.lineage = clrs_stack.lineage
    config.services.trainers = [clrs_stack.trainer]
    with pytest.raises(RuntimeError, match="mutations edit PyTorch models"):
        run(config, "mutation")
    config.evolution.seeds = ["triplet_gmpnn", "no_such_seed"]
    config.services.proposer = "127.0.0.1:9"  # never reached: the seeds are checked first
    with pytest.raises(RuntimeError, match="no seed named no_such_seed; its seeds are"):
        run(config, "few-shot")
