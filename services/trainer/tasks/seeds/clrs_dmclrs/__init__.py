"""Seed triplet-message functions in dm-clrs's own signature (`triplet=dmclrs`): the
candidate returns (B, N, N, N, H) triplets, the processor max-reduces them and applies
its fixed output layer. Triplet-GMPNN's own function and small variants of it, written
for this project (not the paper's seeds: those are in ../clrs)."""
