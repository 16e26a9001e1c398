"""The proposal service down for a while in the middle of a search.

The proposer is a real `evo serve lm --backend tgi` process in front of the TGI stand-in;
it is killed after round 1's first prompt and started again on the same port once the
controller has retried a few times. The controller waits with backoff and goes on: every
prompt of every round has all its samples, none recorded as a failed generation.
"""

import itertools
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from evo.v1 import lineage_pb2 as pb
from evo.v1 import lineage_pb2_grpc as pb_grpc

from tests.reliability import (
    LM_SEARCH,
    ControllerThread,
    InProcessLineage,
    lineage_in_process,
    search_config,
    service_processes,
    stack_in_process,
    trainer_in_process,
    wait_until,
)
from tests.reliability import candidates as list_candidates
from tests.standins.tgi import TGIStandIn

pytestmark = pytest.mark.filterwarnings("ignore:The `dict` method is deprecated")


@pytest.fixture
def lineage(tmp_path: Path) -> Iterator[InProcessLineage]:
    with lineage_in_process(f"sqlite:///{tmp_path / 'lineage.db'}") as store:
        yield store


def test_the_proposer_down_for_a_while(lineage: InProcessLineage, tmp_path: Path) -> None:
    with (
        TGIStandIn() as tgi,
        trainer_in_process() as trainer,
        service_processes(tmp_path) as serve,
    ):
        lm = ["--backend", "tgi", "--url", tgi.url, "--timeout", "10"]
        proposer = serve("lm", lm).start()
        config = search_config(
            LM_SEARCH,
            lineage=lineage.address,
            trainers=[trainer.address],
            proposer=proposer.address,
        )
        config.method = "evoprompting-no-tuning"  # a TGI server cannot be prompt-tuned
        run = ControllerThread(config)
        try:
            wait_until(
                lambda: (
                    not run.thread.is_alive()
                    or any(c.round_index == 1 for c in list_candidates(lineage.stub, run.search_id))
                ),
                "round 1's first samples",
                300,
            )
            assert run.thread.is_alive(), run.log()
            proposer.kill(signal.SIGKILL)
            proposer.wait_exit(30)
            retries = wait_until(
                lambda: len(found := run.messages("retrying proposer")) >= 3 and found,
                "the controller to retry the proposer",
                120,
            )
            restarted = serve("lm", lm, port=proposer.port).start()
            assert restarted.address == proposer.address
            run.wait(400)
        finally:
            run.close()
    assert all("UNAVAILABLE" in m for m in retries), retries
    stub = lineage.stub
    found = list_candidates(stub, run.search_id)
    evo = config.evolution
    prompts = {c.prompt_id for c in found if c.prompt_id}
    shown = sorted(
        (p.round_index, p.prompt_index)
        for p in (stub.GetPrompt(pb.GetPromptRequest(prompt_id=i), timeout=10) for i in prompts)
    )
    every_prompt = [(r, i) for r in range(1, evo.rounds + 1) for i in range(evo.prompts_per_round)]
    assert shown == every_prompt, "a prompt was skipped"
    n = evo.samples_per_prompt
    for pid in prompts:
        samples = sorted(c.sample_index for c in found if c.prompt_id == pid)
        assert [s for s in samples if s < n] == list(range(n)), (pid, samples)
        # Beyond n: duplicates sampled again (controller/sampling.py), each of a slot whose
        # previous attempt was a duplicate.
        by_index = {c.sample_index: c for c in found if c.prompt_id == pid}
        for s in samples:
            if s >= n:
                assert by_index[s - n].state == pb.CANDIDATE_STATE_DUPLICATE, (pid, samples)
    lost = [c.reason for c in found if c.reason.startswith("generation failed")]
    assert not lost, lost
    rounds = stub.ListRounds(pb.ListRoundsRequest(search_id=run.search_id), timeout=10).rounds
    assert [r.state for r in rounds] == [pb.ROUND_STATE_FINISHED] * (evo.rounds + 1)
    state = stub.GetSearch(pb.GetSearchRequest(search_id=run.search_id), timeout=10).state
    assert state == pb.SEARCH_STATE_FINISHED


def test_each_generate_call_is_told_the_programs_already_taken(tmp_path: Path) -> None:
    """A child that copies a candidate is a duplicate: the controller sends the normalised
    hashes of the search's candidates so far with every Generate call, which a backend that
    checks statements uses to write a copy again (services/proposer/grammar.py)."""
    with stack_in_process(f"sqlite:///{tmp_path / 'lineage.db'}") as stack:
        run = ControllerThread(stack.config())
        try:
            run.wait(400)
        finally:
            run.close()
        with grpc.insecure_channel(stack.lineage.address) as channel:
            found = list_candidates(pb_grpc.LineageStub(channel), run.search_id)
        told = stack.proposer.backend.novelty
    assert told and all(n is not None and n.opening == "class Model(nn.Module):" for n in told)
    hashes = [n.hashes for n in told if n is not None]
    seeds = {c.normalized_hash for c in found if c.origin == pb.CANDIDATE_ORIGIN_SEED}
    everything = {c.normalized_hash for c in found}
    assert all(seeds <= h <= everything for h in hashes)
    # Each call knows what the calls before it sampled (they were recorded in between).
    assert all(a <= b for a, b in itertools.pairwise(hashes)) and hashes[0] < hashes[-1]
