"""The lineage store restarted, and its database connections dropped, in mid-search.

- SQLite: the store is a real `evo serve lineage` process, SIGKILLed twice during a search
  and started again on the same port and file.
- PostgreSQL: the store's connections are terminated by the server
  (`pg_terminate_backend`), three times while a write is inside its transaction (held there
  by a gate on the store's engine) and then every half second for the rest of the search;
  and twice a committed write's reply is held past the controller's deadline.

Either way the controller retries its writes, and the search ends with exactly the lineage
of an uninterrupted run: nothing recorded twice, nothing lost.
"""

import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psycopg
import pytest
from evo.v1 import lineage_pb2_grpc as pb_grpc
from sqlalchemy import event

from controller import clients
from tests.postgres import fresh_database
from tests.reliability import (
    LM_SEARCH,
    ControllerThread,
    Gate,
    Stack,
    differences,
    proposer_in_process,
    reference,
    search_config,
    service_processes,
    snapshot,
    stack_in_process,
    trainer_in_process,
    wait_until,
)
from tests.reliability import candidates as list_candidates

pytestmark = pytest.mark.filterwarnings("ignore:The `dict` method is deprecated")
T = TypeVar("T")
# Writes whose reply is held past the controller's deadline, after they are committed.
LATE_REPLIES = {"record_candidate": "RecordCandidate", "record_evaluation": "RecordEvaluation"}


def unless_down(fn: Callable[[], T]) -> Callable[[], T | None]:
    """A poll that counts a store that is down (or reconnecting) as 'not yet'."""

    def poll() -> T | None:
        try:
            return fn()
        except grpc.RpcError:
            return None

    return poll


def test_the_store_killed_and_restarted_mid_search(tmp_path: Path) -> None:
    db = ["--db", f"sqlite:///{tmp_path / 'lineage.db'}"]
    with (
        trainer_in_process() as trainer,
        proposer_in_process() as proposer,
        service_processes(tmp_path) as serve,
    ):
        store = serve("lineage", db).start()
        config = search_config(
            LM_SEARCH,
            lineage=store.address,
            trainers=[trainer.address],
            proposer=proposer.address,
        )
        with grpc.insecure_channel(store.address) as channel:
            stub = pb_grpc.LineageStub(channel)
            want = reference(config, stub)
            run = ControllerThread(config)
            try:
                moments = [
                    ("two seeds scored", lambda cs: sum(c.HasField("evaluation") for c in cs) >= 2),
                    ("round 1 begun", lambda cs: any(c.round_index == 1 for c in cs)),
                ]
                for what, reached in moments:
                    wait_until(
                        unless_down(
                            lambda reached=reached: (
                                not run.thread.is_alive()
                                or reached(list_candidates(stub, run.search_id))
                            )
                        ),
                        what,
                        300,
                    )
                    assert run.thread.is_alive(), run.log()
                    retried = len(run.messages("retrying lineage store"))
                    store.kill(signal.SIGKILL)
                    store.wait_exit(30)
                    wait_until(
                        lambda retried=retried: (
                            len(run.messages("retrying lineage store")) >= retried + 2
                        ),
                        "the controller to retry the store",
                        120,
                    )
                    store = serve("lineage", db, port=store.port).start()
                run.wait(400)
            finally:
                run.close()
            got = snapshot(stub, run.search_id)
    assert got == want, differences(got, want)


def _drop_connections(server_url: str, database: str) -> int:
    """Terminate every connection to `database`, as a failover or an admin would."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return sum(1 for (ok,) in rows if ok)


@pytest.fixture
def pg_stack(postgres_url: str) -> Iterator[tuple[Stack, str]]:
    name = "evo_reliability_drops"
    url = fresh_database(postgres_url, name)
    with stack_in_process(url) as stack:
        yield stack, name


def _slow_after_writing(storage: Any, method: str) -> Gate:
    """A gate that holds a write's reply after the write is committed."""
    gate = Gate()
    write = getattr(storage, method)

    def held(request: Any) -> Any:
        stored = write(request)
        gate.passing()
        return stored

    setattr(storage, method, held)
    return gate


def test_database_connections_dropped_mid_write(
    pg_stack: tuple[Stack, str], postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, database = pg_stack
    stub = stack.lineage.stub
    want = reference(stack.config(), stub)
    # A store that wrote but answered too late: the controller's deadline passes, it
    # retries, and the idempotent write hands back the row it already made.
    monkeypatch.setattr(clients, "LINEAGE_TIMEOUT_SECONDS", 5.0)
    late = {m: _slow_after_writing(stack.lineage.storage, m) for m in LATE_REPLIES}
    # A gate inside the store's transactions: it holds the first statement that matches.
    held = Gate()
    wanted: list[str] = []

    def before_execute(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if wanted and statement.startswith(wanted[0]):
            held.passing()

    engine = stack.lineage.storage.engine
    event.listen(engine, "before_cursor_execute", before_execute)
    run = ControllerThread(stack.config())
    dropped = 0
    stop_dropping = threading.Event()
    try:
        for statement in ("INSERT INTO candidates", "INSERT INTO evaluations", "UPDATE rounds"):
            wanted[:] = [statement]
            held.arm()
            wait_until(
                lambda: held.hit.is_set() or not run.thread.is_alive(),
                f"a store write to reach {statement!r}",
                300,
            )
            assert run.thread.is_alive(), run.log()
            dropped += _drop_connections(postgres_url, database)
            held.release()
        wanted.clear()
        for method, gate in late.items():
            rpc = LATE_REPLIES[method]
            gate.arm()
            wait_until(
                lambda gate=gate: gate.hit.is_set() or not run.thread.is_alive(),
                f"a {rpc} call",
                300,
            )
            wait_until(
                lambda rpc=rpc: run.messages(f"{rpc} after DEADLINE_EXCEEDED"),
                f"the controller to retry {rpc} after its deadline",
                60,
            )
            gate.release()

        def keep_dropping() -> None:
            nonlocal dropped
            while not stop_dropping.wait(0.5):
                dropped += _drop_connections(postgres_url, database)

        dropper = threading.Thread(target=keep_dropping, daemon=True)
        dropper.start()
        run.wait(400)
    finally:
        stop_dropping.set()
        held.release()
        for gate in late.values():
            gate.release()
        run.close()
        event.remove(engine, "before_cursor_execute", before_execute)
    retries = run.messages("retrying lineage store")
    assert len(retries) >= 5, "each held write failed and was retried"
    assert dropped >= 3
    got = snapshot(stub, run.search_id)
    assert got == want, differences(got, want)
    print(f"{dropped} connections dropped; {len(retries)} store calls retried")
