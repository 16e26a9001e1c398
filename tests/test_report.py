"""The HTML search report, written from a live lineage service over gRPC."""

import base64
import html
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from evo.v1 import common_pb2 as common
from evo.v1 import lineage_pb2 as pb
from evo.v1 import lineage_pb2_grpc as pb_grpc

from controller.report import write_report
from evo_cli.main import main
from services.lineage import server
from services.lineage.rdb import RDBStorage
from tests.lineage_records import child, failed_eval, new_search, ok_eval, program, seed

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("pareto.png", "fitness.png", "curve.png", "lineage.png")
HOSTILE = '<script>alert("x")</script>'
SEEDS = [(5000, 0.3, 0.7), (8000, 0.2, 0.79), (20000, 0.1, 0.9)]  # params, val error, test acc


@pytest.fixture
def service(tmp_path: Path) -> Iterator[int]:
    """A lineage service on a SQLite file: the report only reads, so one backend is enough."""
    storage = RDBStorage("sqlite:///" + str(tmp_path / "l.db"))
    running = server.start(storage, "127.0.0.1", 0)
    yield running.port
    running.stop(grace=1)
    storage.close()


@pytest.fixture
def stub(service: int) -> Iterator[pb_grpc.LineageStub]:
    with grpc.insecure_channel(f"127.0.0.1:{service}") as channel:
        yield pb_grpc.LineageStub(channel)


def small_search(stub: pb_grpc.LineageStub) -> tuple[int, list[int]]:
    """Three seeds, two rounds of children (scored, failed, duplicate); returns the best ids."""
    sid = stub.CreateSearch(new_search(name="report <demo>"), timeout=5).search.id
    seeds = []
    for i, (params, err, acc) in enumerate(SEEDS):
        s = stub.RecordCandidate(seed(sid, program(i), i), timeout=5).candidate.id
        stub.RecordEvaluation(ok_eval(s, params, err, acc), timeout=5)
        seeds.append(s)
    r1 = []
    for i, (params, err, acc) in enumerate([(3000, 0.25, 0.76), (4000, 0.15, None)]):
        code = program(10 + i) + (f"# {HOSTILE}\n" if i == 0 else "")
        c = stub.RecordCandidate(child(sid, code, seeds[:2], sample=i), timeout=5).candidate.id
        stub.RecordEvaluation(ok_eval(c, params, err, acc), timeout=5)
        r1.append(c)
    bad = stub.RecordCandidate(child(sid, program(20), [seeds[2]], sample=5), timeout=5)
    reply = stub.RecordEvaluation(
        failed_eval(bad.candidate.id, common.EVAL_STATUS_CRASHED, "boom"), timeout=5
    )
    assert reply.candidate.state == pb.CANDIDATE_STATE_FAILED
    dup = stub.RecordCandidate(child(sid, program(0), [seeds[0]], prompt_id=0, sample=6), timeout=5)
    assert dup.candidate.state == pb.CANDIDATE_STATE_DUPLICATE
    best = stub.RecordCandidate(child(sid, program(30), r1, round_index=2), timeout=5)
    stub.RecordEvaluation(ok_eval(best.candidate.id, 1000, 0.12, 0.88), timeout=5)
    return sid, [best.candidate.id, r1[0]]


def check_outputs(out: Path) -> str:
    page = (out / "index.html").read_text(encoding="utf-8")
    for name in FIGURES:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
        assert base64.b64encode(data).decode("ascii") in page
    assert page.count('src="data:image/png;base64,') == len(FIGURES)
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", page, re.IGNORECASE)
    return page


def test_report_of_a_small_search(stub: pb_grpc.LineageStub, tmp_path: Path) -> None:
    sid, best = small_search(stub)
    out = tmp_path / "report"
    assert write_report(stub, sid, out, top=5) == out / "index.html"
    page = check_outputs(out)
    assert "report &lt;demo&gt;" in page and "report <demo>" not in page
    for cid in best:
        assert f"<td>{cid}</td>" in page
    assert html.escape(HOSTILE) in page
    assert "<script" not in page
    assert "mnist1d" in page and "evoprompting" in page
    assert "&quot;rounds&quot;: 2" in page  # the config, pretty-printed
    assert "<th>duplicate</th>" in page and "self.width = 30" in page  # stats; best one's code


def test_seeds_only_and_nothing_scored(stub: pb_grpc.LineageStub, tmp_path: Path) -> None:
    empty = stub.CreateSearch(new_search(name="empty"), timeout=5).search.id
    page = check_outputs(write_report(stub, empty, tmp_path / "empty").parent)
    assert "no scored candidates yet" in page
    sid = stub.CreateSearch(new_search(name="seeds"), timeout=5).search.id
    s = stub.RecordCandidate(seed(sid, program(0)), timeout=5).candidate.id
    pending = write_report(stub, sid, tmp_path / "pending")
    check_outputs(pending.parent)
    stub.RecordEvaluation(ok_eval(s, 1000, 0.2), timeout=5)  # scored, no test accuracy
    check_outputs(write_report(stub, sid, tmp_path / "seeds").parent)


def test_cli_writes_the_report(stub: pb_grpc.LineageStub, service: int, tmp_path: Path) -> None:
    sid, _ = small_search(stub)
    out = tmp_path / "cli"
    args = ["report", str(sid), "--out", str(out), "--address", f"127.0.0.1:{service}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert str(out / "index.html") in result.output
    check_outputs(out)
    missing = CliRunner().invoke(main, [*args[:1], "999", *args[2:]])
    assert missing.exit_code == 1 and "NOT_FOUND" in missing.output
