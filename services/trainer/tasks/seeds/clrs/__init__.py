"""The paper's nine CLRS seeds (EvoPrompting, arXiv 2302.14838, Appendix A.5, Listings
11-19), each renamed `get_triplet_msgs`. The candidate takes
`(z, edge_fts, graph_fts, nb_triplet_fts, out_size)` and returns (B, N, N, out_size): it
owns the reduction over the triplet axis and the output layer."""
