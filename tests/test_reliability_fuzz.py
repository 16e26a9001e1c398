"""Bad input at every gRPC boundary: fuzzed request messages for every method of the
lineage store (SQLite and PostgreSQL), the trainer and the proposer, plus raw bytes that
are not messages at all.

Each call must end with an answer or a status that blames the request (never INTERNAL or
UNKNOWN, which mean the service broke: a client like the controller would retry those);
a write the store refuses must leave no row behind; what the store accepts must read back
through its own queries and keep its invariants; and each service must still answer its
health check and do real work afterwards.

The counts are small for CI and derandomised (the same examples every run). A deeper run:
`EVO_FUZZ_EXAMPLES=500 EVO_FUZZ_RANDOM=1 .venv/bin/python -m pytest tests/test_reliability_fuzz.py`.
"""

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from evo.v1 import common_pb2 as common
from evo.v1 import lineage_pb2 as pb
from evo.v1 import lineage_pb2_grpc as pb_grpc
from evo.v1 import proposer_pb2, proposer_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from services.proposer import server as proposer_server
from services.proposer.backends.tgi import TGIBackend
from services.trainer.evaluator import BadRequest, Job
from services.trainer.sandbox.base import Limits
from services.trainer.server import task_info
from tests.lineage_records import child, new_search, ok_eval, program, seed
from tests.reliability import (
    SERVING,
    InProcessLineage,
    health_status,
    lineage_in_process,
    trainer_capacity,
    trainer_in_process,
    wait_until,
)
from tests.standins.tgi import TGIStandIn

pytestmark = pytest.mark.filterwarnings("ignore:The `dict` method is deprecated")

EXAMPLES = int(os.environ.get("EVO_FUZZ_EXAMPLES", "0"))
RANDOM = os.environ.get("EVO_FUZZ_RANDOM") == "1"
# The statuses that say "your request is wrong (or I am busy)"; anything else is a fault.
REQUEST_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
TABLES = (
    "searches",
    "rounds",
    "prompts",
    "prompt_parents",
    "candidates",
    "candidate_parents",
    "evaluations",
)


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=EXAMPLES or examples,
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ---------------------------------------------------------------- messages from descriptors

