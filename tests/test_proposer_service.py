"""The Proposer gRPC service over a real socket, on the real SmolLM2 and on a stand-in TGI."""

from collections.abc import Iterator

import grpc
import pytest
from evo.v1 import common_pb2 as common
from evo.v1 import proposer_pb2 as pb
from evo.v1 import proposer_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.proposer import extract, server
from services.proposer.backends.remote import RetryPolicy
from services.proposer.backends.tgi import TGIBackend
from tests.proposer_support import OPENING, PROMPT, hf_backend
from tests.standins.tgi import TGIStandIn

pytestmark = pytest.mark.filterwarnings("ignore:The `dict` method is deprecated")


@pytest.fixture(scope="module")
def hf_stub(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[pb_grpc.ProposerStub]:
    backend = hf_backend(request.config, tmp_path_factory.mktemp("adapters"))
    service = server.start(backend, "127.0.0.1", 0)
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield pb_grpc.ProposerStub(channel)
    service.stop(grace=1)


@pytest.fixture
def tgi_service() -> Iterator[tuple[pb_grpc.ProposerStub, TGIStandIn, grpc.Channel]]:
    with TGIStandIn() as tgi:
        retry = RetryPolicy(attempts=3, base_seconds=0.01, max_seconds=0.02)
        backend = TGIBackend(tgi.url, timeout=0.5, retry=retry)
        service = server.start(backend, "127.0.0.1", 0)
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            yield pb_grpc.ProposerStub(channel), tgi, channel
        service.stop(grace=1)
        backend.close()


def generate(n: int = 2, seed: int = 9, adapter: str = "", **sampling) -> pb.GenerateRequest:  # type: ignore[no-untyped-def]
    params = {"temperature": 1.0, "max_new_tokens": 12, "seed": seed, **sampling}
    return pb.GenerateRequest(
        prompt=PROMPT,
        num_samples=n,
        sampling=common.SamplingParams(**params),
        adapter_id=adapter,
        program_opening=OPENING,
    )


def test_hf_samples_come_back_with_programs_and_parse_status(hf_stub) -> None:  # type: ignore[no-untyped-def]
    reply = hf_stub.Generate(generate(), timeout=120)
    assert reply.backend == "hf" and "SmolLM2-135M" in reply.model_id
    assert len(reply.samples) == 2
    for s in reply.samples:
        assert s.raw_completion and s.program.startswith(OPENING)
        assert s.parse_error == extract.parse_error(s.program)
        assert s.prompt_tokens > 20 and 1 <= s.completion_tokens <= 12
        assert s.latency_seconds > 0 and s.finish_reason in ("length", "eos_token")
    again = hf_stub.Generate(generate(), timeout=120)
    assert [s.raw_completion for s in again.samples] == [s.raw_completion for s in reply.samples]


def test_hf_info_and_a_tuning_call_that_changes_later_generations(hf_stub) -> None:  # type: ignore[no-untyped-def]
    info = hf_stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    assert info.backend == "hf" and info.capabilities.prompt_tuning
    assert info.capabilities.batched_sampling and info.capabilities.max_context_tokens == 8192
    examples = [PROMPT + f"\n    def __init__(self):\n        self.fc = nn.Linear(40, {w})\n"
                for w in (10, 20, 30)]  # fmt: skip
    tuned = hf_stub.TrainSoftPrompt(
        pb.TrainSoftPromptRequest(
            examples=examples, num_virtual_tokens=4, epochs=2, batch_size=2, seed=1
        ),
        timeout=300,
    )
    assert tuned.adapter_id.startswith("sp-") and tuned.num_examples == 3
    assert len(tuned.epoch_losses) == 2 and tuned.final_loss == tuned.epoch_losses[-1]
    assert tuned.adapter_id in hf_stub.GetInfo(pb.GetInfoRequest(), timeout=10).adapter_ids
    base = hf_stub.Generate(generate(n=3, max_new_tokens=16), timeout=120)
    with_prompt = hf_stub.Generate(
        generate(n=3, max_new_tokens=16, adapter=tuned.adapter_id), timeout=120
    )
    assert with_prompt.adapter_id == tuned.adapter_id
    assert [s.raw_completion for s in with_prompt.samples] != [
        s.raw_completion for s in base.samples
    ]


@pytest.mark.parametrize(
    ("request_", "code", "detail"),
    [
        (pb.GenerateRequest(prompt=" ", num_samples=1), "INVALID_ARGUMENT", "prompt is empty"),
        (pb.GenerateRequest(prompt="x", num_samples=0), "INVALID_ARGUMENT", "1..64, got 0"),
        (pb.GenerateRequest(prompt="x", num_samples=65), "INVALID_ARGUMENT", "1..64, got 65"),
        (generate(temperature=-1.0), "INVALID_ARGUMENT", "temperature must be in [0, 5]"),
        (generate(top_p=1.5), "INVALID_ARGUMENT", "top_p must be in [0, 1]"),
        (generate(max_new_tokens=-3), "INVALID_ARGUMENT", "max_new_tokens must be in 1..8192"),
        (generate(seed=-1), "INVALID_ARGUMENT", "seed must be >= 0"),
        (generate(adapter="sp-000000000000000000000000"), "NOT_FOUND", "no soft prompt"),
        (generate(max_new_tokens=8190), "INVALID_ARGUMENT", "exceed the model's 8192 tokens"),
        (
            pb.GenerateRequest(prompt="x", num_samples=1, avoid_normalized_hashes=["0"] * 20_001),
            "INVALID_ARGUMENT",
            "avoid_normalized_hashes holds at most 20000 hashes, got 20001",
        ),
    ],
)
def test_bad_generate_requests_get_clear_statuses(hf_stub, request_, code, detail) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        hf_stub.Generate(request_, timeout=30)
    assert caught.value.code().name == code
    assert detail in caught.value.details()


@pytest.mark.parametrize(
    ("request_", "code", "detail"),
    [
        (pb.TrainSoftPromptRequest(), "INVALID_ARGUMENT", "examples is empty"),
        (pb.TrainSoftPromptRequest(examples=["a", ""]), "INVALID_ARGUMENT", "empty text"),
        (pb.TrainSoftPromptRequest(examples=["a"], epochs=-1), "INVALID_ARGUMENT", "epochs"),
        (
            pb.TrainSoftPromptRequest(examples=["a"], init_adapter_id="sp-missing"),
            "NOT_FOUND",
            "sp-missing",
        ),
    ],
)
def test_bad_tuning_requests_get_clear_statuses(hf_stub, request_, code, detail) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        hf_stub.TrainSoftPrompt(request_, timeout=30)
    assert (caught.value.code().name, detail in caught.value.details()) == (code, True)


def test_health_and_reflection(tgi_service) -> None:  # type: ignore[no-untyped-def]
    _, _, channel = tgi_service
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service="evo.v1.Proposer"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    names = {s.name for s in next(iter(reflect.ServerReflectionInfo(iter([ask]), timeout=5)))
             .list_services_response.service}  # fmt: skip
    assert "evo.v1.Proposer" in names


def test_tgi_through_the_service(tgi_service) -> None:  # type: ignore[no-untyped-def]
    stub, _, _ = tgi_service
    reply = stub.Generate(generate(n=3, max_new_tokens=300), timeout=10)
    assert reply.backend == "tgi" and reply.model_id == "standin/tiny-coder"
    for s in reply.samples:
        assert s.program.startswith("class Model(nn.Module):\n    def __init__(self):")
        assert s.parse_error == "" and s.finish_reason == "eos_token"
    info = stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    assert info.backend == "tgi" and not info.capabilities.prompt_tuning


def test_tgi_cannot_tune_overloads_and_timeouts_map_to_statuses(tgi_service) -> None:  # type: ignore[no-untyped-def]
    stub, tgi, _ = tgi_service
    with pytest.raises(grpc.RpcError) as caught:
        stub.TrainSoftPrompt(pb.TrainSoftPromptRequest(examples=["x"]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "the tgi backend cannot train soft prompts" in caught.value.details()

    tgi.faults.overloaded = 100
    with pytest.raises(grpc.RpcError) as caught:
        stub.Generate(generate(n=1), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Model is overloaded (after 3 attempts)" in caught.value.details()

    tgi.faults.overloaded, tgi.faults.delay_seconds = 0, 1.0
    with pytest.raises(grpc.RpcError) as caught:
        stub.Generate(generate(n=1), timeout=10)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no answer within 0.5 s" in caught.value.details()

    tgi.faults.delay_seconds = 0
    with pytest.raises(grpc.RpcError) as caught:
        stub.Generate(generate(n=1, adapter="lora-x"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_programs_to_avoid_reach_the_backend_as_novelty() -> None:
    """The controller sends the normalised hashes of the search's candidates; a backend
    that checks statements gets them with the opening that makes a completion a program."""
    from services.common import codehash
    from services.proposer.server import sampling_from

    program = "class Model(nn.Module):\n    def forward(self, x):\n        return x\n"
    request = pb.GenerateRequest(
        prompt="x",
        num_samples=1,
        program_opening="class Model(nn.Module):",
        avoid_normalized_hashes=[codehash.normalized_hash(program)],
    )
    novelty = sampling_from(request).novelty
    assert novelty is not None
    # A comment and other spacing are the same program; another return is not.
    assert novelty.copies("  # a copy\n    def forward(self, x):\n        return  x\n")
    assert not novelty.copies("\n    def forward(self, x):\n        return x + 1\n")
    assert sampling_from(pb.GenerateRequest(prompt="x", num_samples=1)).novelty is None
