"""`evo serve lm` as a real process (the default llamacpp backend, offline) and `evo propose`."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from services.proposer.cli import propose, serve_lm
from tests.postgres import _free_port, wait_for_port
from tests.proposer_support import PROMPT, evo_home

# How the real CLI registers them: `serve.add_command(serve_lm, "lm")`, `main.add_command(propose)`.
SERVE = "import click, sys; from services.proposer.cli import serve_lm; " \
        "g = click.Group(); s = click.Group('serve'); g.add_command(s); " \
        "s.add_command(serve_lm, 'lm'); g(sys.argv[1:])"  # fmt: skip


@pytest.fixture(scope="module")
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = _free_port()
    adapters = tmp_path_factory.mktemp("adapters")
    env = {**os.environ, "EVO_HOME": str(evo_home(request.config)), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SERVE,
            "serve",
            "lm",
            "--port",
            str(port),
            "--adapter-dir",
            str(adapters),
        ],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=180)
    except Exception:
        proc.kill()
        raise AssertionError(
            f"evo serve lm did not start: {proc.communicate()[1][-2000:]}"
        ) from None
    yield f"127.0.0.1:{port}"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "proposer (llamacpp:" in err and f"serving on 127.0.0.1:{port}" in err


@pytest.fixture
def prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompt.py"
    path.write_text(PROMPT + "\n")
    return path


def cli() -> click.Group:
    group = click.Group()
    group.add_command(propose)
    return group


def test_propose_prints_real_samples(served: str, prompt_file: Path) -> None:
    result = CliRunner().invoke(
        cli(),
        ["propose", str(prompt_file), "-n", "2", "--max-new-tokens", "10", "--seed", "5",
         "--address", served],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    headers = [line for line in result.output.splitlines() if line.startswith("# sample")]
    assert len(headers) == 2 and headers[0].startswith("# sample 1/2: ")
    assert "tokens (" in headers[0] and " s" in headers[0]
    programs = [line for line in result.output.splitlines() if line.startswith("class Model(")]
    assert len(programs) == 2


def test_propose_json_is_reproducible_with_a_seed(served: str, prompt_file: Path) -> None:
    args = ["propose", str(prompt_file), "-n", "3", "--max-new-tokens", "8", "--seed", "7",
            "--temperature", "1.0", "--json", "--address", served]  # fmt: skip
    first = CliRunner().invoke(cli(), args)
    assert first.exit_code == 0, first.output
    payload = json.loads(first.output)
    assert payload["backend"] == "llamacpp" and len(payload["samples"]) == 3
    sample = payload["samples"][0]
    assert sample["program"].startswith("class Model(nn.Module):")
    assert 1 <= sample["completion_tokens"] <= 8 and sample["prompt_tokens"] > 20
    again = json.loads(CliRunner().invoke(cli(), args).output)
    assert [s["raw_completion"] for s in again["samples"]] == [
        s["raw_completion"] for s in payload["samples"]
    ]


def test_propose_reports_server_errors_and_absence(served: str, prompt_file: Path) -> None:
    bad = CliRunner().invoke(
        cli(), ["propose", str(prompt_file), "--adapter", "sp-nope", "--address", served]
    )
    assert bad.exit_code == 1 and "NOT_FOUND" in bad.output and "sp-nope" in bad.output
    port = _free_port()
    gone = CliRunner().invoke(
        cli(), ["propose", str(prompt_file), "--address", f"127.0.0.1:{port}"]
    )
    assert gone.exit_code == 1
    assert "cannot reach the proposer" in gone.output and "evo serve lm" in gone.output


def test_serve_lm_refuses_a_remote_backend_without_a_url() -> None:
    result = CliRunner().invoke(serve_lm, ["--backend", "tgi"])
    assert result.exit_code == 1 and "--backend tgi needs --url" in result.output


def test_serve_lm_refuses_a_missing_model(tmp_path: Path) -> None:
    result = CliRunner().invoke(serve_lm, ["--model", str(tmp_path / "nothing.gguf")])
    assert result.exit_code == 1 and "no such .gguf file" in result.output
    result = CliRunner().invoke(serve_lm, ["--model", str(tmp_path)])
    assert result.exit_code == 1 and "use --backend hf" in result.output
    hf = ["--backend", "hf", "--model", str(tmp_path / "nothing.gguf")]
    result = CliRunner().invoke(serve_lm, hf)
    assert result.exit_code == 1 and "not a .gguf file nor a model folder" in result.output
