"""The CLRS runner inside the sandbox: a candidate triplet function in Triplet-GMPNN.

The candidate defines `get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts)` (the
paper's search space). It replaces dm-clrs's own function in the processor module, so
the rest of the Triplet-GMPNN processor (a gated MPNN with layer norm, max-aggregated
triplet messages) and the encoders and decoders are exactly the published ones. Trained
with the published single-task settings; returns predictions and weights, never scores:
validation and test outputs never enter the sandbox (their hints are the first step
only, which is all the model reads at evaluation).
"""

import json
import os
import time
from typing import Any, BinaryIO

import numpy as np

from services.trainer import clrs_lib, gpu_child
from services.trainer.child import (
    PROGRESS,
    StageFailure,
    _failure_from,
    done_meta,
    parse,
    write_frame,
)

# Ibarz et al. 2022 ("A Generalist Neural Algorithmic Learner"), single-task settings.
PUBLISHED = {
    "processor": "triplet_gmpnn",
    "hidden_dim": 128,
    "nb_triplet_fts": 8,
    "use_ln": True,
    "encode_hints": True,
    "decode_hints": True,
    "encoder_init": "xavier_on_scalars",
    "hint_teacher_forcing": 0.0,
    "hint_repred_mode": "soft",
    "grad_clip_max_norm": 1.0,
    "learning_rate": 0.001,
    "batch_size": 32,
}


def _outputs(outs: dict[str, Any]) -> dict[str, np.ndarray]:
    arrays = {}
    for name, dp in outs.items():
        arrays[f"out.{name}"] = np.asarray(dp.data, dtype=np.float32)
        arrays[f"type.{name}"] = np.frombuffer(str(dp.type_).encode(), dtype=np.uint8)
    return arrays


def run(job: dict[str, Any], data: dict[str, np.ndarray], out: BinaryIO) -> dict[str, Any]:
    compiled = parse(job["code"])

    # XLA's CPU backend runs its own thread pool whatever OMP_NUM_THREADS says: hold it
    # to the slot's threads, or one evaluation takes every core.
    threads = max(1, int(job.get("threads") or 1))
    os.environ["XLA_FLAGS"] = (
        f"--xla_cpu_multi_thread_eigen={str(threads > 1).lower()} "
        f"intra_op_parallelism_threads={threads}"
    )
    # cpu, or cuda in a GPU sandbox (services/trainer/gpu_child.py): set before the import.
    platform = gpu_child.configure_jax()
    import jax

    jax.config.update("jax_platforms", platform)
    clrs = clrs_lib.load()
    namespace: dict[str, Any] = {"__name__": "candidate"}
    try:
        exec(compiled, namespace)
    except BaseException as e:
        raise _failure_from(e, "load") from None
    triplet_fn = namespace.get("get_triplet_msgs")
    if not callable(triplet_fn):
        raise StageFailure(
            "INVALID",
            "load",
            "the program defines no get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts)",
        )
    # The processor calls the module-level function: the candidate takes its place.
    clrs.processors.get_triplet_msgs = triplet_fn

    # The trainer's preprocessed spec (permutations, pred-as-input), not the raw one.
    spec = {k: tuple(v) for k, v in job["spec"].items()}
    train = clrs_lib.unflatten(clrs, "train", data, spec)
    val = clrs_lib.unflatten(clrs, "val", data, spec)
    test = clrs_lib.unflatten(clrs, "test", data, spec)
    n_train = len(train.features.lengths)
    batch_size = min(int(job["batch_size"]), n_train)
    rng = np.random.default_rng(int(job["seed"]))

    def sample() -> Any:
        return clrs_lib.batch(train, rng.integers(0, n_train, batch_size))

    factory = clrs.processors.get_processor_factory(
        job["processor"], use_ln=bool(job["use_ln"]), nb_triplet_fts=int(job["nb_triplet_fts"])
    )
    model = clrs.baselines.BaselineModel(
        spec=spec,
        dummy_trajectory=sample(),
        processor_factory=factory,
        hidden_dim=int(job["hidden_dim"]),
        encode_hints=bool(job["encode_hints"]),
        decode_hints=bool(job["decode_hints"]),
        encoder_init=job["encoder_init"],
        use_lstm=False,
        learning_rate=float(job["lr"]),
        grad_clip_max_norm=float(job["grad_clip_max_norm"]),
        checkpoint_path="/tmp/clrs-checkpoints",
        dropout_prob=0.0,
        hint_teacher_forcing=float(job["hint_teacher_forcing"]),
        hint_repred_mode=job["hint_repred_mode"],
        nb_msg_passing_steps=1,
    )

    # Stage: count parameters from shapes alone, before any weight is allocated.
    max_params = int(job.get("max_params") or 0)
    first = sample()
    try:
        shapes = jax.eval_shape(
            lambda key: model.net_fn.init(
                key, [first.features], True, algorithm_index=-1,
                return_hints=False, return_all_outputs=False,
            ),
            jax.random.PRNGKey(0),
        )  # fmt: skip
    except BaseException as e:
        failure = _failure_from(e, "shape_check")
        if failure.status == "CRASHED":
            failure.status = "INVALID"
            failure.message = f"the processor does not build with this triplet function: {e}"[:500]
        raise failure from None
    num_params = int(sum(np.prod(s.shape) for s in jax.tree_util.tree_leaves(shapes)))
    if max_params and num_params > max_params:
        raise StageFailure(
            "REJECTED", "count_params", f"{num_params:,} parameters, over the cap of {max_params:,}"
        )

    try:
        model.init(first.features, int(job["seed"]))
    except BaseException as e:
        raise _failure_from(e, "build") from None

    steps = int(job["steps"])
    eval_every = max(1, int(job["eval_every"]))
    keys = jax.random.split(jax.random.PRNGKey(int(job["seed"])), 2)
    train_key, predict_key = keys[0], keys[1]

    def predict(features: Any) -> dict[str, np.ndarray]:
        outs, _ = model.predict(predict_key, features)
        return _outputs(outs)

    val_steps: list[int] = []
    losses: list[float] = []
    checkpoints: dict[str, np.ndarray] = {}
    started = time.perf_counter()
    try:
        for step in range(1, steps + 1):
            train_key, key = jax.random.split(train_key)
            loss = float(model.feedback(key, sample() if step > 1 else first))
            if not np.isfinite(loss):
                raise StageFailure("DIVERGED", "train", f"loss became {loss} at step {step}")
            if step % eval_every == 0 or step == steps:
                losses.append(loss)
                for k, v in predict(val.features).items():
                    checkpoints[f"val{len(val_steps)}.{k}"] = v
                val_steps.append(step)
                progress = {"stage": "train", "step": step, "total_steps": steps,
                            "train_loss": loss}  # fmt: skip
                write_frame(out, PROGRESS, json.dumps(progress).encode())
        test_preds = {f"test.{k}": v for k, v in predict(test.features).items()}
    except StageFailure:
        raise
    except BaseException as e:
        raise _failure_from(e, "train") from None
    train_seconds = time.perf_counter() - started

    leaves = jax.tree_util.tree_leaves(model.params)
    weights = {f"w{i}": np.asarray(p, dtype=np.float32) for i, p in enumerate(leaves)}
    return {
        "meta": done_meta(steps, train_seconds, num_params),
        "val_steps": np.asarray(val_steps, dtype=np.int64),
        "train_loss": np.asarray(losses, dtype=np.float64),
        **checkpoints,
        **test_preds,
        **weights,
    }
