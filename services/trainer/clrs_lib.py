"""dm-clrs without TensorFlow, and CLRS batches as flat arrays.

`import clrs` runs the package's `__init__`, which imports its tfds dataset module and
with it TensorFlow: seconds of start-up and hundreds of MB per sandbox. The samplers,
the model and the evaluation need none of it (one `isinstance(x, tf.Tensor)` in
`probing`), so `load()` imports clrs's own modules under an empty package object, with
a stand-in `tensorflow` that only answers that check. Used by both sides of the
sandbox: the trainer generates data and scores with it, the sandbox trains with it.

A batch (`Feedback`) crosses the sandbox boundary as flat arrays named
`{split}.{input|hint|output}.{name}` and `{split}.lengths`, hints time-major.
"""

import importlib.util
import sys
import types
from typing import Any

import numpy as np

KINDS = ("input", "hint", "output")


def load() -> types.SimpleNamespace:
    """clrs's modules: specs, samplers, probing, processors, baselines, evaluation."""
    stand_in = None
    if "tensorflow" not in sys.modules:
        stand_in = types.ModuleType("tensorflow")
        stand_in.__doc__ = "evo's stand-in: clrs only asks isinstance(x, tf.Tensor)"

        class Tensor:  # nothing is ever an instance
            pass

        stand_in.Tensor = Tensor  # type: ignore[attr-defined]
        sys.modules["tensorflow"] = stand_in
    try:
        return _import_clrs()
    finally:
        # `probing` holds its own reference; left in sys.modules, the stand-in would make
        # other libraries (transformers) believe TensorFlow is installed, and break them.
        if stand_in is not None and sys.modules.get("tensorflow") is stand_in:
            del sys.modules["tensorflow"]


def _import_clrs() -> types.SimpleNamespace:
    if "clrs" not in sys.modules:
        found = importlib.util.find_spec("clrs")
        if found is None or not found.submodule_search_locations:
            raise ModuleNotFoundError(
                "the clrs tasks need DeepMind's dm-clrs: make install EXTRAS=...,clrs "
                "(pip install -e '.[clrs]')"
            )
        package = types.ModuleType("clrs")
        package.__path__ = list(found.submodule_search_locations)
        package.__spec__ = found  # so find_spec("clrs") still answers; __init__ never runs
        sys.modules["clrs"] = package
    from clrs._src import baselines, evaluation, probing, processors, samplers, specs

    return types.SimpleNamespace(
        specs=specs,
        samplers=samplers,
        probing=probing,
        processors=processors,
        baselines=baselines,
        evaluation=evaluation,
    )


def flatten(split: str, feedback: Any, with_outputs: bool = True) -> dict[str, np.ndarray]:
    arrays = {f"{split}.lengths": np.asarray(feedback.features.lengths)}
    for kind, points in (("input", feedback.features.inputs), ("hint", feedback.features.hints)):
        for dp in points:
            arrays[f"{split}.{kind}.{dp.name}"] = np.asarray(dp.data)
    if with_outputs:
        for dp in feedback.outputs:
            arrays[f"{split}.output.{dp.name}"] = np.asarray(dp.data)
    return arrays


def unflatten(clrs: types.SimpleNamespace, split: str, arrays: dict[str, np.ndarray],
              spec: dict[str, tuple[str, str, str]]) -> Any:  # fmt: skip
    """The `Feedback` of `split`; outputs missing from `arrays` come back empty."""
    points: dict[str, list[Any]] = {kind: [] for kind in KINDS}
    for name, (stage, location, type_) in spec.items():
        key = f"{split}.{stage}.{name}"
        if key in arrays:
            points[stage].append(clrs.probing.DataPoint(name, location, type_, arrays[key]))
    features = clrs.samplers.Features(
        inputs=tuple(points["input"]),
        hints=tuple(points["hint"]),
        lengths=arrays[f"{split}.lengths"],
    )
    return clrs.samplers.Feedback(features=features, outputs=tuple(points["output"]))


def batch(feedback: Any, index: np.ndarray) -> Any:
    """The samples at `index`, hints kept at the full time length (one compiled shape)."""
    import clrs._src.probing as probing
    import clrs._src.samplers as samplers

    def take(dp: Any, axis: int) -> Any:
        return probing.DataPoint(dp.name, dp.location, dp.type_, np.take(dp.data, index, axis))

    f = feedback.features
    features = samplers.Features(
        inputs=tuple(take(dp, 0) for dp in f.inputs),
        hints=tuple(take(dp, 1) for dp in f.hints),
        lengths=f.lengths[index],
    )
    return samplers.Feedback(
        features=features, outputs=tuple(take(dp, 0) for dp in feedback.outputs)
    )
