"""The Lineage gRPC service over a real socket: statuses, health, reflection."""

from collections.abc import Iterator

import grpc
import pytest
from evo.v1 import lineage_pb2 as pb
from evo.v1 import lineage_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.lineage import server
from services.lineage.rdb import RDBStorage
from services.lineage.storage import MAX_CODE_BYTES
from tests.lineage_records import child, new_search, ok_eval, program, seed


@pytest.fixture
def channel(storage: RDBStorage) -> Iterator[grpc.Channel]:
    service = server.start(storage, "127.0.0.1", 0)
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as ch:
        yield ch
    service.stop(grace=1)


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "evo.v1.Lineage"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    reply = next(iter(reflect.ServerReflectionInfo(iter([request]), timeout=5)))
    names = {s.name for s in reply.list_services_response.service}
    assert {"evo.v1.Lineage", "grpc.health.v1.Health"} <= names


def test_a_search_is_recorded_and_queried_over_the_wire(channel: grpc.Channel) -> None:
    stub = pb_grpc.LineageStub(channel)
    made = stub.CreateSearch(new_search(token="t"), timeout=5)
    again = stub.CreateSearch(new_search(token="t"), timeout=5)
    assert made.created and not again.created and made.search.id == again.search.id
    sid = made.search.id
    s = stub.RecordCandidate(seed(sid, program(0)), timeout=5).candidate.id
    stub.RecordEvaluation(ok_eval(s, 1000, 0.2), timeout=5)
    c = stub.RecordCandidate(child(sid, program(1), [s]), timeout=5)
    retry = stub.RecordCandidate(child(sid, program(1), [s]), timeout=5)
    assert (c.created, retry.created, retry.candidate.id) == (True, False, c.candidate.id)
    stub.RecordEvaluation(ok_eval(c.candidate.id, 500, 0.2), timeout=5)
    population = stub.GetPopulation(pb.GetPopulationRequest(search_id=sid, k=1), timeout=5)
    assert [p.id for p in population.candidates] == [c.candidate.id]
    ancestors = stub.GetAncestors(pb.GetLineageRequest(candidate_id=c.candidate.id), timeout=5)
    assert [(e.candidate.id, e.depth) for e in ancestors.entries] == [(s, 1)]


@pytest.mark.parametrize(
    ("call", "code", "detail"),
    [
        (lambda st: st.GetSearch(pb.GetSearchRequest(search_id=42)), "NOT_FOUND", "no search"),
        (lambda st: st.RecordCandidate(seed(42, "x")), "NOT_FOUND", "no search"),
        (
            lambda st: st.GetCandidate(pb.GetCandidateRequest(candidate_id=7)),
            "NOT_FOUND",
            "no candidate",
        ),
        (
            lambda st: st.CreateSearch(new_search(config="{oops")),
            "INVALID_ARGUMENT",
            "not valid JSON",
        ),
        (lambda st: st.CreateSearch(pb.CreateSearchRequest()), "INVALID_ARGUMENT", "required"),
        (
            lambda st: st.ListSearches(pb.ListSearchesRequest(page_token="zz")),
            "INVALID_ARGUMENT",
            "page_token",
        ),
    ],
)
def test_bad_input_gets_a_clear_status(channel, call, code: str, detail: str) -> None:  # type: ignore[no-untyped-def]
    stub = pb_grpc.LineageStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        call(stub)
    assert err.value.code().name == code
    assert detail in err.value.details()
    assert "Traceback" not in err.value.details()


def test_empty_and_oversize_code_are_invalid_argument(channel: grpc.Channel) -> None:
    stub = pb_grpc.LineageStub(channel)
    sid = stub.CreateSearch(new_search(), timeout=5).search.id
    for code in ("", "y" * (MAX_CODE_BYTES + 1)):
        with pytest.raises(grpc.RpcError) as err:
            stub.RecordCandidate(seed(sid, code), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
