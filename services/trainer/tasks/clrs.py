"""CLRS-30 (Veličković et al. 2022): the paper's triplet-message search on Triplet-GMPNN.

A task name is `clrs/ALGORITHM`, optionally with sizes for quick runs:
`clrs/bfs:train=100,val=16,test=16,test_length=32,hidden=32`. Without them it is the
CLRS-30 benchmark: dm-clrs's samplers with its standard seeds, 1,000 training
trajectories of size 16, validation at size 16, out-of-distribution test at size 64.
Two more options choose the search space and the optimiser (services/trainer/
clrs_processor.py): `triplet=paper` (the default: the paper's signature with `out_size`
and its nine seeds) or `triplet=dmclrs` (dm-clrs's signature, this project's earlier
seeds), and `optimizer=adamw` (the default, the paper's) or `optimizer=adam` (dm-clrs's).
Data is generated here, offline, and cached; the score is CLRS's own (the mean over
outputs of micro-F1 or pointer accuracy), computed here from the sandbox's predictions.
"""

import hashlib
import json
import os
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from services.trainer import clrs_lib
from services.trainer.clrs_child import PUBLISHED
from services.trainer.clrs_processor import OPTIMIZERS, TRIPLET_SIGNATURES
from services.trainer.protocol import ClrsRecipe
from services.trainer.tasks.base import Dataset, Recipe, Task
from services.trainer.tasks.mnist1d import cache_dir

PREFIX = "clrs/"
# The paper trains each child 2,000 steps (Ibarz et al. train 10,000).
DEFAULT_STEPS = 2000
# dm-clrs's CLRS30 splits: (samples, length, seed); val and test samples are multiplied
# for the algorithms with few output signals, as its dataset builder does.
SPLITS = {"train": (1000, 16, 1), "val": (32, 16, 2), "test": (32, 64, 3)}


@dataclass(frozen=True)
class Sizes:
    train: int = 1000
    val: int = 0  # 0: CLRS-30's count for the algorithm
    test: int = 0
    length: int = 16
    test_length: int = 64
    hidden: int = PUBLISHED["hidden_dim"]
    batch: int = PUBLISHED["batch_size"]

    @classmethod
    def parse(cls, text: str) -> "Sizes":
        sizes = cls()
        known = {f.name for f in fields(cls)}
        for part in filter(None, text.split(",")):
            key, _, value = part.partition("=")
            if key in Choices.KEYS:
                continue
            if key not in known or not value.isdigit() or int(value) < 1:
                raise ValueError(
                    f"clrs task option {part!r}: expected NAME=POSITIVE_INTEGER with NAME one "
                    f"of {', '.join(sorted(known))}"
                )
            sizes = replace(sizes, **{key: int(value)})
        if sizes.length < 4 or sizes.test_length < 4:
            raise ValueError("clrs task option: length and test_length must be 4 or more")
        return sizes


@dataclass(frozen=True)
class Choices:
    """The search space and the optimiser: `triplet=paper|dmclrs`, `optimizer=adamw|adam`."""

    triplet: str = "paper"
    optimizer: str = "adamw"
    KEYS = ("triplet", "optimizer")

    @classmethod
    def parse(cls, text: str) -> "Choices":
        given = dict(p.partition("=")[::2] for p in filter(None, text.split(",")))
        choices = cls(**{k: v for k, v in given.items() if k in cls.KEYS})
        if choices.triplet not in TRIPLET_SIGNATURES:
            raise ValueError(
                f"clrs task option triplet={choices.triplet}: one of "
                f"{', '.join(TRIPLET_SIGNATURES)} (paper: with out_size, the paper's seeds)"
            )
        if choices.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"clrs task option optimizer={choices.optimizer}: one of {', '.join(OPTIMIZERS)}"
            )
        return choices


# What the prompt shows before the parents when `proposer.prompt_header` is on, and what
# every child's program starts with (its imports), per search space.
PAPER_HEADER = (
    "# Triplet-message functions for the Triplet-GMPNN processor (CLRS benchmark).\n"
    "# z: node features (B, N, F); edge_fts: (B, N, N, F); graph_fts: (B, F).\n"
    "# Returns triplet messages of shape (B, N, N, out_size): reduce the (B, N, N, N, H)\n"
    "# triplets over one node axis and apply an output layer. Smaller and more accurate\n"
    "# is better.\n"
    "import functools\n\nimport haiku as hk\nimport jax\nimport jax.numpy as jnp\n"
)
DMCLRS_HEADER = (
    "# Triplet-message functions for the Triplet-GMPNN processor (CLRS benchmark).\n"
    "# z: node features (B, N, F); edge_fts: (B, N, N, F); graph_fts: (B, F).\n"
    "# Returns triplet messages of shape (B, N, N, N, nb_triplet_fts), max-reduced over\n"
    "# the first node axis by the processor. Smaller and more accurate is better.\n"
    "import haiku as hk\nimport jax\nimport jax.numpy as jnp\n"
)
SPACES = {
    "paper": (
        "def get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts, out_size):",
        "services.trainer.tasks.seeds.clrs",
        PAPER_HEADER,
    ),
    "dmclrs": (
        "def get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts):",
        "services.trainer.tasks.seeds.clrs_dmclrs",
        DMCLRS_HEADER,
    ),
}


