"""The Proposer service: candidate programs from a language model, and soft prompt-tuning."""

import os

# transformers imports TensorFlow (and Flax) when they are installed, as they are beside the
# trainer's `clrs` extra: seconds of start-up and hundreds of MB for nothing. PyTorch only.
for _flag, _value in (("USE_TF", "0"), ("USE_FLAX", "0"), ("USE_TORCH", "1")):
    os.environ.setdefault(_flag, _value)
