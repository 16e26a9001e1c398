"""The task plug-in interface: data, training recipe, metrics, seeds and prompt header."""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib import resources

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
    num_classes: int
    recipe: Recipe
    program_opening = "class Model(nn.Module):"
    prompt_header = ""
    seed_package = ""  # a package of .py files, one seed program each

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

    def accuracy(self, predictions: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(predictions.astype(np.int64) == labels))
