import functools

import haiku as hk
import jax
import jax.numpy as jnp


def get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts, out_size):
  """EvoPrompting's seed 8 (Appendix A.5), Listing 18:
  one linear layer on the nodes, tiled to keep the shape."""
  output_layer = hk.nets.MLP([out_size])
  return jnp.tile(
      jnp.expand_dims(output_layer(z), axis=(1)), [1, z.shape[1], 1, 1]
  )
