"""The Proposer service: candidate programs from a language model, and soft prompt-tuning."""