SMALL = st.integers(-3, 8)  # small numbers hit the rows that exist
TEXTS = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "mnist1d", "{}", "[]", "evoprompting", "\x00", "1", "-1", "é"]),
    st.text(min_size=195, max_size=205),
    st.sampled_from([256 * 1024 + 1, 1024 * 1024 + 1]).map(lambda n: "x" * n),
)
FIELDS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_INT32: st.one_of(SMALL, st.integers(-(2**31), 2**31 - 1)),
    FieldDescriptor.TYPE_SINT32: st.one_of(SMALL, st.integers(-(2**31), 2**31 - 1)),
    FieldDescriptor.TYPE_INT64: st.one_of(SMALL, st.integers(-(2**63), 2**63 - 1)),
    FieldDescriptor.TYPE_SINT64: st.one_of(SMALL, st.integers(-(2**63), 2**63 - 1)),
    FieldDescriptor.TYPE_UINT32: st.one_of(st.integers(0, 8), st.integers(0, 2**32 - 1)),
    FieldDescriptor.TYPE_UINT64: st.one_of(st.integers(0, 8), st.integers(0, 2**64 - 1)),
    FieldDescriptor.TYPE_DOUBLE: st.floats(),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_STRING: TEXTS,
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=64),
}


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of this type: every field set or not, to any value its type allows."""
    cls = message_factory.GetMessageClass(descriptor)
    fields = {
        f.name: _field(f, depth)
        for f in descriptor.fields
        if depth < 3 or f.type != FieldDescriptor.TYPE_MESSAGE
    }
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: _build(cls, values))


def _value(f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        return messages(f.message_type, depth + 1)
    if f.type == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in f.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))
    return FIELDS[f.type]


def _field(f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    entry = f.message_type
    if entry is not None and entry.GetOptions().map_entry:
        key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
        return st.dictionaries(_value(key, depth), _value(value, depth), max_size=3)
    if f.is_repeated:
        return st.lists(_value(f, depth), max_size=4)
    return _value(f, depth)


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    msg = cls()
    for name, value in values.items():
        f = cls.DESCRIPTOR.fields_by_name[name]
        target = getattr(msg, name)
        if isinstance(value, dict):
            target.update(value)
        elif f.is_repeated:
            target.extend(value)
        elif isinstance(value, Message):
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


@dataclass
class Outcome:
    reply: Any = None
    code: grpc.StatusCode | None = None
    details: str = ""


def call(rpc: Callable[..., Any], request: Message, timeout: float = 30.0) -> Outcome:
    try:
        reply = rpc(request, timeout=timeout)
        if not isinstance(reply, Message | bytes):  # a server stream
            reply = list(reply)
        return Outcome(reply=reply)
    except grpc.RpcError as e:
        return Outcome(code=e.code(), details=e.details())  # type: ignore[attr-defined]


def assert_blames_the_request(method: str, request: Message, outcome: Outcome) -> None:
    if outcome.code is None:
        return
    assert outcome.code in REQUEST_ERRORS, (
        f"{method} answered {outcome.code.name}: {outcome.details}\nfor {request!r:.2000}"
    )
    assert "Traceback" not in outcome.details


# ---------------------------------------------------------------- the lineage store


@pytest.fixture
def store(db_url: str) -> Iterator[InProcessLineage]:
    with lineage_in_process(db_url) as service:
        # A few rows for the small ids to find: two searches, seeds, a child, an evaluation.
        stub = service.stub
        for name in ("a", "b"):
            sid = stub.CreateSearch(new_search(name), timeout=10).search.id
            first = stub.RecordCandidate(seed(sid, program(0)), timeout=10).candidate.id
            stub.RecordEvaluation(ok_eval(first, 1000, 0.2), timeout=10)
            stub.RecordCandidate(child(sid, program(1), [first]), timeout=10)
        yield service


def _counts(service: InProcessLineage) -> dict[str, int]:
    with service.storage.engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def check_store(stub: pb_grpc.LineageStub) -> None:
    """Everything stored reads back through the store's own queries and keeps its rules."""
    searches: list[pb.Search] = []
    token = ""
    while True:
        page = stub.ListSearches(pb.ListSearchesRequest(page_token=token), timeout=30)
        searches.extend(page.searches)
        if not (token := page.next_page_token):
            break
    for s in searches:
        sid = s.id
        assert s.state != pb.SEARCH_STATE_UNSPECIFIED and s.name.strip() and s.task.strip()
        stub.GetSearch(pb.GetSearchRequest(search_id=sid), timeout=30)
        stub.GetRoundStats(pb.GetRoundStatsRequest(search_id=sid), timeout=30)
        stub.GetParetoFront(pb.GetParetoFrontRequest(search_id=sid), timeout=30)
        stub.GetPopulation(pb.GetPopulationRequest(search_id=sid, k=1000), timeout=30)
        for r in stub.ListRounds(pb.ListRoundsRequest(search_id=sid), timeout=30).rounds:
            assert r.state != pb.ROUND_STATE_UNSPECIFIED
        found: list[pb.Candidate] = []
        token = ""
        while True:
            page = stub.ListCandidates(
                pb.ListCandidatesRequest(search_id=sid, page_token=token, include_code=True),
                timeout=30,
            )
            found.extend(page.candidates)
            if not (token := page.next_page_token):
                break
        ids = {c.id for c in found}
        for c in found:
            where = f"candidate {c.id} of search {sid}"
            assert c.code.strip() and c.state != pb.CANDIDATE_STATE_UNSPECIFIED, where
            assert c.origin != pb.CANDIDATE_ORIGIN_UNSPECIFIED, where
            assert set(c.parent_ids) <= ids, f"{where}: a parent from elsewhere"
            assert _finite(c.generation_seconds, c.proposer.sampling.temperature), where
            if c.prompt_id:
                prompt = stub.GetPrompt(pb.GetPromptRequest(prompt_id=c.prompt_id), timeout=30)
                assert prompt.search_id == sid, where
                assert set(prompt.parent_ids) <= ids and _finite(prompt.temperature), where
            if c.state == pb.CANDIDATE_STATE_DUPLICATE:
                assert c.duplicate_of_id in ids, where
            if c.HasField("evaluation"):
                ev = c.evaluation
                assert ev.status != common.EVAL_STATUS_UNSPECIFIED, where
                m = ev.metrics
                assert _finite(m.best_val_error, m.best_val_accuracy, m.train_seconds), where
            if c.state == pb.CANDIDATE_STATE_SCORED:
                assert c.evaluation.status == common.EVAL_STATUS_OK, where
                assert c.HasField("fitness") and _finite(c.fitness), where
                assert 0 <= c.evaluation.metrics.best_val_error <= 1, where
            if c.HasField("fitness"):
                assert _finite(c.fitness), where
            stub.GetAncestors(pb.GetLineageRequest(candidate_id=c.id), timeout=30)


