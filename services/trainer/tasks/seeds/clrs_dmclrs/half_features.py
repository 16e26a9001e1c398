import haiku as hk
import jax
import jax.numpy as jnp


def get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts):
  """Triplet-GMPNN's messages with half as many triplet features."""
  h = max(1, nb_triplet_fts // 2)
  tri_1 = hk.Linear(h)(z)
  tri_2 = hk.Linear(h)(z)
  tri_3 = hk.Linear(h)(z)
  tri_e_1 = hk.Linear(h)(edge_fts)
  tri_e_2 = hk.Linear(h)(edge_fts)
  tri_e_3 = hk.Linear(h)(edge_fts)
  tri_g = hk.Linear(h)(graph_fts)

  return (
      jnp.expand_dims(tri_1, axis=(2, 3)) +
      jnp.expand_dims(tri_2, axis=(1, 3)) +
      jnp.expand_dims(tri_3, axis=(1, 2)) +
      jnp.expand_dims(tri_e_1, axis=3) +
      jnp.expand_dims(tri_e_2, axis=2) +
      jnp.expand_dims(tri_e_3, axis=1) +
      jnp.expand_dims(tri_g, axis=(1, 2, 3))
  )
