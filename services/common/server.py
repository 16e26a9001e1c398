"""One way to run a gRPC service: health checking, reflection, metrics, graceful SIGTERM."""

import functools
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import metrics

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
# Statuses that say the service (not the caller) is in trouble: worth a warning in its log.
_SERVER_SIDE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}

# Kubernetes waits 30 s after SIGTERM by default; finish in-flight calls well within it.
SHUTDOWN_GRACE_SECONDS = 20.0


class Service:
    """A started server. `stop()` drains in-flight calls, then marks the service NOT_SERVING."""

    def __init__(self, server: grpc.Server, health_servicer: health.HealthServicer, port: int):
        self.server = server
        self.health = health_servicer
        self.port = port

    def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()

    def wait(self) -> None:
        self.server.wait_for_termination()


def start(
    add_servicers: Callable[[grpc.Server], None],
    service_names: list[str],
    *,
    host: str,
    port: int,
    max_workers: int = 16,
) -> Service:
    """Start a server with the given servicers plus health and reflection; port 0 picks one."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=[metrics.GrpcMetrics()],
        options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)],
    )
    add_servicers(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}: is another server using the port?")
    server.start()
    for name in ["", *service_names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Service(server, health_servicer, bound)


def serve_forever(
    service: Service,
    *,
    metrics_port: int = 0,
    metrics_host: str = "0.0.0.0",
    grace: float = SHUTDOWN_GRACE_SECONDS,
    drain: Callable[[], None] | None = None,
) -> None:
    """Serve metrics (port 0: none), block until SIGTERM or SIGINT, then shut down.

    On the signal the health service says NOT_SERVING at once (readiness fails, so callers
    stop picking this replica); `drain` then runs (the trainer: refuse new work), and the
    server stops taking calls and gives those in flight `grace` seconds to finish.
    """
    metrics.serve(metrics_port, metrics_host)
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("shutting down", extra={"signal": signal.Signals(signum).name})
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done.wait()
    service.health.enter_graceful_shutdown()
    if drain is not None:
        drain()
    service.stop(grace)


def error_statuses(
    mapping: Sequence[tuple[type[Exception], grpc.StatusCode]], service: str
) -> Callable[[F], F]:
    """A servicer-method decorator: the mapped exceptions become their statuses, with
    their message as the details; anything else is logged and answered INTERNAL, so a
    bug never leaks a stack trace to the caller nor kills the server."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return method(self, request, context)
            except Exception as e:
                code = next((c for kind, c in mapping if isinstance(e, kind)), None)
                if code is None:
                    log.exception("unexpected error", extra={"method": method.__name__})
                    context.abort(
                        grpc.StatusCode.INTERNAL,
                        f"{method.__name__} failed inside the {service}; see its log",
                    )
                level = logging.WARNING if code in _SERVER_SIDE else logging.DEBUG
                log.log(level, "%s: %s", code.name, e, extra={"method": method.__name__})
                context.abort(code, str(e))

        return wrapper  # type: ignore[return-value]

    return decorate