LINEAGE = pb.DESCRIPTOR.services_by_name["Lineage"]


@pytest.mark.parametrize("method", [m.name for m in LINEAGE.methods])
def test_the_store_answers_fuzzed_requests(store: InProcessLineage, method: str) -> None:
    descriptor = LINEAGE.methods_by_name[method]
    rpc = getattr(store.stub, method)
    writes = method.startswith(("Create", "Record", "Update"))

    @fuzz_settings(25)
    @given(messages(descriptor.input_type))
    def one(request: Message) -> None:
        before = _counts(store) if writes else {}
        outcome = call(rpc, request)
        assert_blames_the_request(method, request, outcome)
        if writes and outcome.code is not None:
            assert _counts(store) == before, f"{method} refused but wrote: {request!r:.500}"

    one()
    check_store(store.stub)
    assert health_status(store.address) == SERVING


# ---------------------------------------------------------------- the trainer

TRAINER = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"]


SEED_CODE = next(s.code for s in task_info("mnist1d").seeds if s.name == "cnn")
NUMBERS = st.one_of(
    st.floats(),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, -1, 2**62, math.nan, math.inf, -math.inf, 1e-300]),
)


@st.composite
def evaluations(draw: st.DrawFn) -> trainer_pb2.EvaluateRequest:
    """Evaluate requests that pass for real ones (a seed's code, the real task) in all
    but their numbers, so that the fuzzing reaches past the first checks."""
    request = draw(messages(trainer_pb2.EvaluateRequest.DESCRIPTOR))
    request.program.code = draw(st.sampled_from([SEED_CODE, "class Model:\n    pass\n"]))
    request.program.language = trainer_pb2.PROGRAM_LANGUAGE_PYTORCH
    request.task = draw(st.sampled_from(["mnist1d", ""]))
    for part, names in [
        (request.budget, ["steps", "seed", "eval_every"]),
        (request.limits, ["wall_seconds", "memory_bytes", "max_processes", "max_params"]),
    ]:
        for name in names:
            value = draw(NUMBERS)
            # A float for an integer field, or a number out of its range, is left unset.
            with suppress(TypeError, ValueError):
                setattr(part, name, value)
    return request


def _requests(method: str) -> st.SearchStrategy[Message]:
    plain = messages(TRAINER.methods_by_name[method].input_type)
    return st.one_of(plain, evaluations()) if method.startswith("Evaluate") else plain


