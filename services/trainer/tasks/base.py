"""The task plug-in interface: data, training recipe, metrics, seeds and prompt header.

A task says what enters the sandbox (`sandbox_arrays`, `job_fields`: never validation or
test labels) and scores what comes back (`score`) on the trusted side.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Split:
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    test: Split


@dataclass(frozen=True)
class Recipe:
    """How every candidate of the task is trained (the same for all, so scores compare)."""

    learning_rate: float
    batch_size: int
    default_steps: int
    # Validation checkpoints per run; the best one gives the paper's "lowest validation error".
    checkpoints: int = 20

    def eval_every(self, steps: int) -> int:
        return max(1, steps // self.checkpoints)


class Task(ABC):
    name: str
    description: str
    language: str  # "pytorch" or "jax"
    # Which training loop runs inside the sandbox: "torch" (services.trainer.child) or
    # "clrs" (services.trainer.clrs_child).
    runner = "torch"
    num_classes: int
    recipe: Recipe
    program_opening = "class Model(nn.Module):"
    prompt_header = ""
    seed_package = ""  # a package of .py files, one seed program each
    # A versioned Lark grammar in grammars/ ("mnist1d-pytorch-v1"): what a child may write
    # after `program_opening`. A new version is a new file, so a stored search reproduces.
    grammar_version = ""

    @abstractmethod
    def dataset(self) -> Dataset:
        """The data, labels included; only the training labels ever enter a sandbox."""

    def seeds(self) -> list[tuple[str, str]]:
        folder = resources.files(self.seed_package)
        return sorted(
            (f.name.removesuffix(".py"), f.read_text())
            for f in folder.iterdir()
            if f.name.endswith(".py") and not f.name.startswith("_")
        )

    def grammar(self) -> str:
        """The grammar's text; every seed must parse under it (tests/test_grammars.py)."""
        if not self.grammar_version:
            return ""
        return (
            resources.files("services.trainer.tasks") / "grammars" / f"{self.grammar_version}.lark"
        ).read_text()

    def accuracy(self, predictions: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(predictions.astype(np.int64) == labels))

    def job_fields(self) -> dict[str, Any]:
        """The training recipe as the sandbox's job sees it."""
        return {
            "runner": self.runner,
            "batch_size": self.recipe.batch_size,
            "lr": self.recipe.learning_rate,
            "num_classes": self.num_classes,
        }

    def sandbox_arrays(self) -> dict[str, np.ndarray]:
        """Everything the candidate may see: inputs, and the training labels only."""
        data = self.dataset()
        return {
            "train_x": data.train.x,
            "train_y": data.train.y,
            "val_x": data.val.x,
            "test_x": data.test.x,
        }

    def score(self, arrays: dict[str, np.ndarray], checkpoints: int) -> tuple[list[float], float]:
        """Validation accuracy at each checkpoint and the test accuracy, from the
        sandbox's predictions and the labels held here. ValueError if malformed."""
        data = self.dataset()
        val_preds, test_preds = arrays["val_preds"], arrays["test_preds"]
        if val_preds.shape != (checkpoints, len(data.val.y)):
            raise ValueError("validation predictions do not match the validation split")
        if test_preds.shape != (len(data.test.y),):
            raise ValueError("test predictions do not match the test split")
        val = [self.accuracy(p, data.val.y) for p in val_preds]
        return val, self.accuracy(test_preds, data.test.y)
