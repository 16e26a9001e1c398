"""The tgi backend: the real `text-generation` AsyncClient against a stand-in TGI server
over a real socket, including overload (429), timeouts and adapter passthrough."""

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from text_generation import AsyncClient
from text_generation.errors import OverloadedError, ValidationError

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
from services.proposer.backends.remote import RetryPolicy
from services.proposer.backends.tgi import TGIBackend
from tests.standins.tgi import TGIStandIn

PROMPT = "import torch.nn as nn\n\nclass Model(nn.Module):"
# The client (text-generation 0.7) still calls pydantic's deprecated `.dict()`.
pytestmark = pytest.mark.filterwarnings("ignore:The `dict` method is deprecated")
FAST_RETRY = RetryPolicy(attempts=4, base_seconds=0.01, max_seconds=0.05)


@pytest.fixture
def tgi() -> Iterator[TGIStandIn]:
    with TGIStandIn(adapters=("lora-conv",)) as server:
        yield server


@pytest.fixture
def backend(tgi: TGIStandIn) -> Iterator[TGIBackend]:
    b = TGIBackend(tgi.url, adapters=["lora-conv"], timeout=5, retry=FAST_RETRY)
    yield b
    b.close()


def post(url: str, body: Any) -> tuple[int, str, bytes]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


# ---------------------------------------------------------------- the stand-in's protocol


def test_root_route_returns_a_one_element_list_and_generate_an_object(tgi: TGIStandIn) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 5, "details": True}}
    status, kind, raw = post(tgi.url + "/", body)
    listed = json.loads(raw)
    assert (status, kind) == (200, "application/json")
    assert isinstance(listed, list) and len(listed) == 1
    status, _, raw = post(tgi.url + "/generate", body)
    single = json.loads(raw)
    assert status == 200 and single == listed[0]
    assert single["details"]["finish_reason"] == "length"
    assert single["details"]["generated_tokens"] == 5 == len(single["details"]["tokens"])
    no_details = json.loads(post(tgi.url + "/generate", {"inputs": PROMPT})[2])
    assert "details" not in no_details and no_details["generated_text"]


