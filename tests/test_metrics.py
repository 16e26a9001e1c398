"""Prometheus metrics on every service: real servers, real calls, the real /metrics page.

The trainer's slots, queue and evaluations by status and device; the proposal service's
tokens and generation seconds (a stand-in TGI behind it); the lineage store started from
the command line with --metrics-port; gRPC calls counted by method and status code.
"""

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from evo.v1 import common_pb2 as common
from evo.v1 import proposer_pb2 as proposer_pb
from evo.v1 import proposer_pb2_grpc as proposer_grpc
from evo.v1 import trainer_pb2 as pb
from evo.v1 import trainer_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from services.common import metrics
from services.trainer import server
from services.trainer.server import task_info
from tests.reliability import free_port, service_processes

pytestmark = pytest.mark.filterwarnings("ignore:The `dict` method is deprecated")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on http://127.0.0.1:PORT/metrics, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        text = page.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return metrics.serve(free_port(), "127.0.0.1")


@pytest.fixture(scope="module")
def trainer_stub() -> Iterator[pb_grpc.TrainerStub]:
    trainer = server.Trainer(server.TrainerConfig(backend="bwrap", slots=1, warm=0, max_queue=0))
    service = server.start(trainer, "127.0.0.1", 0)
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield pb_grpc.TrainerStub(channel)
    service.stop(grace=1)
    trainer.close()


def test_the_trainer_counts_its_evaluations_slots_and_calls(
    metrics_port: int, trainer_stub: pb_grpc.TrainerStub
) -> None:
    before = scrape(metrics_port)
    seed = next(s.code for s in task_info("mnist1d").seeds if s.name == "mlp")
    request = pb.EvaluateRequest(
        program=pb.Program(code=seed), task="mnist1d", budget=pb.Budget(steps=20)
    )
    ok = trainer_stub.Evaluate(request, timeout=120)
    assert ok.status == common.EVAL_STATUS_OK, ok.message
    broken = pb.EvaluateRequest(
        program=pb.Program(code="def (:"), task="mnist1d", budget=pb.Budget(steps=20)
    )
    assert trainer_stub.Evaluate(broken, timeout=120).status == common.EVAL_STATUS_INVALID
    with pytest.raises(grpc.RpcError) as bad:
        trainer_stub.Evaluate(pb.EvaluateRequest(task="no-such-task"), timeout=30)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = scrape(metrics_port)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("evo_trainer_evaluations_total", status="OK", device="cpu") == 1
    assert grew("evo_trainer_evaluations_total", status="INVALID", device="cpu") == 1
    assert grew("evo_trainer_evaluation_seconds_count", status="OK") == 1
    assert grew("evo_grpc_requests_total", method="Evaluate", code="OK") == 2
    assert grew("evo_grpc_requests_total", method="Evaluate", code="INVALID_ARGUMENT") == 1
    assert value(after, "evo_trainer_slots") == 1
    assert value(after, "evo_trainer_slots_busy") == 0
    assert value(after, "evo_trainer_queued") == 0
    assert value(after, "evo_trainer_draining") == 0


def test_the_proposer_counts_tokens_and_seconds(metrics_port: int) -> None:
    from services.proposer import server as proposer_server
    from services.proposer.backends.tgi import TGIBackend
    from tests.proposer_support import OPENING, PROMPT
    from tests.standins.tgi import TGIStandIn

    before = scrape(metrics_port)
    with TGIStandIn() as tgi:
        backend = TGIBackend(tgi.url, timeout=5)
        service = proposer_server.start(backend, "127.0.0.1", 0)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
                stub = proposer_grpc.ProposerStub(channel)
                response = stub.Generate(
                    proposer_pb.GenerateRequest(
                        prompt=PROMPT,
                        num_samples=2,
                        sampling=common.SamplingParams(temperature=1.0, max_new_tokens=12),
                        program_opening=OPENING,
                    ),
                    timeout=30,
                )
        finally:
            service.stop(grace=1)
            backend.close()
    tokens = sum(s.completion_tokens for s in response.samples)
    after = scrape(metrics_port)
    assert tokens > 0
    assert value(after, "evo_proposer_tokens_total") - value(
        before, "evo_proposer_tokens_total"
    ) == pytest.approx(tokens)
    assert value(after, "evo_proposer_generation_seconds_total") > value(
        before, "evo_proposer_generation_seconds_total"
    )
    assert value(after, "evo_proposer_tokens_per_second") > 0


def test_the_lineage_store_serves_metrics_from_the_command_line(tmp_path: Path) -> None:
    port = free_port()
    with service_processes(tmp_path) as serve:
        serve(
            "lineage",
            ["--db", f"sqlite:///{tmp_path / 'l.db'}", "--metrics-port", str(port)],
        ).start()
        samples = scrape(port)
    # Its start-up health checks went through the interceptor.
    assert value(samples, "evo_grpc_requests_total", method="Check", code="OK") >= 1
    assert any(name == "process_resident_memory_bytes" for name, _ in samples)


def test_a_metrics_port_in_use_is_refused_naming_the_option() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="choose another --metrics-port"):
            metrics.serve(taken.getsockname()[1], "127.0.0.1")
