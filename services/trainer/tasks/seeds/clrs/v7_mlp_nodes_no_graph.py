import functools

import haiku as hk
import jax
import jax.numpy as jnp


def get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts, out_size):
  """EvoPrompting's seed 7 (Appendix A.5), Listing 17:
  MLP node representations and no graph representation."""
  node_reps = [hk.nets.MLP([nb_triplet_fts]) for _ in range(3)]
  edge_reps = [hk.Linear(nb_triplet_fts) for _ in range(3)]
  triplet_node_reps = [node_rep(z) for node_rep in node_reps]
  triplet_edge_reps = [edge_rep(edge_fts) for edge_rep in edge_reps]
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
  output_layer = hk.Linear(out_size)
  return output_layer(jnp.max(triplets, axis=1))
