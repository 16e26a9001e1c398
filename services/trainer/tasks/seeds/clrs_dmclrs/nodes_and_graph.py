import haiku as hk
import jax
import jax.numpy as jnp


def get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts):
  """Triplet messages from node and graph features only: no edge terms."""
  tri_1 = hk.Linear(nb_triplet_fts)(z)
  tri_2 = hk.Linear(nb_triplet_fts)(z)
  tri_3 = hk.Linear(nb_triplet_fts)(z)
  tri_g = hk.Linear(nb_triplet_fts)(graph_fts)

  return (
      jnp.expand_dims(tri_1, axis=(2, 3)) +
      jnp.expand_dims(tri_2, axis=(1, 3)) +
      jnp.expand_dims(tri_3, axis=(1, 2)) +
      jnp.expand_dims(tri_g, axis=(1, 2, 3))
  )
