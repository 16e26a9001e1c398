"""Searches end to end through the real services over gRPC: lineage, trainer (bwrap), proposer.

The `mutation` method needs no language model; the language-model methods run the real
Proposer service on its `tgi` backend against the TGI stand-in server, so the prompts,
sampling and recording are the real code paths at a test's speed.
"""

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from evo.v1 import common_pb2 as common
from evo.v1 import lineage_pb2 as pb
from evo.v1 import lineage_pb2_grpc as pb_grpc

from controller import config as search_config
from controller.clients import Lineage, Proposer, Trainers
from controller.progress import Progress
from controller.search import Search
from evo_cli.main import main
from services.lineage import server as lineage_server
from services.lineage.rdb import RDBStorage
from services.proposer import server as proposer_server
from services.proposer.backends.tgi import TGIBackend
from services.trainer import server as trainer_server
from services.trainer.sandbox.base import Limits
from tests.standins.tgi import TGIStandIn

GIB = 1024**3
pytestmark = pytest.mark.filterwarnings("ignore:The `dict` method is deprecated")


@dataclass
class Stack:
    lineage: str
    trainer: str
    stub: pb_grpc.LineageStub
    requests: Counter[str]


@contextmanager
def serving(
    tmp_path: Path,
    config: trainer_server.TrainerConfig,
    wrap: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None,
    requests: Counter[str] | None = None,
) -> Iterator[Stack]:
    """The lineage store (SQLite under tmp_path) and a trainer, each a real gRPC server on a
    free port; `wrap` may replace the trainer's Evaluate (to count or alter its replies)."""
    storage = RDBStorage(f"sqlite:///{tmp_path / 'lineage.db'}")
    lineage = lineage_server.start(storage, "127.0.0.1", 0)
    trainer = trainer_server.Trainer(config)
    if wrap is not None:
        trainer.evaluate = wrap(trainer.evaluate)  # type: ignore[method-assign]
    service = trainer_server.start(trainer, "127.0.0.1", 0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{lineage.port}") as channel:
            yield Stack(
                f"127.0.0.1:{lineage.port}",
                f"127.0.0.1:{service.port}",
                pb_grpc.LineageStub(channel),
                Counter() if requests is None else requests,
            )
    finally:
        service.stop(grace=1)
        trainer.close()
        lineage.stop(grace=1)
        storage.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """The lineage store and a bwrap trainer that counts the evaluations of each request."""
    requests: Counter[str] = Counter()

    def counted(evaluate: Callable[..., Any]) -> Callable[..., Any]:
        def count(request, *args, **kwargs):  # type: ignore[no-untyped-def]
            requests[request.request_id] += 1
            return evaluate(request, *args, **kwargs)

        return count

    limits = Limits(wall_seconds=60, memory_bytes=2 * GIB)
    config = trainer_server.TrainerConfig(backend="bwrap", slots=1, warm=1, limits=limits)
    with serving(tmp_path, config, counted, requests) as running:
        yield running


@pytest.fixture
def proposer() -> Iterator[str]:
    """The real Proposer service on its tgi backend, in front of the TGI stand-in."""
    with TGIStandIn() as tgi:
        backend = TGIBackend(tgi.url, timeout=10)
        service = proposer_server.start(backend, "127.0.0.1", 0)
        yield f"127.0.0.1:{service.port}"
        service.stop(grace=1)
        backend.close()


def make_config(
    stack: Stack, proposer: str = "", **evolution: object
) -> search_config.SearchConfig:
    config = search_config.SearchConfig(name="test", seed=7)
    config.evolution.rounds = 2
    config.evolution.prompts_per_round = 2
    config.evolution.samples_per_prompt = 3
    config.evolution.population_size = 3
    for key, value in evolution.items():
        setattr(config.evolution, key, value)
    config.training.steps = 150
    config.training.wall_seconds = 60
    config.services.lineage = stack.lineage
    config.services.trainers = [stack.trainer]
    config.services.proposer = proposer
    return config


def run(config: search_config.SearchConfig, method: str) -> tuple[int, list[pb.Candidate], str]:
    config.method = method
    lineage = Lineage(config.services.lineage)
    made = lineage(
        "CreateSearch",
        pb.CreateSearchRequest(
            name=config.name, task=config.task, method=method, config_json=config.to_json()
        ),
    ).search
    out = io.StringIO()
    trainers = Trainers(config.services.trainers)
    proposer = Proposer(config.services.proposer) if config.uses_language_model else None
    with Progress(made.id, stream=out, live=False) as progress:
        top = Search(config, made.id, lineage, trainers, proposer, progress).run()
    trainers.close()
    lineage.close()
    return made.id, top, out.getvalue()


def candidates(stub: pb_grpc.LineageStub, search_id: int) -> list[pb.Candidate]:
    reply = stub.ListCandidates(
        pb.ListCandidatesRequest(search_id=search_id, page_size=1000, include_code=True),
        timeout=10,
    )
    assert not reply.next_page_token
    return list(reply.candidates)


def check_lineage(
    stub: pb_grpc.LineageStub, search_id: int, top: list[pb.Candidate], p: int
) -> list[pb.Candidate]:
    """What every finished search must satisfy, whatever its method."""
    found = candidates(stub, search_id)
    ids = {c.id for c in found}
    for c in found:
        assert set(c.parent_ids) <= ids, f"candidate {c.id} names a parent that is not there"
        if c.origin == pb.CANDIDATE_ORIGIN_SEED:
            assert c.round_index == 0 and not c.parent_ids
        else:
            assert c.round_index >= 1 and c.parent_ids
            assert all(
                next(x for x in found if x.id == q).round_index < c.round_index
                for q in c.parent_ids
            )
        # A trainer fault or a request the controller got wrong would show here.
        assert c.evaluation.status != common.EVAL_STATUS_INTERNAL, (c.id, c.evaluation.message)
        if c.state == pb.CANDIDATE_STATE_SCORED:
            m = c.evaluation.metrics
            assert c.fitness == pytest.approx(-(m.num_params * m.best_val_error))
        if c.state == pb.CANDIDATE_STATE_DUPLICATE:
            original = next(x for x in found if x.id == c.duplicate_of_id)
            assert original.id < c.id and original.normalized_hash == c.normalized_hash
            assert not c.HasField("evaluation") or c.evaluation.status == 0, (
                "a duplicate was trained"
            )
    search = stub.GetSearch(pb.GetSearchRequest(search_id=search_id), timeout=5)
    # Algorithm 1 returns the best children; regularised evolution keeps its seeds.
    seeds_compete = search.method == "mutation"
    scored = sorted(
        (
            c
            for c in found
            if c.state == pb.CANDIDATE_STATE_SCORED and (c.round_index > 0 or seeds_compete)
        ),
        key=lambda c: (-c.fitness, c.id),
    )
    assert [c.id for c in top] == [c.id for c in scored[:p]]
    assert search.state == pb.SEARCH_STATE_FINISHED
    return found


def test_mutation_search_through_the_real_services(stack: Stack) -> None:
    config = make_config(stack, alpha=0.9)
    sid, top, log = run(config, "mutation")
    found = check_lineage(stack.stub, sid, top, p=3)
    children = [c for c in found if c.round_index > 0]
    assert len(children) == 2 * 2 * 3  # rounds x prompts x samples: every sample is kept
    assert {c.origin for c in children} == {pb.CANDIDATE_ORIGIN_MUTATION}
    states = Counter(pb.CandidateState.Name(c.state) for c in children)
    assert states["CANDIDATE_STATE_SCORED"] >= 3, (states, log)
    # Every evaluated candidate was sent to a trainer exactly once.
    evaluated = [c for c in found if c.HasField("evaluation") and c.evaluation.status]
    assert sorted(stack.requests) == sorted(f"search-{sid}-candidate-{c.id}" for c in evaluated)
    assert set(stack.requests.values()) == {1}
    assert "new best" in log and "round 2 of 2" in log


def test_evoprompting_search_with_a_served_model(stack: Stack, proposer: str) -> None:
    config = make_config(stack, proposer, alpha=0.9)
    sid, top, log = run(config, "evoprompting")
    found = check_lineage(stack.stub, sid, top, p=3)
    by_id = {c.id: c for c in found}
    children = [c for c in found if c.round_index > 0]
    assert len([c for c in children if c.sample_index < 3]) == 2 * 2 * 3
    states = Counter(c.state for c in children)
    assert states[pb.CANDIDATE_STATE_DUPLICATE] >= 1, (
        "the stand-in repeats itself: some must be dropped"
    )
    assert states[pb.CANDIDATE_STATE_SCORED] >= 1, log
    # Novelty: a duplicate's slot is sampled again (attempt a is sample a * n + slot), at
    # most novelty_resamples times, and only after the previous attempt was a duplicate.
    resampled = [c for c in children if c.sample_index >= 3]
    assert resampled, "the stand-in's duplicates must be resampled"
    for c in resampled:
        assert c.sample_index < 3 * (1 + config.proposer.novelty_resamples)
        (before,) = [
            d
            for d in children
            if d.prompt_id == c.prompt_id and d.sample_index == c.sample_index - 3
        ]
        assert before.state == pb.CANDIDATE_STATE_DUPLICATE
        assert c.completion_tokens > 0 and c.raw_completion
    # The stand-in's TGI cannot be prompt-tuned nor take the grammar: the search says so.
    assert "cannot be prompt-tuned" in log
    assert "it samples free" in log
    seeds = [c for c in found if c.origin == pb.CANDIDATE_ORIGIN_SEED]
    round1 = [c for c in children if c.round_index == 1 and c.state == pb.CANDIDATE_STATE_SCORED]
    assert round1, "the stand-in's round 1 must score something for round 2 to be checked"
    for r in (1, 2):
        # Algorithm 1: round 1's parents are the seeds; later rounds' are the top p of
        # the children scored before them, and never a seed again.
        pool = seeds if r == 1 else [c for c in children if c.round_index < r]
        before = sorted(
            (c for c in pool if c.state == pb.CANDIDATE_STATE_SCORED),
            key=lambda c: (-c.fitness, c.id),
        )[:3]
        for c in (c for c in children if c.round_index == r):
            assert set(c.parent_ids) <= {b.id for b in before}
            if r > 1:
                assert not set(c.parent_ids) & {s.id for s in seeds}, "a seed was a parent again"
            prompt = stack.stub.GetPrompt(pb.GetPromptRequest(prompt_id=c.prompt_id), timeout=5)
            shown = [by_id[i] for i in prompt.parent_ids]
            smallest = min(s.evaluation.metrics.num_params for s in shown)
            assert f"'num_params': '{round(0.9 * smallest, -2):.0f}'" in prompt.text
            assert prompt.text.endswith("class Model(nn.Module):")
            assert prompt.text.count('"""Metrics:') == 3  # two parents and the target
            assert prompt.text.startswith('"""Metrics:'), "the paper's prompt has no header"
            assert c.code.startswith("# Neural networks for MNIST-1D")  # runnable: imports added
            assert c.proposer.backend == "tgi" and c.proposer.sampling.temperature in (
                0.2,
                0.6,
                0.8,
                1.0,
            )


def test_bad_config_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "search.yaml"
    path.write_text("name: x\nevolution:\n  rounds: 2\n  round: 3\ntraining:\n  steps: many\n")
    with pytest.raises(
        search_config.ConfigError,
        match=r"search.yaml:4: evolution.round: unknown key; did you mean 'rounds'",
    ):
        search_config.load(path)
    path.write_text("training:\n  steps: many\n")
    with pytest.raises(
        search_config.ConfigError, match=r":2: training.steps: expected an integer, got 'many'"
    ):
        search_config.load(path)
    path.write_text("method: evolution\n")
    with pytest.raises(search_config.ConfigError, match=r":1: method: must be one of evoprompting"):
        search_config.load(path)
    # The command line says the same and stops before it touches any service.
    path.write_text("evolution:\n  rounds: -1\n")
    result = CliRunner().invoke(main, ["search", "start", str(path)])
    assert result.exit_code == 1
    assert "search.yaml:2: evolution.rounds: must be at least 1" in result.output
    examples = sorted(Path("examples").glob("*.yaml"))
    assert {e.stem for e in examples} >= {*search_config.METHODS, "demo", "paper-mnist1d"} - {
        "evoprompting"
    }
    for example in examples:
        loaded = search_config.load(example)
        assert search_config.SearchConfig.from_json(loaded.to_json()) == loaded


def evo(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "evo_cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_killed_controller_resumes_without_redoing_evaluations(
    stack: Stack, tmp_path: Path
) -> None:
    path = tmp_path / "search.yaml"
    path.write_text(
        "name: killed\nmethod: mutation\nseed: 3\n"
        "evolution: {rounds: 2, prompts_per_round: 1, samples_per_prompt: 4, population_size: 4}\n"
        f"training: {{steps: 60, wall_seconds: 60}}\n"
        f"services: {{lineage: '{stack.lineage}', trainers: ['{stack.trainer}']}}\n"
    )
    env = {**os.environ, "EVO_LINEAGE_ADDRESS": stack.lineage, "EVO_HOME": str(tmp_path)}
    first = evo("search", "start", str(path), env=env)
    # Kill it without warning once round 1 has some, but not all, of its scores.
    deadline = time.monotonic() + 240
    sid = 0
    while time.monotonic() < deadline and first.poll() is None:
        searches = stack.stub.ListSearches(pb.ListSearchesRequest(), timeout=5).searches
        if searches:
            sid = searches[0].id
            round1 = [c for c in candidates(stack.stub, sid) if c.round_index == 1]
            if sum(c.HasField("evaluation") for c in round1) >= 1:
                break
        time.sleep(0.2)
    assert first.poll() is None, (
        f"the controller ended before it could be killed:\n{first.communicate()[0]}"
    )
    first.send_signal(signal.SIGKILL)
    first.communicate()
    before = {c.id for c in candidates(stack.stub, sid) if c.HasField("evaluation")}
    assert before

    second = evo("search", "resume", str(sid), env=env)
    output = second.communicate(timeout=300)[0]
    assert second.returncode == 0, output
    assert f"search {sid}: the top" in output.replace("Search", "search")
    found = check_lineage(stack.stub, sid, [], p=0)
    assert Counter(c.round_index for c in found) == {0: 4, 1: 4, 2: 4}, (
        "a sample was recorded twice"
    )
    for c in found:
        if c.id in before:
            assert stack.requests[f"search-{sid}-candidate-{c.id}"] == 1, (
                f"{c.id} was evaluated again"
            )
        assert (
            stack.requests[f"search-{sid}-candidate-{c.id}"] <= 2
        )  # in flight at the kill: redone
    assert (
        stack.stub.GetSearch(pb.GetSearchRequest(search_id=sid), timeout=5).state
        == pb.SEARCH_STATE_FINISHED
    )


def test_stop_then_resume(stack: Stack) -> None:
    config = make_config(stack)
    config.method = "mutation"
    lineage = Lineage(config.services.lineage)
    sid = lineage(
        "CreateSearch",
        pb.CreateSearchRequest(
            name="stop", task="mnist1d", method="mutation", config_json=config.to_json()
        ),
    ).search.id
    stop = threading.Event()
    stop.set()  # asked to stop before round 1: the seeds are scored, then it stops
    out = io.StringIO()
    with Progress(sid, stream=out, live=False) as progress:
        Search(config, sid, lineage, Trainers(config.services.trainers), None, progress, stop).run()
    assert (
        stack.stub.GetSearch(pb.GetSearchRequest(search_id=sid), timeout=5).state
        == pb.SEARCH_STATE_STOPPED
    )
    assert {c.round_index for c in candidates(stack.stub, sid)} == {0}
    with Progress(sid, stream=out, live=False) as progress:
        top = Search(config, sid, lineage, Trainers(config.services.trainers), None, progress).run()
    check_lineage(stack.stub, sid, top, p=3)
    lineage.close()


def test_few_shot_spends_the_budget_in_one_round_of_long_prompts(
    stack: Stack, proposer: str
) -> None:
    """The paper's naive baseline: one round, m prompts of T x n samples each (more than
    one proposer call holds: 66 samples go as 64 + 2), parents only from the seeds."""
    config = make_config(stack, proposer, alpha=0.9)
    config.evolution.prompts_per_round = 1
    config.evolution.samples_per_prompt = 33
    sid, top, log = run(config, "few-shot")
    found = check_lineage(stack.stub, sid, top, p=3)
    children = [c for c in found if c.round_index > 0]
    assert {c.round_index for c in children} == {1}
    # Each of the 66 slots once; a slot whose child copied an earlier program is sampled
    # again as slot + attempt x 66 (controller/sampling.py), at most novelty_resamples times.
    assert sorted(c.sample_index for c in children if c.sample_index < 66) == list(range(66))
    by_index = {c.sample_index: c for c in children}
    for c in children:
        if c.sample_index >= 66:
            assert by_index[c.sample_index - 66].state == pb.CANDIDATE_STATE_DUPLICATE
            assert c.sample_index // 66 <= config.proposer.novelty_resamples
    assert len({c.prompt_id for c in children}) == 1
    seeds = {c.id for c in found if c.origin == pb.CANDIDATE_ORIGIN_SEED}
    assert all(set(c.parent_ids) <= seeds for c in children)
    assert not any(c.reason.startswith("generation failed") for c in children), log
