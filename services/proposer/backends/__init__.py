"""Language-model backends behind the Proposer service."""
