"""MNIST-1D (Greydanus 2020): 10 classes of 1-D signals of length 40, generated offline.

The training split is the public one (the package's default seed). The validation and
test splits are generated the same way from a seed derived from the trainer's secret
(tasks.base.trainer_secret): a candidate that imports mnist1d, or knows its default seed,
can rebuild the training split but not the held-out labels.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from services.trainer.tasks.base import Dataset, Recipe, Split, Task, evo_home, held_out_seed

VALIDATION_SIZE = 500  # held out of the 4,000 training examples, as in the paper
# A read-only folder holding the public split, made when the trainer image is built
# (images/trainer/Dockerfile): read before $EVO_HOME/data. Never the held-out splits.
PUBLIC_DATA_ENV = "EVO_PUBLIC_DATA"


def cache_dir() -> Path:
    return evo_home() / "data"


def write_public_data(folder: Path) -> Path:
    """The public split's file, made in `folder` (mode 0644: it is public); no secret is
    read or made, so an image built with it holds none."""
    from mnist1d.data import get_dataset_args

    args = get_dataset_args()
    path = folder / _file_name(args, "mnist1d")
    if not path.exists():
        _make(args, path, 0o644)
    return path


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
    grammar_version = "mnist1d-pytorch-v3"
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
        from mnist1d.data import get_dataset_args

        public = get_dataset_args()
        x, y, _, _ = _generate(public, "mnist1d", held_out=False)
        held_out = get_dataset_args()
        held_out.seed = held_out_seed("mnist1d/held-out")
        # Named by a hash of the seed, never the seed; readable by the trainer's user only.
        name = "mnist1d-held-out-" + hashlib.sha256(str(held_out.seed).encode()).hexdigest()[:12]
        hx, hy, hx_test, hy_test = _generate(held_out, name, held_out=True)
        cut = len(x) - VALIDATION_SIZE
        return Dataset(
            train=Split(x[:cut], y[:cut]),
            val=Split(hx[:VALIDATION_SIZE], hy[:VALIDATION_SIZE]),
            test=Split(hx_test, hy_test),
        )


def _file_name(args: object, prefix: str) -> str:
    key = hashlib.sha256(json.dumps(vars(args), sort_keys=True, default=str).encode())
    return f"{prefix}-{key.hexdigest()[:12]}.npz"


def _make(args: object, path: Path, mode: int) -> None:
    from mnist1d.data import make_dataset

    data = make_dataset(args)  # offline: never get_dataset(download=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
        np.savez(f, x=data["x"], y=data["y"], x_test=data["x_test"], y_test=data["y_test"])
    tmp.replace(path)


def _generate(
    args: object, prefix: str, *, held_out: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """make_dataset(args): the public split from $EVO_PUBLIC_DATA when it is there, else
    cached under $EVO_HOME/data (held-out splits mode 0600, readable by the trainer only)."""
    name = _file_name(args, prefix)
    public = os.environ.get(PUBLIC_DATA_ENV, "")
    path = Path(public) / name
    if held_out or not public or not path.exists():
        path = cache_dir() / name
        if not path.exists():
            _make(args, path, 0o600 if held_out else 0o644)
    with np.load(path, allow_pickle=False) as d:
        return (
            d["x"].astype(np.float32),
            d["y"].astype(np.int64),
            d["x_test"].astype(np.float32),
            d["y_test"].astype(np.int64),
        )
