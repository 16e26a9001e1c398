"""`evo up` / `evo down`: real service processes, started, found again, and stopped."""

import socket
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controller import stack
from evo_cli.main import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_up_then_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVO_HOME", str(tmp_path))
    for name in ("lineage", "trainer", "proposer"):
        monkeypatch.setenv(f"EVO_{name.upper()}_ADDRESS", f"localhost:{free_port()}")
    runner = CliRunner()
    try:
        result = runner.invoke(main, ["up", "--without-lm"])
        assert result.exit_code == 0, result.output
        assert "lineage: ready" in result.output and "trainer: ready" in result.output
        procs = {p.name: p for p in stack.running()}
        assert set(procs) == {"lineage", "trainer"}
        for p in procs.values():
            with grpc.insecure_channel(p.address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        again = runner.invoke(main, ["up", "--without-lm"])
        assert again.exit_code == 0 and again.output.count("already running") == 2
        # The lineage store put its SQLite file in EVO_HOME.
        assert (tmp_path / "lineage.db").exists()
    finally:
        down = runner.invoke(main, ["down"])
    assert down.exit_code == 0, down.output
    assert "lineage: stopped" in down.output and "trainer: stopped" in down.output
    assert stack.running() == [] and not stack.state_file().exists()
    assert "nothing to stop" in runner.invoke(main, ["down"]).output


def test_a_service_that_cannot_start_is_reported_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVO_HOME", str(tmp_path))
    monkeypatch.setenv("EVO_LINEAGE_ADDRESS", f"localhost:{free_port()}")
    monkeypatch.setenv("EVO_TRAINER_ADDRESS", f"localhost:{free_port()}")
    monkeypatch.setenv("EVO_DB_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    result = CliRunner().invoke(main, ["up", "--without-lm"])
    assert result.exit_code == 1
    assert "lineage exited while starting" in result.output
    assert "cannot open the database" in result.output
    assert stack.running() == []


def test_the_trainer_gets_the_time_limit_it_is_given() -> None:
    plain = stack.commands("bwrap", 2, "hf", None, False)["trainer"]
    assert "--time-limit" not in plain  # the trainer's own default cap
    capped = stack.commands("bwrap", 2, "hf", None, False, time_limit=3600)["trainer"]
    assert capped[capped.index("--time-limit") + 1] == "3600"
    assert capped[capped.index("--slots") + 1] == "2"
