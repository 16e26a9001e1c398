"""The task plug-in interface: data, training recipe, metrics, seeds and prompt header.

A task says what enters each sandbox (`train_arrays` for the training run, `score_arrays`
for the scoring run: never validation or test labels, and never validation or test inputs
in the training run), what the scoring run must return (`prediction_spec`) and scores it
(`score`) on the trusted side.
"""

import hashlib
import logging
import os
import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

SECRET_ENV = "EVO_TRAINER_SECRET"
log = logging.getLogger(__name__)


def evo_home() -> Path:
    return Path(os.environ.get("EVO_HOME", Path.home() / ".evo"))


def trainer_secret() -> bytes:
    """The secret the held-out data is generated from: EVO_TRAINER_SECRET, else
    $EVO_HOME/trainer-secret (mode 0600, made on first use). Never enters a sandbox; trainers
    that must score alike (a fleet) share it."""
    if value := os.environ.get(SECRET_ENV, "").strip():
        return value.encode()
    path = evo_home() / "trainer-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another trainer made it first
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
            log.warning(
                "made a new trainer secret in %s: held-out scores differ from other trainers'; "
                "trainers that must score alike share one (%s)",
                path,
                SECRET_ENV,
            )
    value = path.read_bytes().strip()
    if not value:
        raise RuntimeError(f"{path} is empty: delete it (a new secret is made) or set {SECRET_ENV}")
    return value


def held_out_seed(purpose: str) -> int:
    """A 32-bit seed for `purpose` derived from the trainer's secret."""
    digest = hashlib.sha256(trainer_secret() + b"\0" + purpose.encode()).digest()
    return int.from_bytes(digest[:4], "little")


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
    # A versioned Lark grammar in grammars/ ("mnist1d-pytorch-v2"): what a child may write
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

    def job_settings(self) -> dict[str, Any]:
        """The training recipe as the child's job (protocol.ChildJob) carries it."""
        return {
            "runner": self.runner,
            "batch_size": self.recipe.batch_size,
            "lr": self.recipe.learning_rate,
            "num_classes": self.num_classes,
            "clrs": None,
        }

    def train_arrays(self) -> dict[str, np.ndarray]:
        """What the training run sees: the training split, nothing held out."""
        data = self.dataset()
        return {"train_x": data.train.x, "train_y": data.train.y}

    def score_arrays(self) -> dict[str, np.ndarray]:
        """What the scoring run sees: validation and test inputs, never their labels."""
        data = self.dataset()
        return {"val_x": data.val.x, "test_x": data.test.x}

    def prediction_spec(self, split: str) -> dict[str, tuple[str, tuple[int, ...]]]:
        """The predictions one checkpoint's bundle holds for `split` ("val" or "test"):
        name -> (protocol dtype, shape). Anything else is a malformed result."""
        data = self.dataset()
        labels = data.val.y if split == "val" else data.test.y
        return {f"{split}.labels": ("int16", (len(labels),))}

    def score(self, arrays: dict[str, np.ndarray], checkpoints: int) -> tuple[list[float], float]:
        """Validation accuracy at each checkpoint and the test accuracy, from the
        predictions (`val{i}.labels`, `test.labels`) and the labels held here.
        ValueError if malformed."""
        data = self.dataset()
        val = []
        for i in range(checkpoints):
            preds = arrays[f"val{i}.labels"]
            if preds.shape != data.val.y.shape:
                raise ValueError("validation predictions do not match the validation split")
            val.append(self.accuracy(preds, data.val.y))
        test_preds = arrays["test.labels"]
        if test_preds.shape != data.test.y.shape:
            raise ValueError("test predictions do not match the test split")
        return val, self.accuracy(test_preds, data.test.y)
