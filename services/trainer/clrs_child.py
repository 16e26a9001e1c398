"""The CLRS runner inside the sandbox: a candidate triplet function in Triplet-GMPNN.

The candidate defines `get_triplet_msgs`, in the paper's signature (with `out_size`: it owns
the reduction and the output layer) or dm-clrs's (see clrs_processor.py, which puts it in
the processor). The rest of the Triplet-GMPNN processor (a gated MPNN with layer norm)
and the encoders and decoders are exactly the published ones. Trained with the published
single-task settings and the job's optimiser; returns predictions and weights, never scores:
validation and test outputs never enter the sandbox (their hints are the first step
only, which is all the model reads at evaluation).
"""

import json
import os
import time
from typing import Any, BinaryIO

import numpy as np

from services.trainer import clrs_lib, clrs_processor
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
    import jax

    jax.config.update("jax_platforms", "cpu")
    clrs = clrs_lib.load()
    namespace: dict[str, Any] = {"__name__": "candidate"}
    try:
        exec(compiled, namespace)
    except BaseException as e:
        raise _failure_from(e, "load") from None
    triplet_fn = namespace.get("get_triplet_msgs")
    if not callable(triplet_fn):
        signature = clrs_processor.SIGNATURE[job.get("triplet", "paper")]
        raise StageFailure("INVALID", "load", f"the program defines no {signature}")

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

    factory = clrs_processor.processor_factory(clrs, job, triplet_fn)
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

    clrs_processor.use_optimizer(model, job)
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
