"""The Proposer gRPC service: validates requests, calls a backend, extracts programs."""

import dataclasses
import logging
import math
import time

import grpc
from evo.v1 import proposer_pb2 as pb
from evo.v1 import proposer_pb2_grpc as pb_grpc

from services.common import addresses, metrics
from services.common import server as grpc_server
from services.proposer import extract
from services.proposer.backends import base

log = logging.getLogger(__name__)

DEFAULT_PORT = addresses.DEFAULT_PORTS["proposer"]
MAX_SAMPLES = 64
MAX_NEW_TOKENS = 8192
# Hashes of programs not to copy, per request (64 characters each: about 1.3 MB).
MAX_AVOIDED = 20_000
DEFAULT_MAX_NEW_TOKENS = 512
# A GenerateRequest without `sampling` samples at the paper's middle temperature.
DEFAULT_SAMPLING = base.Sampling(temperature=0.8, top_p=1.0, max_new_tokens=512)
# The paper's prompt-tuning settings, used for fields left 0.
PAPER_TUNING = base.TuneSettings()

_STATUS: list[tuple[type[Exception], grpc.StatusCode]] = [
    (base.UnknownAdapter, grpc.StatusCode.NOT_FOUND),
    (base.NoGrammar, grpc.StatusCode.FAILED_PRECONDITION),
    (base.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (base.Unsupported, grpc.StatusCode.FAILED_PRECONDITION),
    (base.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (base.TimedOut, grpc.StatusCode.DEADLINE_EXCEEDED),
    (base.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (base.BackendError, grpc.StatusCode.UNAVAILABLE),
]


class BadRequest(Exception):
    """The request breaks the contract; the message says which field and why."""


_grpc_errors = grpc_server.error_statuses(
    [(BadRequest, grpc.StatusCode.INVALID_ARGUMENT), *_STATUS], "proposer"
)


def sampling_from(request: pb.GenerateRequest) -> base.Sampling:
    """The request's sampling settings, checked; fields left 0 take their defaults."""
    if len(request.avoid_normalized_hashes) > MAX_AVOIDED:
        raise BadRequest(
            f"avoid_normalized_hashes holds at most {MAX_AVOIDED} hashes, got "
            f"{len(request.avoid_normalized_hashes)}"
        )
    novelty = None
    if request.avoid_normalized_hashes:
        hashes = frozenset(request.avoid_normalized_hashes)
        novelty = base.Novelty(request.program_opening, hashes)
    if not request.HasField("sampling"):
        return dataclasses.replace(DEFAULT_SAMPLING, grammar=request.grammar, novelty=novelty)
    s = request.sampling
    if not math.isfinite(s.temperature) or not 0 <= s.temperature <= 5:
        raise BadRequest(f"sampling.temperature must be in [0, 5] (0 greedy), got {s.temperature}")
    if not math.isfinite(s.top_p) or not 0 <= s.top_p <= 1:
        raise BadRequest(f"sampling.top_p must be in [0, 1] (0 = no cut), got {s.top_p}")
    if not 0 <= s.max_new_tokens <= MAX_NEW_TOKENS:
        raise BadRequest(
            f"sampling.max_new_tokens must be in 1..{MAX_NEW_TOKENS}, got {s.max_new_tokens}"
        )
    if s.seed < 0:
        raise BadRequest(f"sampling.seed must be >= 0 (0 = unseeded), got {s.seed}")
    return base.Sampling(
        temperature=s.temperature,
        top_p=s.top_p or 1.0,
        max_new_tokens=s.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        stop=tuple(s.stop),
        seed=s.seed or None,
        grammar=request.grammar,
        novelty=novelty,
    )  # fmt: skip


def tune_settings_from(request: pb.TrainSoftPromptRequest) -> base.TuneSettings:
    """Fields left 0 take the paper's values (16 tokens, 5 epochs, batch 16, lr 0.1)."""
    checks = [
        ("num_virtual_tokens", request.num_virtual_tokens, 0, 512),
        ("epochs", request.epochs, 0, 1000),
        ("batch_size", request.batch_size, 0, 1024),
    ]
    for name, value, low, high in checks:
        if not low <= value <= high:
            raise BadRequest(f"{name} must be in 1..{high} (0 = the paper's), got {value}")
    lr = request.learning_rate
    if not math.isfinite(lr) or not 0 <= lr <= 10:
        raise BadRequest(f"learning_rate must be in (0, 10] (0 = 0.1), got {lr}")
    return base.TuneSettings(
        num_virtual_tokens=request.num_virtual_tokens or PAPER_TUNING.num_virtual_tokens,
        epochs=request.epochs or PAPER_TUNING.epochs,
        batch_size=request.batch_size or PAPER_TUNING.batch_size,
        learning_rate=lr or PAPER_TUNING.learning_rate,
        seed=request.seed,
        init_adapter_id=request.init_adapter_id,
    )


class ProposerServicer(pb_grpc.ProposerServicer):
    def __init__(self, backend: base.Backend) -> None:
        self.backend = backend

    @_grpc_errors
    def Generate(self, request, context):
        if not request.prompt.strip():
            raise BadRequest("prompt is empty")
        if not 1 <= request.num_samples <= MAX_SAMPLES:
            raise BadRequest(f"num_samples must be in 1..{MAX_SAMPLES}, got {request.num_samples}")
        sampling = sampling_from(request)
        if sampling.grammar and not self.backend.info().capabilities.grammar:
            raise base.NoGrammar(
                f"the {self.backend.name} backend cannot apply a grammar: sample free (search "
                "config `proposer.sampling: free`), or serve the model with a backend that "
                "can (llamacpp, hf, openai on vLLM)"
            )
        started = time.perf_counter()
        completions = self.backend.generate(
            request.prompt,
            request.num_samples,
            sampling,
            request.adapter_id,
            cancelled=lambda: not context.is_active(),
        )
        samples = [self._sample(c, request.program_opening, sampling) for c in completions]
        metrics.record_generation(
            sum(s.completion_tokens for s in samples), time.perf_counter() - started
        )
        log.info(
            "generated",
            extra={
                "samples": len(samples),
                "adapter_id": request.adapter_id,
                "seconds": round(time.perf_counter() - started, 3),
                "completion_tokens": sum(s.completion_tokens for s in samples),
            },
        )
        return pb.GenerateResponse(
            samples=samples,
            backend=self.backend.name,
            model_id=self.backend.info().model_id,
            adapter_id=request.adapter_id,
        )

    @staticmethod
    def _sample(c: base.Completion, opening: str, sampling: base.Sampling) -> pb.Sample:
        found = extract.extract(c.text, opening, sampling.stop)
        return pb.Sample(
            raw_completion=c.text,
            program=found.program,
            parse_error=found.parse_error,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            latency_seconds=c.latency_seconds,
            finish_reason=c.finish_reason,
        )

    @_grpc_errors
    def GetInfo(self, request, context):
        info = self.backend.info()
        caps = info.capabilities
        return pb.ProposerInfo(
            backend=info.backend,
            model_id=info.model_id,
            capabilities=pb.ProposerCapabilities(
                prompt_tuning=caps.prompt_tuning,
                adapters=caps.adapters,
                batched_sampling=caps.batched_sampling,
                max_context_tokens=caps.max_context_tokens,
                grammar=caps.grammar,
            ),
            adapter_ids=info.adapter_ids,
        )

    @_grpc_errors
    def TrainSoftPrompt(self, request, context):
        if not request.examples:
            raise BadRequest("examples is empty: give at least one training text")
        if not all(e.strip() for e in request.examples):
            raise BadRequest("examples contains an empty text")
        settings = tune_settings_from(request)
        result = self.backend.train_soft_prompt(list(request.examples), settings)
        log.info(
            "tuned",
            extra={"adapter_id": result.adapter_id, "losses": result.epoch_losses},
        )
        return pb.TrainSoftPromptResponse(
            adapter_id=result.adapter_id,
            epoch_losses=result.epoch_losses,
            final_loss=result.final_loss,
            num_examples=result.num_examples,
            train_seconds=result.train_seconds,
        )


def start(backend: base.Backend, host: str = "127.0.0.1", port: int = DEFAULT_PORT):  # type: ignore[no-untyped-def]
    """Start the Proposer service (plus health and reflection) on host:port."""
    servicer = ProposerServicer(backend)
    return grpc_server.start(
        lambda server: pb_grpc.add_ProposerServicer_to_server(servicer, server),
        [pb.DESCRIPTOR.services_by_name["Proposer"].full_name],
        host=host,
        port=port,
    )
