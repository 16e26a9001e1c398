"""The openai backend against a real OpenAI-compatible server: llama.cpp's own server
(xllamacpp's prebuilt wheel, built with llguidance) on the embedded GGUF, constrained and
free, and through the Proposer service where the server takes no grammar.

The same wheel's library is what the llamacpp backend calls in process (through
services/proposer/backends/llama_c.py); here it serves over HTTP, taking the task's Lark
grammar as llguidance does."""

from collections.abc import Iterator

import grpc
import pytest
from evo.v1 import common_pb2 as common
from evo.v1 import proposer_pb2 as pb
from evo.v1 import proposer_pb2_grpc as pb_grpc

xllamacpp = pytest.importorskip("xllamacpp")

from services.proposer import extract, grammar, model_files  # noqa: E402
from services.proposer import server as proposer_server  # noqa: E402
from services.proposer.backends.base import Sampling  # noqa: E402
from services.proposer.backends.openai import OpenAIBackend  # noqa: E402
from services.trainer.tasks.mnist1d import Mnist1d  # noqa: E402
from tests.proposer_support import OPENING, PROMPT  # noqa: E402


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    params = xllamacpp.CommonParams()
    params.model.path = str(model_files.default_gguf())
    params.n_ctx = 4096
    params.n_parallel = 2
    params.cpuparams.n_threads = 1
    params.port = 0  # a free port
    server = xllamacpp.Server(params)
    yield str(server.listening_address)
    del server


def test_free_samples_from_a_real_server(url: str) -> None:
    lm = OpenAIBackend(url, grammar_via="llama.cpp", timeout=300)
    try:
        assert lm.info().capabilities.grammar == "server"
        samples = lm.generate(PROMPT, 2, Sampling(temperature=0.8, max_new_tokens=16, seed=5))
    finally:
        lm.close()
    assert len(samples) == 2
    for s in samples:
        assert s.prompt_tokens > 20 and 0 < s.completion_tokens <= 16
        assert s.finish_reason in ("length", "eos_token", "stop_sequence")


def test_constrained_samples_from_a_real_server_follow_the_grammar(url: str) -> None:
    text = Mnist1d().grammar()
    lm = OpenAIBackend(url, grammar_via="llama.cpp", timeout=600)
    sampling = Sampling(temperature=0.7, top_p=0.95, max_new_tokens=320, seed=3, grammar=text)
    try:
        samples = lm.generate(PROMPT, 2, sampling)
    finally:
        lm.close()
    finished = [s for s in samples if s.finish_reason != "length"]
    assert finished, [s.text for s in samples]
    for s in finished:
        assert grammar.parse_error(text, s.text) == "", s.text
        assert extract.extract(s.text, OPENING).parse_error == "", s.text


def test_a_server_that_takes_no_grammar_is_a_clear_error(url: str) -> None:
    lm = OpenAIBackend(url, grammar_via="none", timeout=60)
    service = proposer_server.start(lm, "127.0.0.1", 0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            request = pb.GenerateRequest(
                prompt=PROMPT,
                num_samples=1,
                sampling=common.SamplingParams(max_new_tokens=4),
                program_opening=OPENING,
                grammar=Mnist1d().grammar(),
            )
            with pytest.raises(grpc.RpcError) as caught:
                pb_grpc.ProposerStub(channel).Generate(request, timeout=60)
    finally:
        service.stop(grace=1)
        lm.close()
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot apply a grammar" in caught.value.details()