def algorithms() -> list[str]:
    return list(clrs_lib.load().specs.CLRS_30_ALGS)


def first_hint_step_only(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Hints with every time step set to the first: all the model reads at evaluation
    (it feeds back its own predicted hints), and no later step can leak an answer."""
    out = {}
    for key, value in arrays.items():
        if ".hint." in key:
            value = np.broadcast_to(value[:1], value.shape).copy()
        out[key] = value
    return out


class Clrs(Task):
    language = "jax"
    runner = "clrs"
    num_classes = 0

    def __init__(self, name: str) -> None:
        algorithm, _, options = name.removeprefix(PREFIX).partition(":")
        clrs = clrs_lib.load()
        if algorithm not in clrs.specs.CLRS_30_ALGS:
            raise ValueError(
                f"unknown CLRS algorithm {algorithm!r}; known: {', '.join(clrs.specs.CLRS_30_ALGS)}"
            )
        self.name = name
        self.algorithm = algorithm
        self.sizes = Sizes.parse(options)
        self.choices = Choices.parse(options)
        self.program_opening, self.seed_package, self.prompt_header = SPACES[self.choices.triplet]
        # The grammar for constrained sampling (grammars/clrs-jax-v1.lark) covers dm-clrs's
        # space, whose seeds are straight-line code; the paper's seeds use comprehensions,
        # lambdas and functools.reduce, which it does not have yet: sample those free.
        self.grammar_version = "clrs-jax-v1" if self.choices.triplet == "dmclrs" else ""
        self._spec: dict[str, tuple[str, str, str]] | None = None
        self.recipe = Recipe(
            learning_rate=PUBLISHED["learning_rate"],
            batch_size=self.sizes.batch,
            default_steps=DEFAULT_STEPS,
        )
        self.description = (
            f"CLRS-30 {algorithm}: a triplet-message function for Triplet-GMPNN, trained on "
            f"{self.sizes.train} trajectories of size {self.sizes.length}, scored out of "
            f"distribution at size {self.sizes.test_length} (CLRS score)."
        )
        self._arrays: dict[str, np.ndarray] | None = None

    def split_plan(self) -> dict[str, tuple[int, int, int]]:
        multiplier = clrs_lib.load().specs.CLRS_30_ALGS_SETTINGS[self.algorithm][
            "num_samples_multiplier"
        ]
        s = self.sizes
        return {
            "train": (s.train, s.length, SPLITS["train"][2]),
            "val": (s.val or SPLITS["val"][0] * multiplier, s.length, SPLITS["val"][2]),
            "test": (s.test or SPLITS["test"][0] * multiplier, s.test_length, SPLITS["test"][2]),
        }

    def dataset(self) -> Dataset:
        raise NotImplementedError("CLRS data is trajectories: use arrays()")

    def arrays(self) -> dict[str, np.ndarray]:
        """Every split, outputs included (the trusted side's copy)."""
        if self._arrays is None:
            self._arrays = self._load()
        return self._arrays

    @property
    def spec(self) -> dict[str, tuple[str, str, str]]:
        """The algorithm's spec after the published preprocessing (see `_preprocess`)."""
        self.arrays()
        assert self._spec is not None
        return self._spec

    def _load(self) -> dict[str, np.ndarray]:
        plan = self.split_plan()
        key = hashlib.sha256(json.dumps([self.algorithm, plan, 1], sort_keys=True).encode())
        path = cache_dir() / f"clrs-{self.algorithm}-{key.hexdigest()[:12]}.npz"
        if not path.exists():
            clrs = clrs_lib.load()
            arrays: dict[str, np.ndarray] = {}
            spec: dict[str, Any] = {}
            for split, (samples, length, seed) in plan.items():
                sampler, raw_spec = clrs.samplers.build_sampler(
                    self.algorithm, num_samples=samples, length=length, seed=seed
                )
                feedback = sampler.next(batch_size=None)
                spec, feedback = _preprocess(clrs, self.algorithm, raw_spec, feedback, seed)
                arrays.update(clrs_lib.flatten(split, feedback))
            arrays[SPEC_KEY] = np.frombuffer(json.dumps(spec).encode(), dtype=np.uint8)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, **arrays)
            tmp.replace(path)
        with np.load(path, allow_pickle=False) as d:
            arrays = {k: d[k] for k in d.files}
        spec_json = json.loads(bytes(arrays.pop(SPEC_KEY)).decode())
        self._spec = {k: tuple(v) for k, v in spec_json.items()}
        return arrays

    def job_settings(self) -> dict[str, Any]:
        recipe = ClrsRecipe(
            algorithm=self.algorithm,
            processor=PUBLISHED["processor"],
            hidden_dim=self.sizes.hidden,
            nb_triplet_fts=PUBLISHED["nb_triplet_fts"],
            use_ln=PUBLISHED["use_ln"],
            encode_hints=PUBLISHED["encode_hints"],
            decode_hints=PUBLISHED["decode_hints"],
            encoder_init=PUBLISHED["encoder_init"],
            hint_teacher_forcing=PUBLISHED["hint_teacher_forcing"],
            hint_repred_mode=PUBLISHED["hint_repred_mode"],
            grad_clip_max_norm=PUBLISHED["grad_clip_max_norm"],
            spec=self.spec,
            triplet=self.choices.triplet,
            optimizer=self.choices.optimizer,
        )
        return {
            "runner": self.runner,
            "batch_size": self.sizes.batch,
            "lr": self.recipe.learning_rate,
            "num_classes": 0,
            "clrs": recipe,
        }

    def train_arrays(self) -> dict[str, np.ndarray]:
        """The training trajectories only: no validation or test input enters training."""
        return {k: v for k, v in self.arrays().items() if k.startswith("train.")}

    def score_arrays(self) -> dict[str, np.ndarray]:
        """Validation and test inputs, hints at their first step only, and zero outputs for
        validation (the model's construction reads their shapes, nothing else)."""
        arrays = self.arrays()
        held: dict[str, np.ndarray] = {}
        for split in ("val", "test"):
            inputs = {
                k: v
                for k, v in arrays.items()
                if k.startswith(f"{split}.") and not k.startswith(f"{split}.output.")
            }
            held.update(first_hint_step_only(inputs))
        for k, v in arrays.items():
            if k.startswith("val.output."):
                held[k] = np.zeros_like(v)
        return held

    def sandbox_arrays(self) -> dict[str, np.ndarray]:
        """Everything either sandbox sees (both runs together)."""
        return {**self.train_arrays(), **self.score_arrays()}

    def prediction_spec(self, split: str) -> dict[str, tuple[str, tuple[int, ...]]]:
        clrs = clrs_lib.load()
        truth = clrs_lib.unflatten(clrs, split, self.arrays(), self.spec).outputs
        return {f"{split}.out.{dp.name}": ("float32", tuple(dp.data.shape)) for dp in truth}

    def score(self, arrays: dict[str, np.ndarray], checkpoints: int) -> tuple[list[float], float]:
        val = [self._score_split("val", arrays, f"val{i}.") for i in range(checkpoints)]
        return val, self._score_split("test", arrays, "test.")

    def _score_split(self, split: str, arrays: dict[str, np.ndarray], prefix: str) -> float:
        clrs = clrs_lib.load()
        truth = clrs_lib.unflatten(clrs, split, self.arrays(), self.spec).outputs
        predictions = {}
        for dp in truth:
            pred = arrays.get(f"{prefix}out.{dp.name}")
            if pred is None:
                raise ValueError(f"no {split} prediction for output {dp.name!r}")
            # Hard post-processing keeps every output's type (the spec's) and shape.
            if pred.dtype.kind != "f" or pred.shape != dp.data.shape:
                raise ValueError(f"{split} prediction {dp.name!r} has the wrong shape")
            predictions[dp.name] = clrs.probing.DataPoint(dp.name, dp.location, dp.type_, pred)
        score = float(clrs.evaluation.evaluate(truth, predictions)["score"])
        if not np.isfinite(score):
            raise ValueError(f"{split} score is not a number")
        return score


SPEC_KEY = "__spec__"
# The algorithms whose constant `pred_h` hint becomes an input (dm-clrs's run.py).
PRED_AS_INPUT = {
    "binary_search", "minimum", "find_maximum_subarray", "find_maximum_subarray_kadane",
    "matrix_chain_order", "lcs_length", "optimal_bst", "activity_selector", "task_scheduling",
    "naive_string_matcher", "kmp_matcher", "jarvis_march",
}  # fmt: skip


def _preprocess(clrs: Any, algorithm: str, spec: Any, feedback: Any, seed: int) -> tuple[Any, Any]:
    """The published training setup (dm-clrs's run.py defaults): random `pos` inputs,
    constant `pred_h` hints as inputs, sorting outputs as permutation pointers."""
    samples: Any = iter([feedback])
    samples = clrs.samplers.process_random_pos(samples, np.random.RandomState(seed))
    if algorithm in PRED_AS_INPUT:
        spec, samples = clrs.samplers.process_pred_as_input(spec, samples)
    spec, samples = clrs.samplers.process_permutations(spec, samples, True)
    return {k: [str(x) for x in v] for k, v in spec.items()}, next(samples)
