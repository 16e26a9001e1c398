"""Seed triplet-message functions for the CLRS tasks: Triplet-GMPNN's own and small variants."""
