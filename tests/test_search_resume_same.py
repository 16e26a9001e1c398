"""`evo search start --resume-same`: what the Kubernetes controller Job runs, so that a retried
pod (a drained node) or a second `make deploy` continues the search of that name and config
instead of starting a second one. A real lineage store in this process; the command runs as
the Job runs it."""

from pathlib import Path

from click.testing import CliRunner
from evo.v1 import lineage_pb2 as pb

from controller import search_cli
from controller.clients import Lineage
from controller.config import load
from tests.reliability import lineage_in_process

CONFIG = """name: k8s-test
task: mnist1d
method: evoprompting-no-tuning
seed: 0
evolution:
  rounds: 1
  prompts_per_round: 1
  samples_per_prompt: 1
  parents_per_prompt: 1
  population_size: 1
training:
  steps: 20
  wall_seconds: 60
"""


def create(stub, name: str, config_json: str, state: int) -> int:  # type: ignore[no-untyped-def]
    made = stub.CreateSearch(
        pb.CreateSearchRequest(name=name, task="mnist1d", method="x", config_json=config_json)
    ).search
    if state != pb.SEARCH_STATE_CREATED:
        stub.UpdateSearchState(pb.UpdateSearchStateRequest(search_id=made.id, state=state))
    return int(made.id)


def test_the_same_search_is_the_newest_of_that_name_and_config(tmp_path: Path) -> None:
    path = tmp_path / "search.yaml"
    path.write_text(CONFIG)
    config = load(path)
    with lineage_in_process(f"sqlite:///{tmp_path / 'l.db'}") as lineage:
        lineage_client = Lineage(lineage.address)
        assert search_cli.same_search(lineage_client, config) is None
        older = create(lineage.stub, "k8s-test", config.to_json(), pb.SEARCH_STATE_FAILED)
        newer = create(lineage.stub, "k8s-test", config.to_json(), pb.SEARCH_STATE_RUNNING)
        create(lineage.stub, "k8s-test", config.to_json().replace('"steps": 20', '"steps": 21'), 1)
        create(lineage.stub, "other", config.to_json(), pb.SEARCH_STATE_RUNNING)
        found = search_cli.same_search(lineage_client, config)
        assert found is not None and found.id == newer and older < newer


def test_a_finished_search_is_not_started_again(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "search.yaml"
    path.write_text(CONFIG)
    config = load(path)
    with lineage_in_process(f"sqlite:///{tmp_path / 'l.db'}") as lineage:
        done = create(lineage.stub, "k8s-test", config.to_json(), pb.SEARCH_STATE_FINISHED)
        monkeypatch.setenv("EVO_LINEAGE_ADDRESS", lineage.address)
        result = CliRunner().invoke(search_cli.search_start, [str(path), "--resume-same"])
        assert result.exit_code == 0, result.output
        assert f"search {done} (k8s-test) already finished; nothing started" in result.output
        listed = lineage.stub.ListSearches(pb.ListSearchesRequest()).searches
        assert [s.id for s in listed] == [done]
