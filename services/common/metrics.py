"""Prometheus metrics: one endpoint per service, the gRPC calls of all, and each one's own.

Every service started through services/common/server.py counts its gRPC calls by method
and status code and times them (`evo_grpc_*`); with `--metrics-port` (or EVO_METRICS_PORT)
it serves them as Prometheus text on http://HOST:PORT/metrics. The trainer adds its
slots, queue and evaluations (`evo_trainer_*`), the proposal service the tokens it
generates and the seconds it spends on them (`evo_proposer_*`: tokens per second is
rate(tokens) / rate(seconds)). The metrics live in this process's default registry, so
every number is this process's since it started.
"""

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import click
import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

METRICS_PORT_ENV = "EVO_METRICS_PORT"
# Evaluations take seconds to many minutes; calls to the store take milliseconds.
_EVALUATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, float("inf"))

GRPC_REQUESTS = Counter(
    "evo_grpc_requests", "gRPC calls answered, by method and status code", ["method", "code"]
)
GRPC_SECONDS = Histogram("evo_grpc_request_seconds", "gRPC call duration", ["method"])

TRAINER_SLOTS = Gauge("evo_trainer_slots", "Evaluation slots of this trainer")
TRAINER_SLOTS_BUSY = Gauge("evo_trainer_slots_busy", "Slots running an evaluation now")
TRAINER_QUEUED = Gauge("evo_trainer_queued", "Evaluations waiting for a slot")
TRAINER_DRAINING = Gauge("evo_trainer_draining", "1 while the trainer drains before it stops")
TRAINER_EVALUATIONS = Counter(
    "evo_trainer_evaluations", "Evaluations finished, by status and device", ["status", "device"]
)
TRAINER_EVALUATION_SECONDS = Histogram(
    "evo_trainer_evaluation_seconds",
    "Wall-clock seconds of one evaluation, sandbox start to score",
    ["status"],
    buckets=_EVALUATION_BUCKETS,
)

PROPOSER_TOKENS = Counter("evo_proposer_tokens", "Completion tokens generated")
PROPOSER_SECONDS = Counter(
    "evo_proposer_generation_seconds", "Seconds spent generating (divide tokens by it)"
)
PROPOSER_TOKENS_PER_SECOND = Gauge(
    "evo_proposer_tokens_per_second", "Completion tokens per second of the last request"
)


def serve(port: int, host: str = "0.0.0.0") -> int:
    """Serve /metrics on `port` (0: do not serve); returns the port. OSError names the fix."""
    if not port:
        return 0
    try:
        server, _thread = start_http_server(port, addr=host)
    except OSError as e:
        raise OSError(
            f"cannot serve metrics on {host}:{port} ({e}): choose another --metrics-port"
        ) from None
    bound = int(server.server_address[1])
    log.info("metrics", extra={"url": f"http://{host}:{bound}/metrics"})
    return bound


def record_evaluation(status: str, device: str, seconds: float) -> None:
    TRAINER_EVALUATIONS.labels(status=status, device=device).inc()
    TRAINER_EVALUATION_SECONDS.labels(status=status).observe(seconds)


def record_generation(tokens: int, seconds: float) -> None:
    PROPOSER_TOKENS.inc(tokens)
    PROPOSER_SECONDS.inc(max(seconds, 0.0))
    if seconds > 0:
        PROPOSER_TOKENS_PER_SECOND.set(tokens / seconds)


class GrpcMetrics(grpc.ServerInterceptor):
    """Counts and times every unary and server-streaming call by its final status code."""

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method.rsplit("/", 1)[-1]
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _timed_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _timed_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _code(context: grpc.ServicerContext, failed: bool) -> str:
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "UNKNOWN" if failed else "OK"


def _timed_unary(behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        started, failed = time.perf_counter(), True
        try:
            response = behaviour(request, context)
            failed = False
            return response
        finally:
            GRPC_SECONDS.labels(method=method).observe(time.perf_counter() - started)
            GRPC_REQUESTS.labels(method=method, code=_code(context, failed)).inc()

    return call


def _timed_stream(behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        started, failed = time.perf_counter(), True
        try:
            yield from behaviour(request, context)
            failed = False
        finally:
            GRPC_SECONDS.labels(method=method).observe(time.perf_counter() - started)
            GRPC_REQUESTS.labels(method=method, code=_code(context, failed)).inc()

    return call


metrics_option = click.option(
    "--metrics-port",
    type=int,
    default=lambda: int(os.environ.get(METRICS_PORT_ENV) or 0),
    show_default="0: off ($EVO_METRICS_PORT)",
    help="Serve Prometheus metrics on this port (http://HOST:PORT/metrics).",
)