@pytest.mark.parametrize("method", [m.name for m in TRAINER.methods])
def test_the_trainer_answers_fuzzed_requests(method: str) -> None:
    with trainer_in_process(slots=1, max_queue=2) as trainer:
        channel = grpc.insecure_channel(trainer.address)
        rpc = getattr(trainer_pb2_grpc.TrainerStub(channel), method)

        @fuzz_settings(10 if method.startswith("Evaluate") else 25)
        @given(_requests(method))
        def one(request: Message) -> None:
            # A deadline short enough that a request which does start a sandbox costs
            # seconds; DEADLINE_EXCEEDED is the caller's own limit, not a fault.
            outcome = call(rpc, request, timeout=8)
            if outcome.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return
            assert_blames_the_request(method, request, outcome)
            for reply in outcome.reply if isinstance(outcome.reply, list) else [outcome.reply]:
                result = getattr(reply, "result", reply)
                if isinstance(result, trainer_pb2.EvaluateResponse):
                    assert result.status != common.EVAL_STATUS_INTERNAL, (
                        f"{result.message}\nfor {request!r:.2000}"
                    )

        try:
            one()
            # Nothing is left holding a slot.
            wait_until(
                lambda: trainer_capacity(trainer.address).slots_busy == 0,
                "the fuzzed evaluations to end",
                60,
            )
            assert health_status(trainer.address) == SERVING
        finally:
            channel.close()


# ---------------------------------------------------------------- the proposer

PROPOSER = proposer_pb2.DESCRIPTOR.services_by_name["Proposer"]


@pytest.fixture(scope="module")
def proposer() -> Iterator[str]:
    with TGIStandIn() as tgi:
        backend = TGIBackend(tgi.url, timeout=10)
        service = proposer_server.start(backend, "127.0.0.1", 0)
        yield f"127.0.0.1:{service.port}"
        service.stop(grace=1)
        backend.close()


@pytest.mark.parametrize("method", [m.name for m in PROPOSER.methods])
def test_the_proposer_answers_fuzzed_requests(proposer: str, method: str) -> None:
    descriptor = PROPOSER.methods_by_name[method]
    with grpc.insecure_channel(proposer) as channel:
        stub = proposer_pb2_grpc.ProposerStub(channel)
        rpc = getattr(stub, method)

        @fuzz_settings(25)
        @given(messages(descriptor.input_type))
        def one(request: Message) -> None:
            assert_blames_the_request(method, request, call(rpc, request))

        one()
        reply = stub.Generate(
            proposer_pb2.GenerateRequest(prompt="class Model(nn.Module):", num_samples=2),
            timeout=30,
        )
        assert len(reply.samples) == 2
    assert health_status(proposer) == SERVING


# ---------------------------------------------------------------- not messages at all


def _raw_calls(rpc: Any, method: str) -> Callable[[], None]:
    @fuzz_settings(15)
    @given(st.binary(min_size=1, max_size=300))
    def one(payload: bytes) -> None:
        # Whatever it makes of the bytes, it answers: a reply or a status.
        outcome = call(rpc, payload, timeout=8)  # type: ignore[arg-type]
        assert outcome.code != grpc.StatusCode.UNAVAILABLE, (method, outcome.details)

    return one  # type: ignore[no-any-return]


@contextmanager
def _service(name: str, tmp_path: Path) -> Iterator[str]:
    if name == "Lineage":
        with lineage_in_process(f"sqlite:///{tmp_path / 'raw.db'}") as store:
            yield store.address
    elif name == "Trainer":
        with trainer_in_process(slots=1, max_queue=2) as trainer:
            yield trainer.address
    else:
        with TGIStandIn() as tgi:
            backend = TGIBackend(tgi.url, timeout=10)
            service = proposer_server.start(backend, "127.0.0.1", 0)
            try:
                yield f"127.0.0.1:{service.port}"
            finally:
                service.stop(grace=1)
                backend.close()


