"""The CLRS runner inside the sandbox: a candidate triplet function in Triplet-GMPNN.

The candidate defines `get_triplet_msgs`, in the paper's signature (with `out_size`: it owns
the reduction and the output layer) or dm-clrs's (see clrs_processor.py, which puts it in
the processor). The rest of the Triplet-GMPNN processor (a gated MPNN with layer norm)
and the encoders and decoders are exactly the published ones. Trained with the published
single-task settings and the job's optimiser in the train phase, which sees the training
split only and returns the parameters at each checkpoint; the score phase rebuilds the
model, loads them and returns outputs on the validation and test inputs, never scores:
validation and test outputs never enter a sandbox (their hints are the first step only,
which is all the model reads at evaluation). See services/trainer/protocol.py.
"""

import os
from typing import Any, BinaryIO

import numpy as np

from services.trainer import clrs_lib, clrs_processor, gpu_child, protocol
from services.trainer.protocol import ChildJob, StageFailure, failure_from

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


def _outputs(split: str, outs: dict[str, Any]) -> dict[str, np.ndarray]:
    return {f"{split}.out.{n}": np.asarray(dp.data, dtype=np.float32) for n, dp in outs.items()}


def _flat(params: Any) -> dict[str, np.ndarray]:
    """Haiku's {module: {name: array}} as the protocol's named float32 tensors, in name
    order (the scoring run maps them back by position)."""
    return {
        f"{module}/{name}": np.asarray(params[module][name], dtype=np.float32)
        for module in sorted(params)
        for name in sorted(params[module])
    }


def _model(job: ChildJob, dummy: Any) -> tuple[Any, Any]:
    """Stages parse and load, then the published model with the candidate's triplet
    function in its processor; returns (clrs, model)."""
    compiled = protocol.compile_candidate(job.code)
    recipe = job.clrs
    if recipe is None:
        raise StageFailure("CRASHED", "run", "a CLRS job without its recipe")
    clrs = clrs_lib.load()
    namespace: dict[str, Any] = {"__name__": "candidate"}
    try:
        exec(compiled, namespace)
    except BaseException as e:
        raise failure_from(e, "load") from None
    triplet_fn = namespace.get("get_triplet_msgs")
    if not callable(triplet_fn):
        signature = clrs_processor.SIGNATURE[recipe.triplet]
        raise StageFailure("INVALID", "load", f"the program defines no {signature}")
    factory = clrs_processor.processor_factory(clrs, recipe, triplet_fn)
    model = clrs.baselines.BaselineModel(
        spec=recipe.spec,
        dummy_trajectory=dummy,
        processor_factory=factory,
        hidden_dim=recipe.hidden_dim,
        encode_hints=recipe.encode_hints,
        decode_hints=recipe.decode_hints,
        encoder_init=recipe.encoder_init,
        use_lstm=False,
        learning_rate=job.lr,
        grad_clip_max_norm=recipe.grad_clip_max_norm,
        checkpoint_path="/tmp/clrs-checkpoints",
        dropout_prob=0.0,
        hint_teacher_forcing=recipe.hint_teacher_forcing,
        hint_repred_mode=recipe.hint_repred_mode,
        nb_msg_passing_steps=1,
    )
    return clrs, model


def _jax(job: ChildJob) -> Any:
    # XLA's CPU backend runs its own thread pool whatever OMP_NUM_THREADS says: hold it
    # to the slot's threads, or one evaluation takes every core.
    threads = max(1, job.threads)
    os.environ["XLA_FLAGS"] = (
        f"--xla_cpu_multi_thread_eigen={str(threads > 1).lower()} "
        f"intra_op_parallelism_threads={threads}"
    )
    # cpu, or cuda in a GPU sandbox (services/trainer/gpu_child.py): set before the import.
    platform = gpu_child.configure_jax()
    import jax

    jax.config.update("jax_platforms", platform)
    return jax


