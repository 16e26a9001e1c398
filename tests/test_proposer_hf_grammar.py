"""The hf backend's grammar mask: the vocabulary seen as bytes (a GGUF-converted tokenizer
does not say it is byte-level), every seed accepted token by token, and a constrained
sample that stays inside the grammar."""

from pathlib import Path

import pytest

from services.proposer import grammar
from services.proposer.backends.base import Sampling
from services.proposer.backends.hf import HFBackend, _lltokenizer
from services.trainer.tasks.mnist1d import Mnist1d
from tests.proposer_support import PROMPT, hf_backend

FORWARD = "    def forward(self, x):"


@pytest.fixture(scope="module")
def lm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> HFBackend:
    return hf_backend(request.config, tmp_path_factory.mktemp("adapters"))


def test_every_seed_passes_the_mask_token_by_token(lm: HFBackend) -> None:
    task = Mnist1d()
    vocabulary = _lltokenizer(lm.tokenizer, lm.eos_ids[0])
    for name, code in task.seeds():
        body = code[code.index(task.program_opening) + len(task.program_opening) :]
        cut = body.index(FORWARD) + len(FORWARD)
        c = grammar.Constraint(grammar.Compiled.of(task.grammar()), vocabulary)
        for part in (body[:cut], body[cut:]):
            for token in lm.tokenizer(part, add_special_tokens=False)["input_ids"]:
                assert c.allowed()[token], f"{name}: {lm.tokenizer.decode([token])!r} masked"
                c.consume(token)
                assert not c.error, f"{name}: {c.error}"
        assert c.done, name


def test_a_constrained_sample_stays_in_the_grammar(lm: HFBackend, tmp_path: Path) -> None:
    text = Mnist1d().grammar()
    (sample,) = lm.generate(PROMPT, 1, Sampling(0.8, 1.0, 24, (), 5, text))
    assert sample.text.startswith("\n")
    c = grammar.Constraint(grammar.Compiled.of(text), _lltokenizer(lm.tokenizer, lm.eos_ids[0]))
    for token in lm.tokenizer(sample.text, add_special_tokens=False)["input_ids"]:
        c.consume(token)
    assert not c.error, (sample.text, c.error)
