"""Load: four controllers at once against one store and two shared trainers.

Each trainer has one slot and room for one evaluation in its queue, while each controller
keeps two evaluations in flight: trainers queue what they can and answer
RESOURCE_EXHAUSTED to the rest, and the controllers back off and try again. Every search
finishes; every candidate is evaluated exactly once (no request lost, none run twice); and
the four searches, which share a seed, end with the same lineage.
"""

import os
from collections import Counter
from pathlib import Path

from evo.v1 import common_pb2 as common
from evo.v1 import lineage_pb2 as pb

from tests.reliability import candidates as list_candidates
from tests.reliability import (
    config_yaml,
    differences,
    evo,
    lineage_in_process,
    search_config,
    snapshot,
    trainer_in_process,
    wait_until,
)

CONTROLLERS = 4
MUTATION_SEARCH = """\
name: load
method: mutation
seed: 5
evolution: {rounds: 1, prompts_per_round: 1, samples_per_prompt: 2, population_size: 4,
            alpha: 1.0}
training: {steps: 40, wall_seconds: 60}
"""


def test_four_controllers_share_two_busy_trainers(tmp_path: Path) -> None:
    with (
        lineage_in_process(f"sqlite:///{tmp_path / 'lineage.db'}") as store,
        trainer_in_process(slots=1, max_queue=1) as first,
        trainer_in_process(slots=1, max_queue=1) as second,
    ):
        config = search_config(
            MUTATION_SEARCH, lineage=store.address, trainers=[first.address, second.address]
        )
        path = tmp_path / "search.yaml"
        path.write_text(config_yaml(config))
        env = {**os.environ, "EVO_LINEAGE_ADDRESS": store.address, "EVO_HOME": str(tmp_path)}
        logs = [tmp_path / f"controller-{i}.log" for i in range(CONTROLLERS)]
        controllers = [evo("search", "start", str(path), env=env, log=log) for log in logs]
        try:
            wait_until(
                lambda: all(c.poll() is not None for c in controllers),
                "every controller to finish",
                480,
                interval=0.5,
            )
        finally:
            for c in controllers:
                if c.poll() is None:
                    c.kill()
                    c.wait(30)
        for c, log in zip(controllers, logs, strict=True):
            assert c.returncode == 0, log.read_text()[-3000:]
        searches = store.stub.ListSearches(pb.ListSearchesRequest(), timeout=10).searches
        assert len(searches) == CONTROLLERS
        finished = first.trainer.finished + second.trainer.finished
        refused = first.trainer.refused + second.trainer.refused
        snapshots = []
        for search in searches:
            assert search.state == pb.SEARCH_STATE_FINISHED
            found = list_candidates(store.stub, search.id)
            evaluated = {
                f"search-{search.id}-candidate-{c.id}" for c in found if c.HasField("evaluation")
            }
            assert not [c.id for c in found if c.state == pb.CANDIDATE_STATE_PENDING]
            for c in found:
                assert c.evaluation.status != common.EVAL_STATUS_INTERNAL, c.evaluation.message
            # Each evaluation the trainers finished for this search is the one stored, once.
            mine = Counter(
                {r: n for r, n in finished.items() if r.startswith(f"search-{search.id}-")}
            )
            assert set(mine) == evaluated
            assert set(mine.values()) == {1}, mine
            snapshots.append(snapshot(store.stub, search.id))
    assert refused > 0, "the trainers were never full: this load test tested nothing"
    for other in snapshots[1:]:
        assert other == snapshots[0], differences(other, snapshots[0])
    print(f"{sum(finished.values())} evaluations, {refused} refused as RESOURCE_EXHAUSTED")
