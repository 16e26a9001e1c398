"""The CLRS task: names and options, what enters the sandbox, trusted scoring, the
published baseline trained in the bwrap sandbox, and a short search end to end.

Sizes are tiny (graphs of 8 nodes, hidden size 16, a few dozen steps) so that each
evaluation takes seconds; the benchmark (bench/clrs_baseline.py) runs the real sizes.
"""

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from evo.v1 import common_pb2 as common
from evo.v1 import lineage_pb2 as pb
from evo.v1 import trainer_pb2

from controller import config as search_config
from evo_cli.main import main
from services.trainer import clrs_lib, tasks
from services.trainer import server as trainer_server
from services.trainer.sandbox.base import GIB, Limits
from tests.test_search import Stack, check_lineage, proposer, run, serving  # noqa: F401 - fixture

if not tasks.clrs_available():
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI needs the clrs extra: make install (EXTRAS includes clrs)")
    pytest.skip("dm-clrs is not installed: make install EXTRAS=...,clrs", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "services" / "trainer" / "tasks" / "seeds" / "clrs"
DMCLRS_SEEDS = ROOT / "services" / "trainer" / "tasks" / "seeds" / "clrs_dmclrs"
PAPER_SEEDS = [
    "v1_triplet_gmpnn", "v2_mlp_output", "v3_sum_aggregation", "v4_mlp_nodes", "v5_mlp_edges",
    "v6_mlp_graph", "v7_mlp_nodes_no_graph", "v8_linear_tiled", "v9_bilinear",
]  # fmt: skip
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
    assert len(seeds) == 9 and "v1_triplet_gmpnn" in seeds
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
    full = task.arrays()  # type: ignore[attr-defined]
    trained = task.train_arrays()
    # The training run: the training trajectories and nothing held out.
    assert "train.output.pi" in trained and all(k.startswith("train.") for k in trained)
    # The scoring run: held-out inputs, no training data, and outputs only as zeros.
    seen = task.score_arrays()
    assert not [k for k in seen if k.startswith("train.") or k.startswith("test.output.")]
    assert [k for k in seen if ".output." in k] and all(
        not seen[k].any() for k in seen if ".output." in k
    )
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
    # What the scoring run must return, checked before a byte of it is read.
    spec = task.prediction_spec("test")  # type: ignore[attr-defined]
    assert spec == {k.replace("test.", "test.", 1): ("float32", v.shape)
                    for k, v in right.items() if k.startswith("test.")}  # fmt: skip


def sandbox_run(path: Path, task: str = BFS, steps: int = STEPS) -> dict:  # type: ignore[type-arg]
    result = CliRunner().invoke(
        main,
        ["sandbox", "run", str(path), "--task", task,
         "--steps", str(steps), "--backend", "bwrap", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_the_baseline_triplet_function_scores_in_the_bwrap_sandbox() -> None:
    report = sandbox_run(SEEDS / "v1_triplet_gmpnn.py")
    assert report["status"] == "OK", report
    m = report["metrics"]
    # BFS parent pointers: chance is about 1/8 here; the published model learns it fast.
    assert m["best_val_accuracy"] > 0.6, m
    assert m["test_accuracy"] > 0.5, m
    assert int(m["steps_completed"]) == STEPS and len(m["val_curve"]) >= 2
    assert int(m["num_params"]) > 5000
    assert report["sandbox"]["backend"] == "bwrap" and report["sandbox"]["isolated"]
    # The same architecture in dm-clrs's own signature (its max and output layer fixed):
    # the paper's wiring adds or loses no parameter.
    old = sandbox_run(DMCLRS_SEEDS / "triplet_gmpnn.py", f"{BFS},triplet=dmclrs,optimizer=adam", 2)
    assert old["status"] == "OK", old
    assert old["metrics"]["num_params"] == m["num_params"]


PAPER_HEADER = "import functools\n\nimport haiku as hk\nimport jax\nimport jax.numpy as jnp\n\n"
TRIPLETS = """
def get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts, out_size):
  node = [hk.Linear(nb_triplet_fts)(z) for _ in range(3)]
  edge = [hk.Linear(nb_triplet_fts)(edge_fts) for _ in range(3)]
  triplets = functools.reduce(lambda x, y: x + y, [
      jnp.expand_dims(t, axis=a) for t, a in zip(node, [(2, 3), (1, 3), (1, 2)])])
  triplets += functools.reduce(lambda x, y: x + y, [
      jnp.expand_dims(t, axis=a) for t, a in zip(edge, [3, 2, 1])])
  return hk.Linear(out_size)({reduction})
"""


@pytest.mark.parametrize(
    "reduction",
    ["jnp.mean(triplets, axis=1)", "jnp.max(triplets, axis=1) - jnp.min(triplets, axis=1)"],
    ids=["mean", "max-minus-min"],
)
def test_the_paper_signature_owns_its_reduction(tmp_path: Path, reduction: str) -> None:
    """Mean and max-minus-min aggregation (two of the paper's discoveries) cannot be
    written in dm-clrs's signature; in the paper's they train and score."""
    path = tmp_path / "candidate.py"
    path.write_text(PAPER_HEADER + TRIPLETS.format(reduction=reduction))
    report = sandbox_run(path, steps=10)
    assert report["status"] == "OK", report
    assert report["metrics"]["best_val_accuracy"] > 0.2, report["metrics"]


# Nine JAX compilations: about 20 s each on an idle 2-core machine, minutes under load.
@pytest.mark.timeout(2400)
def test_the_paper_seeds_are_the_default_and_all_nine_score(
    trainer: trainer_server.Trainer,
) -> None:
    task = tasks.get(BFS)
    seeds = dict(task.seeds())
    assert list(seeds) == PAPER_SEEDS
    assert task.program_opening.endswith("nb_triplet_fts, out_size):")
    for name, code in seeds.items():
        result = evaluate(trainer, code, steps=1)
        assert result.status == common.EVAL_STATUS_OK, (name, result.message)
        assert result.metrics.num_params > 0 and 0 <= result.metrics.best_val_error <= 1
    dmclrs = tasks.get(f"{BFS},triplet=dmclrs")
    assert "triplet_gmpnn" in dict(dmclrs.seeds())
    assert dmclrs.program_opening.endswith("nb_triplet_fts):")
    with pytest.raises(ValueError, match="triplet=tiny: one of paper, dmclrs"):
        tasks.get(f"{BFS},triplet=tiny")


@pytest.fixture(scope="module")
def trainer() -> Iterator[trainer_server.Trainer]:
    t = trainer_server.Trainer(
        trainer_server.TrainerConfig(
            backend="bwrap", slots=1, warm=1, limits=Limits(wall_seconds=300, memory_bytes=4 * GIB)
        )
    )
    yield t
    t.close()


def evaluate(
    trainer: trainer_server.Trainer, code: str, steps: int = 5
) -> trainer_pb2.EvaluateResponse:
    return trainer.evaluate(
        trainer_pb2.EvaluateRequest(
            program=trainer_pb2.Program(code=code, language=trainer_pb2.PROGRAM_LANGUAGE_JAX),
            task=BFS,
            budget=trainer_pb2.Budget(steps=steps, eval_every=steps),
        )
    )


HEADER = "import haiku as hk\nimport jax\nimport jax.numpy as jnp\n\n"


@pytest.mark.parametrize(
    ("code", "status", "message"),
    [
        (HEADER + "def get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts, out_size):\n"
         "  return (", common.EVAL_STATUS_INVALID, "syntax error"),
        (HEADER + "def triplets(z):\n  return z\n", common.EVAL_STATUS_INVALID,
         "no get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts, out_size)"),
        # A (B, N, H) message where (B, N, N, out_size) is needed: the processor says so.
        (HEADER + "def get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts, out_size):\n"
         "  return hk.Linear(out_size)(z)\n", common.EVAL_STATUS_INVALID,
         "the processor needs (B, N, N, out_size)"),
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
    limits = Limits(wall_seconds=300, memory_bytes=4 * GIB)
    config = trainer_server.TrainerConfig(backend="bwrap", slots=1, warm=1, limits=limits)
    with serving(tmp_path, config) as running:
        yield running


@pytest.mark.timeout(1800)  # six JAX compilations: minutes when the machine is loaded
def test_a_clrs_search_runs_end_to_end(clrs_stack: Stack, proposer: str) -> None:  # noqa: F811
    config = search_config.SearchConfig(name="clrs", seed=3, task=BFS)
    config.evolution.rounds = 1
    config.evolution.prompts_per_round = 2
    config.evolution.samples_per_prompt = 2
    config.evolution.population_size = 2
    config.evolution.alpha = 0.9
    config.evolution.seeds = ["v1_triplet_gmpnn", "v8_linear_tiled"]
    config.training.steps = 10
    config.training.wall_seconds = 300  # JAX compiles slowly on a loaded 2-core machine
    config.services.lineage = clrs_stack.lineage
    config.services.trainers = [clrs_stack.trainer]
    config.services.proposer = proposer
    config.proposer.sampling = "free"  # the paper's CLRS space has no grammar yet
    sid, top, log = run(config, "evoprompting")
    found = check_lineage(clrs_stack.stub, sid, top, p=2)
    seeds = [c for c in found if c.round_index == 0]
    assert sorted(c.name for c in seeds) == ["v1_triplet_gmpnn", "v8_linear_tiled"]
    children = [c for c in found if c.round_index == 1]
    # Beyond sample 2: a duplicate's slot sampled again (controller/sampling.py).
    assert len([c for c in children if c.sample_index < 2]) == 2 * 2
    assert any(c.state == pb.CANDIDATE_STATE_SCORED for c in children), log
    for c in children:
        assert "def get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts, out_size):" in c.code
        assert "import haiku as hk" in c.code  # the task's header comes with every child
    prompt = clrs_stack.stub.GetPrompt(
        pb.GetPromptRequest(prompt_id=children[0].prompt_id), timeout=5
    )
    assert prompt.text.endswith(
        "def get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts, out_size):"
    )
    assert prompt.text.startswith('"""Metrics:')  # the paper's prompt: no header


def test_unknown_seeds_and_the_mutation_baseline_are_refused(clrs_stack: Stack) -> None:
    config = search_config.SearchConfig(name="clrs", task=BFS)
    config.services.lineage = clrs_stack.lineage
    config.services.trainers = [clrs_stack.trainer]
    with pytest.raises(RuntimeError, match="mutations edit PyTorch models"):
        run(config, "mutation")
    config.evolution.seeds = ["v1_triplet_gmpnn", "no_such_seed"]
    config.services.proposer = "127.0.0.1:9"  # never reached: the seeds are checked first
    with pytest.raises(RuntimeError, match="no seed named no_such_seed; its seeds are"):
        run(config, "few-shot")


def test_one_function_on_several_algorithms_beside_the_published_scores(tmp_path: Path) -> None:
    """bench/clrs_table.py (the paper's Table 3) at a tiny budget."""
    from bench import clrs_table

    assert len(clrs_table.PUBLISHED_OOD) == 30
    from services.trainer.tasks.clrs import algorithms

    assert set(clrs_table.PUBLISHED_OOD) == set(algorithms())
    out = tmp_path / "table"
    code = clrs_table.main(
        ["--seed", "v8_linear_tiled", "--algorithms", "bfs", "minimum", "--steps", "2",
         "--sizes", TINY, "--out", str(out), "--wall-seconds", "300"]
    )  # fmt: skip
    assert code == 0
    text = (out / "table.md").read_text()
    assert "| bfs | OK |" in text and "| minimum | OK |" in text
    assert "| 99.73 | 99.80 |" in text  # BFS: Ibarz et al.'s and the paper's own run
    rows = json.loads((out / "table.json").read_text())
    assert [r["algorithm"] for r in rows] == ["bfs", "minimum"]
    assert all(0 <= r["ood_test"] <= 100 for r in rows)
