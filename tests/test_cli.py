"""The `evo` command line against a real `evo serve lineage` process."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from evo.v1 import lineage_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.lineage_records import child, new_search, ok_eval, program, seed
from tests.postgres import _free_port, wait_for_port

EVO = str(Path(sys.executable).parent / "evo")


def evo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EVO, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, int]]]:
    """A lineage server process with one small search recorded in it."""
    port = _free_port()
    db = tmp_path_factory.mktemp("cli") / "lineage.db"
    proc = subprocess.Popen(
        [EVO, "serve", "lineage", "--port", str(port), "--db", f"sqlite:///{db}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_port("127.0.0.1", port)
    address = f"127.0.0.1:{port}"
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.LineageStub(ch)
        sid = stub.CreateSearch(new_search(name="demo"), timeout=5).search.id
        s1 = stub.RecordCandidate(seed(sid, program(1), 0), timeout=5).candidate.id
        s2 = stub.RecordCandidate(seed(sid, program(2), 1), timeout=5).candidate.id
        stub.RecordEvaluation(ok_eval(s1, 4800, 0.135), timeout=5)
        stub.RecordEvaluation(ok_eval(s2, 9000, 0.07), timeout=5)
        kid = stub.RecordCandidate(child(sid, program(3), [s1, s2]), timeout=5).candidate.id
        stub.RecordEvaluation(ok_eval(kid, 4000, 0.1), timeout=5)
        grandkid = stub.RecordCandidate(
            child(sid, program(4), [kid], round_index=2), timeout=5
        ).candidate.id
        ids = {"search": sid, "s1": s1, "s2": s2, "kid": kid, "grandkid": grandkid}
    yield address, ids
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""


def test_server_answers_health_checks(served: tuple[str, dict[str, int]]) -> None:
    address, _ = served
    with grpc.insecure_channel(address) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_search_list_and_show(served: tuple[str, dict[str, int]]) -> None:
    address, ids = served
    table = evo("search", "list", "--address", address)
    assert table.returncode == 0 and "demo" in table.stdout and "mnist1d" in table.stdout
    # The address may come from the environment instead of a flag.
    listed = evo("search", "list", "--json", env={"EVO_LINEAGE_ADDRESS": address})
    assert [s["name"] for s in json.loads(listed.stdout)] == ["demo"]
    shown = evo("search", "show", str(ids["search"]), "--address", address, "--json")
    data = json.loads(shown.stdout)
    assert data["search"]["num_candidates"] == "4"  # int64 is a string in proto JSON
    assert [int(c["id"]) for c in data["top"]] == [ids["kid"], ids["s2"], ids["s1"]]
    assert [r["round_index"] for r in data["rounds"][1:]] == [1, 2]
    text = evo("search", "show", str(ids["search"]), "--address", address)
    assert "Rounds" in text.stdout and "-400.0" in text.stdout


def test_lineage_queries(served: tuple[str, dict[str, int]]) -> None:
    address, ids = served
    anc = evo("lineage", "ancestors", str(ids["grandkid"]), "--address", address, "--json")
    got = [(int(e["candidate"]["id"]), e["depth"]) for e in json.loads(anc.stdout)]
    assert got == [(ids["kid"], 1), (ids["s1"], 2), (ids["s2"], 2)]
    table = evo("lineage", "ancestors", str(ids["grandkid"]), "--address", address)
    assert "Ancestors of candidate" in table.stdout
    desc = evo("lineage", "descendants", str(ids["s2"]), "--address", address, "--json")
    assert [int(e["candidate"]["id"]) for e in json.loads(desc.stdout)] == [
        ids["kid"],
        ids["grandkid"],
    ]
    shown = evo("lineage", "show", str(ids["kid"]), "--address", address)
    assert "class Model(nn.Module)" in shown.stdout and "smollm2-135m" in shown.stdout


def test_tree_in_three_formats(served: tuple[str, dict[str, int]]) -> None:
    address, ids = served
    sid = str(ids["search"])
    text = evo("lineage", "tree", sid, "--address", address).stdout
    lines = text.splitlines()
    assert lines[0].startswith(f"#{ids['s1']} seed0")
    assert any(f"#{ids['kid']}" in ln and f"also from #{ids['s2']}" in ln for ln in lines)
    assert any(ln.strip().startswith(f"└── #{ids['grandkid']}") for ln in lines)
    dot = evo("lineage", "tree", sid, "--format", "dot", "--address", address).stdout
    assert dot.startswith("digraph") and f"c{ids['s2']} -> c{ids['kid']};" in dot
    data = json.loads(evo("lineage", "tree", sid, "--format", "json", "--address", address).stdout)
    assert len(data["candidates"]) == 4
    assert sorted(map(tuple, data["edges"])) == sorted(
        [(ids["s1"], ids["kid"]), (ids["s2"], ids["kid"]), (ids["kid"], ids["grandkid"])]
    )


def test_pareto(served: tuple[str, dict[str, int]]) -> None:
    address, ids = served
    points = json.loads(evo("pareto", str(ids["search"]), "--address", address, "--json").stdout)
    assert [(int(p["candidate"]["id"]), int(p["num_params"])) for p in points] == [
        (ids["kid"], 4000),
        (ids["s2"], 9000),
    ]
    assert "Pareto front" in evo("pareto", str(ids["search"]), "--address", address).stdout


def test_errors_are_one_line_and_name_the_fix(served: tuple[str, dict[str, int]]) -> None:
    address, _ = served
    missing = evo("search", "show", "999", "--address", address)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: NOT_FOUND: no search with id 999"
    down = evo("search", "list", "--address", f"127.0.0.1:{_free_port()}")
    assert down.returncode == 1 and "evo serve lineage" in down.stderr
    assert "Traceback" not in down.stderr


def test_db_upgrade_and_current(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'lineage.db'}"
    before = evo("db", "current", "--db", url)
    assert "database: empty" in before.stdout
    up = evo("db", "upgrade", "--db", url)
    assert up.returncode == 0 and "is at revision 0001" in up.stdout
    assert "database: 0001; needed: 0001" in evo("db", "current", "--db", url).stdout


def test_serve_refuses_an_old_schema_without_migrating(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    result = evo("serve", "lineage", "--db", url, "--no-migrate", "--port", str(_free_port()))
    assert result.returncode == 1 and "run `evo db upgrade" in result.stderr


def test_each_service_s_commands_stand_without_the_controller() -> None:
    """The `evo` command is assembled in evo_cli/; a service's commands import no controller
    code, and every default port comes from services/common/addresses.py."""
    code = (
        "import sys\n"
        "import services.lineage.cli, services.trainer.cli, services.proposer.cli\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'controller'], 'controller'\n"
        "from services.common.addresses import DEFAULT_PORTS\n"
        "from services.lineage import server as l; from services.trainer import server as t\n"
        "from services.proposer import server as p\n"
        "assert (l.DEFAULT_PORT, t.DEFAULT_PORT, p.DEFAULT_PORT) == (\n"
        "    DEFAULT_PORTS['lineage'], DEFAULT_PORTS['trainer'], DEFAULT_PORTS['proposer'])\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    helps = {
        name: subprocess.run(
            [EVO, "serve", name, "--help"], capture_output=True, text=True, timeout=60
        ).stdout
        for name in ("lineage", "trainer", "lm")
    }
    assert "50051" in helps["lineage"] and "50052" in helps["trainer"]
    assert "50053" in helps["lm"]