def test_generate_stream_sends_sse_with_text_and_details_only_at_the_end(tgi: TGIStandIn) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 200, "details": True}}
    status, kind, raw = post(tgi.url + "/generate_stream", body)
    assert status == 200 and kind == "text/event-stream"
    events = [json.loads(line[5:]) for line in raw.decode().split("\n\n") if line]
    assert [e["index"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    last = events[-1]
    assert last["details"]["finish_reason"] == "eos_token" and last["token"]["special"]
    assert last["generated_text"] == "".join(e["token"]["text"] for e in events[:-1])


def test_errors_have_tgi_status_codes_and_bodies(tgi: TGIStandIn) -> None:
    status, _, raw = post(tgi.url + "/generate", {"inputs": ""})
    assert status == 422
    assert json.loads(raw) == {
        "error": "Input validation error: `inputs` cannot be empty",
        "error_type": "validation",
    }
    tgi.faults.overloaded, tgi.faults.generation_errors, tgi.faults.incomplete = 1, 1, 1
    expected = [(429, "overloaded"), (424, "generation"), (500, "incomplete_generation")]
    for code, kind in expected:
        status, _, raw = post(tgi.url + "/generate", {"inputs": PROMPT})
        assert (status, json.loads(raw)["error_type"]) == (code, kind)
    with urllib.request.urlopen(tgi.url + "/health", timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(tgi.url + "/info", timeout=5) as resp:
        info = json.loads(resp.read())
    assert info["max_total_tokens"] == 2048 and info["model_id"]


# ---------------------------------------------------------------- the real client


def test_the_real_async_client_posts_to_the_root_and_parses_details(tgi: TGIStandIn) -> None:
    async def go() -> tuple[Any, list[Any]]:
        client = AsyncClient(tgi.url, timeout=5)
        one = await client.generate(PROMPT, max_new_tokens=300, do_sample=True, seed=3)
        stream = [t async for t in client.generate_stream(PROMPT, max_new_tokens=300, seed=3)]
        return one, stream

    one, stream = asyncio.run(go())
    assert one.details.finish_reason.value == "eos_token"
    assert one.details.seed == 3 and "def forward" in one.generated_text
    assert stream[-1].generated_text and stream[-1].details is not None
    assert [path for _, path, _ in tgi.requests] == ["/", "/"]
    assert tgi.posted("/")[0]["parameters"]["details"] is True


def test_the_real_async_client_raises_tgi_error_types(tgi: TGIStandIn) -> None:
    client = AsyncClient(tgi.url, timeout=5)
    tgi.faults.overloaded = 1
    with pytest.raises(OverloadedError, match="overloaded"):
        asyncio.run(client.generate(PROMPT))
    with pytest.raises(ValidationError, match="stop sequences"):
        asyncio.run(client.generate(PROMPT, stop_sequences=list("abcde")))


# ---------------------------------------------------------------- the backend


def test_samples_use_consecutive_seeds_and_report_tokens(
    backend: TGIBackend, tgi: TGIStandIn
) -> None:
    samples = backend.generate(PROMPT, 4, Sampling(temperature=0.7, max_new_tokens=300, seed=10))
    sent = tgi.posted("/")
    assert sorted(b["parameters"]["seed"] for b in sent) == [10, 11, 12, 13]
    assert all(b["parameters"]["temperature"] == 0.7 and b["parameters"]["do_sample"] for b in sent)
    for s in samples:
        assert s.finish_reason == "eos_token" and "class" not in s.text
        assert s.prompt_tokens == 6  # the stand-in's whitespace tokenizer
        assert s.completion_tokens > 10 and s.latency_seconds > 0
    again = backend.generate(PROMPT, 4, Sampling(temperature=0.7, max_new_tokens=300, seed=10))
    assert [s.text for s in again] == [s.text for s in samples]


def test_greedy_and_stop_sequences_and_length(backend: TGIBackend, tgi: TGIStandIn) -> None:
    greedy = backend.generate(PROMPT, 2, Sampling(temperature=0, max_new_tokens=300))
    assert greedy[0].text == greedy[1].text
    sent = tgi.posted("/")[-1]["parameters"]
    assert sent["do_sample"] is False and sent["temperature"] is None and sent["seed"] is None
    stopped = backend.generate(PROMPT, 1, Sampling(max_new_tokens=300, seed=1, stop=("forward",)))
    assert stopped[0].finish_reason == "stop_sequence" and stopped[0].text.endswith("forward(self,")
    short = backend.generate(PROMPT, 1, Sampling(max_new_tokens=3, seed=1))
    assert (short[0].finish_reason, short[0].completion_tokens) == ("length", 3)


def test_requests_are_in_flight_together(backend: TGIBackend, tgi: TGIStandIn) -> None:
    tgi.faults.delay_seconds = 0.4
    started = time.perf_counter()
    backend.generate(PROMPT, 8, Sampling(max_new_tokens=5, seed=1))
    assert time.perf_counter() - started < 8 * 0.4 / 2, "the 8 requests ran one after another"


def test_overload_is_retried_with_backoff_then_succeeds(
    backend: TGIBackend, tgi: TGIStandIn
) -> None:
    tgi.faults.overloaded = 3  # fewer than the 4 attempts of one request
    samples = backend.generate(PROMPT, 1, Sampling(max_new_tokens=5, seed=1))
    assert len(samples) == 1 and samples[0].completion_tokens == 5
    assert len(tgi.posted("/")) == 4


def test_overload_that_outlasts_the_retries_is_a_clear_error(
    backend: TGIBackend, tgi: TGIStandIn
) -> None:
    tgi.faults.overloaded = 100
    with pytest.raises(Overloaded, match=r"overloaded: Model is overloaded \(after 4 attempts\)"):
        backend.generate(PROMPT, 1, Sampling(max_new_tokens=5))
    assert len(tgi.posted("/")) == 4


def test_a_request_past_its_timeout_fails_without_retry(tgi: TGIStandIn) -> None:
    tgi.faults.delay_seconds = 1.5
    slow = TGIBackend(tgi.url, timeout=0.3, retry=FAST_RETRY)
    started = time.perf_counter()
    with pytest.raises(TimedOut, match=r"no answer within 0.3 s"):
        slow.generate(PROMPT, 1, Sampling(max_new_tokens=5))
    assert time.perf_counter() - started < 1.2
    slow.close()


def test_adapter_id_is_passed_through_to_tgi(backend: TGIBackend, tgi: TGIStandIn) -> None:
    sampling = Sampling(max_new_tokens=300, seed=4)
    plain = backend.generate(PROMPT, 1, sampling)[0]
    tuned = backend.generate(PROMPT, 1, sampling, "lora-conv")[0]
    first, second = tgi.posted("/")
    assert "adapter_id" not in first["parameters"]
    assert second["parameters"]["adapter_id"] == "lora-conv"
    assert second["parameters"]["details"] is True
    assert "Conv1d" in tuned.text and tuned.text != plain.text


def test_unknown_adapters_are_refused_before_tgi_silently_ignores_them(
    backend: TGIBackend, tgi: TGIStandIn
) -> None:
    with pytest.raises(UnknownAdapter, match=r"'lora-x' is not among .*lora-conv"):
        backend.generate(PROMPT, 1, Sampling(max_new_tokens=5), "lora-x")
    assert tgi.posted("/") == []


def test_validation_and_generation_errors(backend: TGIBackend, tgi: TGIStandIn) -> None:
    with pytest.raises(InvalidRequest, match="up to 4 stop sequences"):
        backend.generate(PROMPT, 1, Sampling(max_new_tokens=5, stop=tuple("abcde")))
    with pytest.raises(InvalidRequest, match="must be <= 2048"):
        backend.generate(PROMPT, 1, Sampling(max_new_tokens=2045))
    tgi.faults.generation_errors = 1
    with pytest.raises(BackendError, match="CUDA out of memory"):
        backend.generate(PROMPT, 1, Sampling(max_new_tokens=5))


def test_info_and_no_prompt_tuning(backend: TGIBackend) -> None:
    info = backend.info()
    assert (info.backend, info.model_id) == ("tgi", "standin/tiny-coder")
    assert info.capabilities.max_context_tokens == 2048 and not info.capabilities.prompt_tuning
    assert info.adapter_ids == ["lora-conv"]
    with pytest.raises(Unsupported, match="the tgi backend cannot train soft prompts"):
        backend.train_soft_prompt(["x"], TuneSettings())


def test_an_unreachable_server_is_unavailable_after_retries() -> None:
    with TGIStandIn() as gone:
        url = gone.url
    b = TGIBackend(url, timeout=2, retry=FAST_RETRY)
    with pytest.raises(Unavailable, match=r"cannot reach it.*after 4 attempts"):
        b.generate(PROMPT, 1, Sampling(max_new_tokens=5))
    b.close()
