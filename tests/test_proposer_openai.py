"""The openai backend against a stand-in OpenAI-compatible (vLLM-flavoured) server."""

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from services.proposer.backends.base import (
    BackendError,
    InvalidRequest,
    Overloaded,
    Sampling,
    TimedOut,
    TuneSettings,
    Unavailable,
    UnknownAdapter,
    Unsupported,
)
from services.proposer.backends.openai import OpenAIBackend
from services.proposer.backends.remote import RetryPolicy
from tests.standins.openai import OpenAIStandIn

PROMPT = "import torch.nn as nn\n\nclass Model(nn.Module):"
FAST_RETRY = RetryPolicy(attempts=3, base_seconds=0.01, max_seconds=0.05)


@pytest.fixture
def server() -> Iterator[OpenAIStandIn]:
    with OpenAIStandIn(adapters=("lora-conv",)) as s:
        yield s


@pytest.fixture
def backend(server: OpenAIStandIn) -> Iterator[OpenAIBackend]:
    b = OpenAIBackend(server.url + "/v1", api_key="k", timeout=5, retry=FAST_RETRY)
    yield b
    b.close()


def test_the_stand_in_speaks_openai_errors(server: OpenAIStandIn) -> None:
    request = urllib.request.Request(
        server.url + "/v1/completions",
        json.dumps({"model": "nope", "prompt": "x"}).encode(),
        {"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 404
    assert json.loads(caught.value.read())["error"]["message"] == "The model `nope` does not exist."


def test_info_discovers_the_model_and_its_adapters(backend: OpenAIBackend) -> None:
    info = backend.info()
    assert (info.backend, info.model_id) == ("openai", "standin/tiny-coder")
    assert info.adapter_ids == ["lora-conv"] and info.capabilities.max_context_tokens == 2048
    with pytest.raises(Unsupported, match="openai backend cannot train"):
        backend.train_soft_prompt(["x"], TuneSettings())


def test_samples_token_counts_seeds_and_finish_reasons(
    backend: OpenAIBackend, server: OpenAIStandIn
) -> None:
    sampling = Sampling(temperature=0.9, top_p=0.95, max_new_tokens=300, seed=7)
    samples = backend.generate(PROMPT, 3, sampling)
    sent = server.posted("/v1/completions")
    assert sorted(b["seed"] for b in sent) == [7, 8, 9]
    assert all(
        b["n"] == 1 and b["top_p"] == 0.95 and b["model"] == "standin/tiny-coder" for b in sent
    )
    assert all(s.finish_reason == "eos_token" and s.prompt_tokens == 6 for s in samples)
    assert [s.text for s in backend.generate(PROMPT, 3, sampling)] == [s.text for s in samples]
    stopped = backend.generate(PROMPT, 1, Sampling(max_new_tokens=300, seed=1, stop=("forward",)))
    # vLLM leaves the stop string out of the text and names it in stop_reason.
    assert stopped[0].finish_reason == "stop_sequence" and stopped[0].text.endswith("def ")
    short = backend.generate(PROMPT, 1, Sampling(max_new_tokens=4, seed=1))[0]
    assert (short.finish_reason, short.completion_tokens) == ("length", 4)


def test_adapters_are_chosen_as_the_model(backend: OpenAIBackend, server: OpenAIStandIn) -> None:
    tuned = backend.generate(PROMPT, 1, Sampling(max_new_tokens=300, seed=2), "lora-conv")[0]
    assert server.posted("/v1/completions")[-1]["model"] == "lora-conv"
    assert "Conv1d" in tuned.text
    with pytest.raises(UnknownAdapter, match="'lora-x' is not served"):
        backend.generate(PROMPT, 1, Sampling(max_new_tokens=5), "lora-x")


def test_overload_is_retried_then_exhausted(backend: OpenAIBackend, server: OpenAIStandIn) -> None:
    server.faults.overloaded = 2
    assert backend.generate(PROMPT, 1, Sampling(max_new_tokens=5))[0].completion_tokens == 5
    assert len(server.posted("/v1/completions")) == 3
    server.faults.overloaded = 10
    with pytest.raises(Overloaded, match=r"Rate limit reached.*after 3 attempts"):
        backend.generate(PROMPT, 1, Sampling(max_new_tokens=5))


def test_timeouts_rejections_and_server_errors(
    backend: OpenAIBackend, server: OpenAIStandIn
) -> None:
    with pytest.raises(InvalidRequest, match="maximum context length is 2048"):
        backend.generate(PROMPT, 1, Sampling(max_new_tokens=2048))
    server.faults.generation_errors = 1
    with pytest.raises(BackendError, match="HTTP 500: CUDA error"):
        backend.generate(PROMPT, 1, Sampling(max_new_tokens=5))
    server.faults.delay_seconds = 1.5
    slow = OpenAIBackend(server.url, timeout=0.3, retry=FAST_RETRY)
    slow._info = backend.info()  # skip discovery, which the delay does not slow
    slow.model = backend.model
    started = time.perf_counter()
    with pytest.raises(TimedOut, match=r"no answer within 0.3 s"):
        slow.generate(PROMPT, 1, Sampling(max_new_tokens=5))
    assert time.perf_counter() - started < 1.2
    slow.close()


def test_an_unreachable_server_is_unavailable() -> None:
    with OpenAIStandIn() as gone:
        url = gone.url
    b = OpenAIBackend(url, timeout=2, retry=FAST_RETRY)
    with pytest.raises(Unavailable, match="cannot reach it"):
        b.info()
    b.close()
