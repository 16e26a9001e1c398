import functools

import haiku as hk
import jax
import jax.numpy as jnp


def get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts, out_size):
  """EvoPrompting's seed 9 (Appendix A.5), Listing 19:
  bilinear node, edge and graph representations (Mnih and Hinton, 2007)."""
  def rep_fn(x, size):
    proj = hk.nets.MLP([size])
    ff = hk.nets.MLP([size * 8, size])
    return proj(x) * ff(x)

  triplet_node_reps = [rep_fn(z, nb_triplet_fts) for _ in range(3)]
  triplet_edge_reps = [rep_fn(edge_fts, nb_triplet_fts) for _ in range(3)]
  triplet_graph_rep = rep_fn(graph_fts, nb_triplet_fts)
  node_pair_permutations = [(2, 3), (1, 3), (1, 2)]
  triplets = functools.reduce(
      lambda x, y: x + y,
      [
          jnp.expand_dims(tri_node_rep, axis=perm)
          for tri_node_rep, perm in zip(triplet_node_reps, node_pair_permutations)
      ],
  )
  triplets += functools.reduce(
      lambda x, y: x + y,
      [
          jnp.expand_dims(tri_edge_rep, axis=i)
          for tri_edge_rep, i in zip(triplet_edge_reps, range(3, 0, -1))
      ],
  )
  triplets += jnp.expand_dims(triplet_graph_rep, axis=(1, 2, 3))
  return rep_fn(jnp.max(triplets, axis=1), out_size)