@pytest.mark.parametrize("descriptor", [LINEAGE, TRAINER, PROPOSER], ids=lambda d: d.name)
def test_raw_bytes_at_every_method(descriptor: Any, tmp_path: Path) -> None:
    """Bytes that are no request at all: the service answers each call, then carries on."""
    with _service(descriptor.name, tmp_path) as address, grpc.insecure_channel(address) as channel:
        for m in descriptor.methods:
            path = f"/{descriptor.full_name}/{m.name}"
            rpc = channel.unary_stream(path) if m.server_streaming else channel.unary_unary(path)

            _raw_calls(rpc, m.name)()
        assert health_status(address) == SERVING


# ---------------------------------------------------------------- what the fuzzing found


def test_what_the_fuzzing_found_stays_fixed(store: InProcessLineage) -> None:
    """Each of these once ended INTERNAL (a client retries that) or stored garbage."""
    stub = store.stub
    sid = stub.CreateSearch(new_search("found"), timeout=10).search.id

    def refused(call: Callable[[], Any]) -> str:
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        return e.value.details()  # type: ignore[attr-defined,no-any-return]

    # An enum number the contract does not define.
    bad_state = pb.UpdateSearchStateRequest(search_id=sid, state=99)  # type: ignore[arg-type]
    assert "SearchState has no value 99" in refused(
        lambda: stub.UpdateSearchState(bad_state, timeout=10)
    )
    bad_filter = pb.ListCandidatesRequest(search_id=sid, states=[-1])  # type: ignore[list-item]
    refused(lambda: stub.ListCandidates(bad_filter, timeout=10))
    # NUL: PostgreSQL's text cannot hold it. Refused in names, kept as U+FFFD in free text
    # (a sandboxed program can print one into its log), alike on both databases.
    assert "NUL" in refused(lambda: stub.CreateSearch(new_search("a\x00b"), timeout=10))
    c = stub.RecordCandidate(seed(sid, "x = 1\x00\n"), timeout=10).candidate
    assert c.code == "x = 1\ufffd\n"
    again = stub.RecordCandidate(seed(sid, "x = 1\x00\n"), timeout=10)
    assert (again.created, again.candidate.id) == (False, c.id)  # still idempotent
    evaluation = ok_eval(c.id, 1000, 0.2)
    evaluation.evaluation.log_tail = "step 1\x00\n"
    evaluation.evaluation.message = "a\x00b"
    stored = stub.RecordEvaluation(evaluation, timeout=10).candidate
    read = stub.GetCandidate(pb.GetCandidateRequest(candidate_id=stored.id), timeout=10)
    assert (read.evaluation.log_tail, read.evaluation.message) == ("step 1\ufffd\n", "a\ufffdb")
    # Numbers that would sort and sum wrongly: NaN or infinite fitness, temperatures, times.
    other = stub.RecordCandidate(seed(sid, program(3), 1), timeout=10).candidate
    nan_fitness = ok_eval(other.id, 1000, 0.2)
    nan_fitness.fitness = math.nan
    assert "fitness must be a finite number" in refused(
        lambda: stub.RecordEvaluation(nan_fitness, timeout=10)
    )
    slow = ok_eval(other.id, 1000, 0.2)
    slow.evaluation.metrics.train_seconds = math.inf
    refused(lambda: stub.RecordEvaluation(slow, timeout=10))
    hot = pb.RecordPromptRequest(
        search_id=sid, round_index=1, prompt_index=0, text="p", temperature=math.nan
    )
    refused(lambda: stub.RecordPrompt(hot, timeout=10))
    check_store(stub)


def test_a_nan_time_limit_is_a_bad_request() -> None:
    """The trainer once failed inside (INTERNAL) on a NaN wall-clock limit."""
    request = trainer_pb2.EvaluateRequest(
        program=trainer_pb2.Program(code=SEED_CODE),
        task="mnist1d",
        limits=trainer_pb2.Limits(wall_seconds=math.nan),
    )
    with pytest.raises(BadRequest, match="wall_seconds is not a number"):
        Job.from_request(request, Limits())
