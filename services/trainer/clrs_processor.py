"""Where a candidate triplet function goes in Triplet-GMPNN, and the optimiser it trains with.

Two search spaces (the task option `triplet=`):

- `paper` (the default; EvoPrompting, arXiv 2302.14838, Appendix A.4-A.5): the candidate is
  `get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts, out_size)` and returns the
  triplet messages (B, N, N, out_size) itself: the reduction over the triplet axis and the
  output layer are its own, so mean, max-minus-min or sum aggregation can be written.
  `PaperTripletMPNN` is dm-clrs's Triplet-GMPNN step (an MPNN over the full graph with
  gating, layer norm and a two-layer message MLP) with that one call in place of dm-clrs's
  `o3(max(get_triplet_msgs(...)))`.
- `dmclrs`: dm-clrs's own signature `get_triplet_msgs(z, edge_fts, graph_fts,
  nb_triplet_fts)` returning (B, N, N, N, H); the processor max-reduces and applies its
  fixed output layer. The candidate replaces dm-clrs's module-level function.

The optimiser (the task option `optimizer=`): `adamw` (the paper trains CLRS children with
AdamW) or `adam` (dm-clrs's own). Both keep dm-clrs's gradient clipping. The paper gives
no weight decay; `adamw` uses optax's default, 1e-4.
"""

from collections.abc import Callable
from typing import Any

from services.trainer.protocol import ClrsRecipe

TRIPLET_SIGNATURES = ("paper", "dmclrs")
OPTIMIZERS = ("adamw", "adam")
ADAMW_WEIGHT_DECAY = 1e-4  # optax.adamw's default; the paper names none
SIGNATURE = {
    "paper": "get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts, out_size)",
    "dmclrs": "get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts)",
}


def processor_factory(clrs: Any, recipe: ClrsRecipe, triplet_fn: Callable[..., Any]) -> Any:
    """The processor factory BaselineModel builds Triplet-GMPNN with, the candidate in it."""
    signature = recipe.triplet
    use_ln, nb_triplet_fts = recipe.use_ln, recipe.nb_triplet_fts
    if signature == "dmclrs":
        # The processor calls the module-level function: the candidate takes its place.
        clrs.processors.get_triplet_msgs = triplet_fn
        return clrs.processors.get_processor_factory(
            recipe.processor, use_ln=use_ln, nb_triplet_fts=nb_triplet_fts
        )
    if signature != "paper":
        raise ValueError(f"triplet signature {signature!r}: one of {TRIPLET_SIGNATURES}")
    cls = paper_processor_class(clrs)

    def factory(out_size: int) -> Any:
        return cls(
            triplet_fn,
            out_size=out_size,
            msgs_mlp_sizes=[out_size, out_size],
            use_ln=use_ln,
            use_triplets=True,
            nb_triplet_fts=nb_triplet_fts,
            gated=True,
            name="triplet_gmpnn",
        )

    return factory


