"""MNIST-1D (Greydanus 2020): 10 classes of 1-D signals of length 40, generated offline."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from services.trainer.tasks.base import Dataset, Recipe, Split, Task

VALIDATION_SIZE = 500  # held out of the 4,000 training examples, as in the paper


def cache_dir() -> Path:
    home = Path(os.environ.get("EVO_HOME", Path.home() / ".evo"))
    return home / "data"


class Mnist1d(Task):
    name = "mnist1d"
    description = (
        "MNIST-1D: classify 40-sample 1-D signals into 10 digit classes "
        "(3,500 train, 500 validation, 1,000 test)."
    )
    language = "pytorch"
    num_classes = 10
    # The paper: AdamW, lr 0.01, batch 128, 8,000 steps.
    recipe = Recipe(learning_rate=0.01, batch_size=128, default_steps=8000)
    seed_package = "services.trainer.tasks.seeds.mnist1d"
    grammar_version = "mnist1d-pytorch-v1"
    prompt_header = (
        "# Neural networks for MNIST-1D: each takes a float tensor of shape (batch, 40)\n"
        "# and returns logits of shape (batch, 10). Smaller and more accurate is better.\n"
        "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"
    )

    def __init__(self) -> None:
        self._dataset: Dataset | None = None

    def dataset(self) -> Dataset:
        if self._dataset is None:
            self._dataset = self._load()
        return self._dataset

    def _load(self) -> Dataset:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        key = hashlib.sha256(json.dumps(vars(args), sort_keys=True, default=str).encode())
        path = cache_dir() / f"mnist1d-{key.hexdigest()[:12]}.npz"
        if not path.exists():
            data = make_dataset(args)  # offline: never get_dataset(download=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, x=data["x"], y=data["y"], x_test=data["x_test"], y_test=data["y_test"])
            tmp.replace(path)
        with np.load(path, allow_pickle=False) as d:
            x, y = d["x"].astype(np.float32), d["y"].astype(np.int64)
            x_test, y_test = d["x_test"].astype(np.float32), d["y_test"].astype(np.int64)
        cut = len(x) - VALIDATION_SIZE
        return Dataset(
            train=Split(x[:cut], y[:cut]), val=Split(x[cut:], y[cut:]), test=Split(x_test, y_test)
        )
