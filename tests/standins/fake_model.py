"""A deterministic 'language model' for stand-in servers: small PyTorch programs as tokens.

The same (prompt, seed, adapter, temperature) always gives the same program; a different
seed or adapter gives a different one; greedy decoding ignores the seed. Tokens are
whitespace-led word pieces, so counts and stop sequences behave like a real tokenizer's.
"""

import hashlib
import random
import re
from dataclasses import dataclass

EOS = {"id": 0, "text": "<|endoftext|>", "special": True}
_PIECE = re.compile(r"\s*\S+|\s+")


def tokenize(text: str) -> list[str]:
    return _PIECE.findall(text)


def token_id(piece: str) -> int:
    return 1 + int.from_bytes(hashlib.sha256(piece.encode()).digest()[:2], "big")


# dm-clrs's signature, and the paper's (the function reduces and projects to out_size).
TRIPLET_OPENING = "def get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts):"
PAPER_TRIPLET_OPENING = "def get_triplet_msgs(z, edge_fts, graph_fts, nb_triplet_fts, out_size):"
_TRIPLET_TERMS = {
    "z": "jnp.expand_dims(hk.Linear({h})(z), axis={axes})",
    "edge_fts": "jnp.expand_dims(hk.Linear({h})(edge_fts), axis={axes})",
}


def triplet_program(rng: random.Random, paper: bool = False) -> str:
    """A body for the CLRS task's `get_triplet_msgs`: a random subset of its terms; in the
    paper's signature reduced (max or mean) over the triplet axis and projected."""
    h = rng.choice(["nb_triplet_fts", "nb_triplet_fts // 2", "4"])
    terms = [
        _TRIPLET_TERMS["z"].format(h=h, axes=axes)
        for axes in ("(2, 3)", "(1, 3)", "(1, 2)")
        if paper or rng.random() < 0.8  # the paper's: all three, so the shape is full
    ] or [_TRIPLET_TERMS["z"].format(h=h, axes="(2, 3)")]
    terms += [
        _TRIPLET_TERMS["edge_fts"].format(h=h, axes=axis)
        for axis in ("3", "2", "1")
        if rng.random() < 0.5
    ]
    body = "\n      + ".join(terms)
    if paper:
        reduce = rng.choice(["jnp.max", "jnp.mean"])
        projected = f"hk.Linear(out_size)({reduce}(triplets, axis=1))"
        return f"\n  triplets = (\n      {body}\n  )\n  return {projected}\n"
    return f"\n  return (\n      {body}\n  )\n"


def program(rng: random.Random, adapter: str) -> str:
    """A body for `class Model(nn.Module):`; an adapter shifts it toward convolutions."""
    width = rng.choice([16, 32, 64, 128])
    if adapter or rng.random() < 0.3:
        layers = f"nn.Conv1d(1, {width}, 3, padding=1), nn.ReLU(), nn.Flatten(), "
        layers += f"nn.Linear({width} * 40, 10)"
        head = "x.unsqueeze(1)"
    else:
        layers = f"nn.Linear(40, {width}), nn.ReLU(), nn.Linear({width}, 10)"
        head = "x"
    return (
        "\n    def __init__(self):\n        super().__init__()\n"
        f"        self.net = nn.Sequential({layers})\n\n"
        f"    def forward(self, x):\n        return self.net({head})\n"
    )


@dataclass
class Generation:
    pieces: list[str]
    finish_reason: str
    seed: int | None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def generate(
    prompt: str,
    max_new_tokens: int,
    stop: list[str],
    seed: int | None,
    sample: bool,
    adapter: str = "",
    temperature: float = 1.0,
) -> Generation:
    """Up to max_new_tokens pieces; stops after a stop sequence appears, or at EOS."""
    used_seed = (seed if seed is not None else random.getrandbits(63)) if sample else None
    key = f"{prompt}|{used_seed}|{adapter}|{temperature if sample else 0}"
    rng = random.Random(hashlib.sha256(key.encode()).digest())
    pieces: list[str] = []
    text = None
    if prompt.rstrip().endswith(TRIPLET_OPENING):
        text = triplet_program(rng)
    elif prompt.rstrip().endswith(PAPER_TRIPLET_OPENING):
        text = triplet_program(rng, paper=True)
    for piece in tokenize(text or program(rng, adapter)):
        if len(pieces) == max_new_tokens:
            return Generation(pieces, "length", used_seed)
        pieces.append(piece)
        if any(s and s in "".join(pieces) for s in stop):
            return Generation(pieces, "stop_sequence", used_seed)
    if len(pieces) == max_new_tokens:
        return Generation(pieces, "length", used_seed)
    return Generation(pieces, "eos_token", used_seed)