def paper_processor_class(clrs: Any) -> type:
    """Triplet-GMPNN whose triplet messages are the candidate's whole output (built here
    because dm-clrs is imported only inside the sandbox)."""
    hk = clrs.processors.hk
    jax = clrs.processors.jax
    jnp = clrs.processors.jnp

    class PaperTripletMPNN(clrs.processors.MPNN):  # type: ignore[misc, name-defined]
        def __init__(self, triplet_fn: Callable[..., Any], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.triplet_fn = triplet_fn

        def __call__(self, node_fts, edge_fts, graph_fts, adj_mat, hidden, **unused):  # type: ignore[no-untyped-def]
            """dm-clrs's PGN step with an all-ones adjacency (MPNN), as in processors.py."""
            b, n, _ = node_fts.shape
            z = jnp.concatenate([node_fts, hidden], axis=-1)
            msg_1 = hk.Linear(self.mid_size)(z)
            msg_2 = hk.Linear(self.mid_size)(z)
            msg_e = hk.Linear(self.mid_size)(edge_fts)
            msg_g = hk.Linear(self.mid_size)(graph_fts)
            o1 = hk.Linear(self.out_size)
            o2 = hk.Linear(self.out_size)

            tri_msgs = self.triplet_fn(z, edge_fts, graph_fts, self.nb_triplet_fts, self.out_size)
            want = (b, n, n, self.out_size)
            if getattr(tri_msgs, "shape", None) != want:
                raise ValueError(
                    f"get_triplet_msgs returned shape {getattr(tri_msgs, 'shape', None)}; "
                    f"the processor needs (B, N, N, out_size) = {want}: reduce over the "
                    "triplet axis and apply the output layer"
                )
            if self.activation is not None:
                tri_msgs = self.activation(tri_msgs)

            msgs = (
                jnp.expand_dims(msg_1, axis=1)
                + jnp.expand_dims(msg_2, axis=2)
                + msg_e
                + jnp.expand_dims(msg_g, axis=(1, 2))
            )
            if self._msgs_mlp_sizes is not None:
                msgs = hk.nets.MLP(self._msgs_mlp_sizes)(jax.nn.relu(msgs))
            if self.mid_act is not None:
                msgs = self.mid_act(msgs)
            # MPNN: every node is every node's neighbour; dm-clrs's default max reduction.
            msgs = jnp.max(msgs, axis=1)

            ret = o1(z) + o2(msgs)
            if self.activation is not None:
                ret = self.activation(ret)
            if self.use_ln:
                ret = hk.LayerNorm(axis=-1, create_scale=True, create_offset=True)(ret)
            if self.gated:
                gate1 = hk.Linear(self.out_size)
                gate2 = hk.Linear(self.out_size)
                gate3 = hk.Linear(self.out_size, b_init=hk.initializers.Constant(-3))
                gate = jax.nn.sigmoid(gate3(jax.nn.relu(gate1(z) + gate2(msgs))))
                ret = ret * gate + hidden * (1 - gate)
            return ret, tri_msgs

    return PaperTripletMPNN


def use_optimizer(model: Any, recipe: ClrsRecipe, lr: float) -> None:
    """Give a BaselineModel the job's optimiser; call before `model.init`."""
    import optax

    name = recipe.optimizer
    if name == "adam":
        return  # dm-clrs's own: clipping, then Adam
    if name != "adamw":
        raise ValueError(f"optimizer {name!r}: one of {OPTIMIZERS}")
    clip = recipe.grad_clip_max_norm
    steps = [optax.clip_by_global_norm(clip)] if clip else []
    steps += [
        optax.scale_by_adam(),
        optax.scale(-lr),
        decoupled_weight_decay(lr * ADAMW_WEIGHT_DECAY),
    ]
    model.opt = optax.chain(*steps)


def decoupled_weight_decay(step: float) -> Any:
    """AdamW's decay, u - lr x wd x theta, for an optimiser called without the parameters.

    dm-clrs's BaselineModel calls `opt.update(grads, state)` with no `params`, which
    optax's own `add_decayed_weights` needs. The parameters are tracked in the state
    instead (theta + u after every step: exact, since nothing else moves them), in the
    same per-parameter shape as Adam's moments so that dm-clrs's state handling applies.
    """
    from typing import NamedTuple

    import jax
    import jax.numpy as jnp
    import optax

    class Shadow(NamedTuple):
        params: Any

    def init(params: Any) -> Shadow:
        return Shadow(jax.tree_util.tree_map(jnp.asarray, params))

    def update(updates: Any, state: Shadow, params: Any = None) -> tuple[Any, Shadow]:
        theta = state.params if params is None else params
        updates = jax.tree_util.tree_map(lambda u, p: u - step * p, updates, theta)
        return updates, Shadow(jax.tree_util.tree_map(lambda p, u: p + u, theta, updates))

    return optax.GradientTransformation(init, update)