def train(job: ChildJob, data: dict[str, np.ndarray], out: BinaryIO) -> int:
    """The train phase: the published training loop, the parameters at each checkpoint."""
    jax = _jax(job)
    clrs = clrs_lib.load()
    assert job.clrs is not None
    train_set = clrs_lib.unflatten(clrs, "train", data, job.clrs.spec)
    n_train = len(train_set.features.lengths)
    batch_size = min(job.batch_size, n_train)
    rng = np.random.default_rng(job.seed)

    def sample() -> Any:
        return clrs_lib.batch(train_set, rng.integers(0, n_train, batch_size))

    first = sample()
    clrs, model = _model(job, first)

    # Stage: count parameters from shapes alone, before any weight is allocated.
    try:
        shapes = jax.eval_shape(
            lambda key: model.net_fn.init(
                key, [first.features], True, algorithm_index=-1,
                return_hints=False, return_all_outputs=False,
            ),
            jax.random.PRNGKey(0),
        )  # fmt: skip
    except BaseException as e:
        failure = failure_from(e, "shape_check")
        if failure.status == "CRASHED":
            failure.status = "INVALID"
            failure.message = f"the processor does not build with this triplet function: {e}"[:500]
        raise failure from None
    num_params = int(sum(np.prod(s.shape) for s in jax.tree_util.tree_leaves(shapes)))
    if job.max_params and num_params > job.max_params:
        raise StageFailure(
            "REJECTED",
            "count_params",
            f"{num_params:,} parameters, over the cap of {job.max_params:,}",
        )

    clrs_processor.use_optimizer(model, job.clrs, job.lr)
    try:
        model.init(first.features, job.seed)
    except BaseException as e:
        raise failure_from(e, "build") from None

    schedule = set(job.checkpoint_steps)
    train_key = jax.random.PRNGKey(job.seed)
    try:
        for step in range(1, job.steps + 1):
            train_key, key = jax.random.split(train_key)
            loss = float(model.feedback(key, sample() if step > 1 else first))
            if not np.isfinite(loss):
                raise StageFailure("DIVERGED", "train", f"loss became {loss} at step {step}")
            if step in schedule:
                parts = protocol.checkpoint_parts(loss, _flat(model.params))
                protocol.write_frame(out, protocol.CHECKPOINT, *parts)
                protocol.write_frame(out, protocol.PROGRESS, protocol.progress_payload(step, loss))
    except StageFailure:
        raise
    except BaseException as e:
        raise failure_from(e, "train") from None
    return 0


def score(job: ChildJob, data: dict[str, np.ndarray], checkpoints: BinaryIO, out: BinaryIO) -> int:
    """The score phase: the model rebuilt from the code, each checkpoint loaded strictly,
    its outputs on the validation inputs (and the test inputs for the last)."""
    jax = _jax(job)
    clrs = clrs_lib.load()
    assert job.clrs is not None
    # The validation inputs with zero outputs: all the model's construction reads of them
    # is their shapes.
    val = clrs_lib.unflatten(clrs, "val", data, job.clrs.spec)
    test = clrs_lib.unflatten(clrs, "test", data, job.clrs.spec)
    first = clrs_lib.batch(val, np.arange(min(job.batch_size, len(val.features.lengths))))
    clrs, model = _model(job, first)
    try:
        model.init(first.features, job.seed)
    except BaseException as e:
        raise failure_from(e, "build") from None
    template = model.params
    names = list(_flat(template))
    expected = [a.shape for a in _flat(template).values()]
    predict_key = jax.random.split(jax.random.PRNGKey(job.seed), 2)[1]
    last = len(job.checkpoint_steps) - 1
    for i in range(last + 1):
        kind, payload = protocol.read_frame(checkpoints)
        if kind != protocol.CHECKPOINT:
            raise StageFailure("CRASHED", "score", f"checkpoint {i} is missing")
        values = list(protocol.read_checkpoint(payload)[1].values())
        if [a.shape for a in values] != expected:
            raise StageFailure(
                "CRASHED", "score", f"checkpoint {i} does not fit the model rebuilt from the code"
            )
        tensors = dict(zip(names, values, strict=True))
        try:
            model.params = {
                module: {name: tensors[f"{module}/{name}"] for name in params}
                for module, params in template.items()
            }
            predictions = _outputs("val", model.predict(predict_key, val.features)[0])
            if i == last:
                predictions.update(_outputs("test", model.predict(predict_key, test.features)[0]))
        except BaseException as e:
            raise failure_from(e, "score") from None
        protocol.write_frame(out, protocol.PREDICTIONS, *protocol.bundle_parts(predictions))
    return int(sum(np.prod(s) for s in expected))
