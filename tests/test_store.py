"""The lineage store against SQLite and a live PostgreSQL (see conftest.db_url)."""

import multiprocessing

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from evo.v1 import common_pb2 as common
from evo.v1 import lineage_pb2 as pb

from services.lineage.models import Base
from services.lineage.rdb import RDBStorage
from services.lineage.storage import MAX_CODE_BYTES, InvalidArgument, NotFound
from tests.lineage_records import child, failed_eval, new_search, ok_eval, program, seed


def make_search(storage: RDBStorage, **kwargs: str) -> int:
    return storage.create_search(new_search(**kwargs))[0].id


def scored(storage: RDBStorage, req: pb.RecordCandidateRequest, params: int, error: float) -> int:
    cand, _ = storage.record_candidate(req)
    storage.record_evaluation(ok_eval(cand.id, params, error))
    return cand.id


# ---------------------------------------------------------------- searches


def test_searches_are_created_listed_and_paged(storage: RDBStorage) -> None:
    ids = [make_search(storage, name=f"s{i}") for i in range(3)]
    found = storage.get_search(ids[1])
    assert (found.name, found.task, found.method) == ("s1", "mnist1d", "evoprompting")
    assert found.config_json == '{"rounds": 2}'
    assert found.state == pb.SEARCH_STATE_CREATED

    first, token = storage.list_searches(2, "")
    rest, end = storage.list_searches(2, token)
    assert [s.id for s in first + rest] == ids
    assert end == ""


def test_search_with_a_client_token_is_created_once(storage: RDBStorage) -> None:
    a, created_a = storage.create_search(new_search(token="run-1"))
    b, created_b = storage.create_search(new_search(token="run-1"))
    assert (a.id, created_a, created_b) == (b.id, True, False)
    assert len(storage.list_searches(0, "")[0]) == 1


@pytest.mark.parametrize(
    ("config", "complaint"),
    [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"), ('"x"', "JSON object")],
)
def test_malformed_config_is_refused(storage: RDBStorage, config: str, complaint: str) -> None:
    with pytest.raises(InvalidArgument, match=complaint):
        storage.create_search(new_search(config=config))


def test_search_state_moves_and_unknown_search_is_not_found(storage: RDBStorage) -> None:
    sid = make_search(storage)
    moved = storage.update_search_state(
        pb.UpdateSearchStateRequest(search_id=sid, state=pb.SEARCH_STATE_STOPPING, message="user")
    )
    assert (moved.state, moved.message) == (pb.SEARCH_STATE_STOPPING, "user")
    with pytest.raises(NotFound, match="no search with id 999"):
        storage.get_search(999)


# ---------------------------------------------------------------- candidates


def test_recording_the_same_candidate_twice_returns_the_first(storage: RDBStorage) -> None:
    sid = make_search(storage)
    first, created_first = storage.record_candidate(seed(sid, program(1)))
    again, created_again = storage.record_candidate(seed(sid, program(1)))
    assert (again.id, created_first, created_again) == (first.id, True, False)
    assert len(storage.list_candidates(pb.ListCandidatesRequest(search_id=sid))[0]) == 1


def test_same_program_from_another_sample_is_kept_as_a_duplicate(storage: RDBStorage) -> None:
    sid = make_search(storage)
    parent = scored(storage, seed(sid, program(0)), 1000, 0.2)
    first, _ = storage.record_candidate(child(sid, program(1), [parent], sample=0))
    # Same program with a comment and different layout, sampled again.
    variant = program(1).replace("self.width", "self.width ") + "# tweak\n"
    dup, created = storage.record_candidate(child(sid, variant, [parent], sample=1))
    assert created and dup.id != first.id
    assert dup.state == pb.CANDIDATE_STATE_DUPLICATE
    assert dup.duplicate_of_id == first.id
    assert dup.normalized_hash == first.normalized_hash and dup.code_hash != first.code_hash
    assert f"candidate {first.id}" in dup.reason
    # The same class under other imports (a child carries the task's header) is the same too.
    again, _ = storage.record_candidate(
        child(sid, "import torch\nimport torch.nn as nn\n" + program(1), [parent], sample=2)
    )
    assert again.state == pb.CANDIDATE_STATE_DUPLICATE and again.duplicate_of_id == first.id
    # So is the class followed by helpers it never calls (a small model's rambling)...
    rambling = program(1) + "\n\ndef helper(x):\n    return x.norm()\n\n\nclass Extra:\n    pass\n"
    ramble, _ = storage.record_candidate(child(sid, rambling, [parent], sample=3))
    assert ramble.state == pb.CANDIDATE_STATE_DUPLICATE and ramble.duplicate_of_id == first.id
    # ...but not one whose class uses its helper: that is another program.
    used = program(1).replace("self.width = 1", "self.width = helper(1)")
    assert used != program(1)
    uses, _ = storage.record_candidate(
        child(sid, used + "\n\ndef helper(x):\n    return x\n", [parent], sample=4)
    )
    assert uses.state != pb.CANDIDATE_STATE_DUPLICATE


def test_candidate_fields_round_trip(storage: RDBStorage) -> None:
    sid = make_search(storage)
    parent = scored(storage, seed(sid, program(0)), 1000, 0.2)
    prompt, _ = storage.record_prompt(
        pb.RecordPromptRequest(
            search_id=sid, round_index=1, prompt_index=0, text="few-shot", parent_ids=[parent]
        )
    )
    req = child(sid, program(1), [parent, parent], prompt_id=prompt.id, sample=3)
    req.adapter_id = "sp-abc"
    req.proposer.sampling.stop.append("\nclass ")
    stored = storage.get_candidate(storage.record_candidate(req)[0].id)
    assert stored.parent_ids == [parent, parent]
    assert (stored.prompt_id, stored.sample_index, stored.adapter_id) == (prompt.id, 3, "sp-abc")
    assert stored.proposer.model_id == "smollm2-135m"
    assert stored.proposer.sampling.temperature == pytest.approx(0.8)
    assert list(stored.proposer.sampling.stop) == ["\nclass "]
    assert (stored.prompt_tokens, stored.completion_tokens) == (100, 50)
    assert stored.code == program(1) and stored.state == pb.CANDIDATE_STATE_PENDING


@pytest.mark.parametrize(
    ("code", "complaint"),
    [("", "empty"), ("   \n", "empty"), ("x" * (MAX_CODE_BYTES + 1), "cap")],
)
def test_empty_or_oversize_code_is_refused(storage: RDBStorage, code: str, complaint: str) -> None:
    sid = make_search(storage)
    with pytest.raises(InvalidArgument, match=complaint):
        storage.record_candidate(seed(sid, code))


def test_code_at_the_cap_is_accepted(storage: RDBStorage) -> None:
    sid = make_search(storage)
    code = "#" * MAX_CODE_BYTES
    assert storage.record_candidate(seed(sid, code))[0].code == code


def test_unknown_references_are_not_found(storage: RDBStorage) -> None:
    sid = make_search(storage)
    with pytest.raises(NotFound, match="search with id 77"):
        storage.record_candidate(seed(77, program(1)))
    with pytest.raises(NotFound, match="parent candidate with id 555"):
        storage.record_candidate(child(sid, program(1), [555]))
    with pytest.raises(NotFound, match="prompt with id 9"):
        storage.record_candidate(child(sid, program(1), [], prompt_id=9))
    with pytest.raises(NotFound, match="candidate with id 123"):
        storage.record_evaluation(ok_eval(123, 10, 0.1))
    with pytest.raises(NotFound, match="candidate with id 123"):
        storage.get_ancestors(123, 0)
    # Nothing half-written.
    assert storage.list_candidates(pb.ListCandidatesRequest(search_id=sid))[0] == []


def test_parent_from_another_search_is_refused(storage: RDBStorage) -> None:
    a, b = make_search(storage, name="a"), make_search(storage, name="b")
    parent = storage.record_candidate(seed(a, program(0)))[0].id
    with pytest.raises(InvalidArgument, match="another search"):
        storage.record_candidate(child(b, program(1), [parent]))


def test_new_candidate_cannot_claim_to_be_scored(storage: RDBStorage) -> None:
    sid = make_search(storage)
    req = seed(sid, program(1))
    req.state = pb.CANDIDATE_STATE_SCORED
    with pytest.raises(InvalidArgument, match="PENDING or FAILED"):
        storage.record_candidate(req)
    req.origin = pb.CANDIDATE_ORIGIN_UNSPECIFIED
    req.state = pb.CANDIDATE_STATE_PENDING
    with pytest.raises(InvalidArgument, match="origin is required"):
        storage.record_candidate(req)


# ---------------------------------------------------------------- evaluations


def test_ok_evaluation_scores_the_candidate_once(storage: RDBStorage) -> None:
    sid = make_search(storage)
    cid = storage.record_candidate(seed(sid, program(1)))[0].id
    scored_once, created = storage.record_evaluation(ok_eval(cid, 6000, 0.09, test_acc=0.93))
    assert created and scored_once.state == pb.CANDIDATE_STATE_SCORED
    assert scored_once.fitness == pytest.approx(-540.0)  # the paper's example
    m = scored_once.evaluation.metrics
    assert (m.num_params, m.test_accuracy, len(m.val_curve)) == (6000, pytest.approx(0.93), 1)
    # A retried write neither duplicates nor overwrites.
    again, created_again = storage.record_evaluation(ok_eval(cid, 1, 0.5))
    assert not created_again and again.fitness == pytest.approx(-540.0)


def test_failed_evaluation_keeps_its_reason(storage: RDBStorage) -> None:
    sid = make_search(storage)
    cid = storage.record_candidate(seed(sid, program(1)))[0].id
    cand, _ = storage.record_evaluation(failed_eval(cid, common.EVAL_STATUS_TIMEOUT, "ran 600 s"))
    assert cand.state == pb.CANDIDATE_STATE_FAILED
    assert cand.reason == "TIMEOUT: ran 600 s"
    assert not cand.HasField("fitness")
    assert cand.evaluation.log_tail == "Traceback..."


def test_filtered_state_and_bad_metrics(storage: RDBStorage) -> None:
    sid = make_search(storage)
    a = storage.record_candidate(seed(sid, program(1)))[0].id
    req = ok_eval(a, 1000, 0.7)
    req.state = pb.CANDIDATE_STATE_FILTERED
    req.reason = "error 0.70 not below alpha 0.5"
    filtered, _ = storage.record_evaluation(req)
    assert filtered.state == pb.CANDIDATE_STATE_FILTERED
    b = storage.record_candidate(seed(sid, program(2), index=1))[0].id
    with pytest.raises(InvalidArgument, match="num_params"):
        storage.record_evaluation(ok_eval(b, 0, 0.1))
    with pytest.raises(InvalidArgument, match="status is required"):
        storage.record_evaluation(pb.RecordEvaluationRequest(candidate_id=b))


def test_long_log_tail_keeps_its_end(storage: RDBStorage) -> None:
    sid = make_search(storage)
    cid = storage.record_candidate(seed(sid, program(1)))[0].id
    req = failed_eval(cid, common.EVAL_STATUS_CRASHED, "boom")
    req.evaluation.log_tail = "x" * 200_000 + "THE END"
    cand, _ = storage.record_evaluation(req)
    assert cand.evaluation.log_tail.endswith("THE END")
    assert len(cand.evaluation.log_tail) < 70_000


# ---------------------------------------------------------------- queries


def test_population_is_top_k_by_the_fitness_the_controller_sent(storage: RDBStorage) -> None:
    sid = make_search(storage)
    ids = [scored(storage, seed(sid, program(i), i), 1000 * (i + 1), 0.1) for i in range(5)]
    failed = storage.record_candidate(seed(sid, program(99), 99))[0].id
    storage.record_evaluation(failed_eval(failed, common.EVAL_STATUS_CRASHED, "x"))
    top3 = storage.get_population(pb.GetPopulationRequest(search_id=sid, k=3))
    assert [c.id for c in top3] == ids[:3]  # smallest models have the best fitness here
    # The store stores the fitness it is given, whatever formula made it.
    other = storage.record_candidate(seed(sid, program(7), 7))[0].id
    req = ok_eval(other, 10_000, 0.4)
    req.fitness = 5.0
    assert storage.record_evaluation(req)[0].fitness == 5.0
    assert storage.get_population(pb.GetPopulationRequest(search_id=sid, k=1))[0].id == other
    # A SCORED record without it is refused: the controller owns the formula.
    bare = storage.record_candidate(seed(sid, program(8), 8))[0].id
    req = ok_eval(bare, 100, 0.1)
    req.ClearField("fitness")
    with pytest.raises(InvalidArgument, match="needs its fitness"):
        storage.record_evaluation(req)


def test_ancestry_and_descendants_follow_every_parent(storage: RDBStorage) -> None:
    sid = make_search(storage)
    s1 = scored(storage, seed(sid, program(1), 0), 100, 0.1)
    s2 = scored(storage, seed(sid, program(2), 1), 100, 0.1)
    a = scored(storage, child(sid, program(3), [s1, s2], sample=0), 100, 0.1)
    b = scored(storage, child(sid, program(4), [s1, s1], sample=1), 100, 0.1)
    c = scored(storage, child(sid, program(5), [a, b], round_index=2), 100, 0.1)

    ancestors = storage.get_ancestors(c, 0)
    assert [(e.candidate.id, e.depth) for e in ancestors] == [(a, 1), (b, 1), (s1, 2), (s2, 2)]
    assert [e.candidate.id for e in storage.get_ancestors(c, 1)] == [a, b]
    descendants = storage.get_descendants(s1, 0)
    assert [(e.candidate.id, e.depth) for e in descendants] == [(a, 1), (b, 1), (c, 2)]
    assert storage.get_descendants(c, 0) == []


def test_pareto_front_keeps_only_undominated(storage: RDBStorage) -> None:
    sid = make_search(storage)
    points = [(1000, 0.30), (2000, 0.20), (1500, 0.35), (3000, 0.20), (5000, 0.10)]
    ids = [scored(storage, seed(sid, program(i), i), p, e) for i, (p, e) in enumerate(points)]
    front = storage.get_pareto_front(sid, pb.ERROR_METRIC_VAL)
    assert [(f.candidate.id, f.num_params) for f in front] == [
        (ids[0], 1000),
        (ids[1], 2000),
        (ids[4], 5000),
    ]
    assert storage.get_pareto_front(sid, pb.ERROR_METRIC_TEST) == []  # no test scores recorded


def test_round_stats_count_every_outcome(storage: RDBStorage) -> None:
    sid = make_search(storage)
    s = scored(storage, seed(sid, program(0)), 1000, 0.2)
    scored(storage, child(sid, program(1), [s], sample=0), 500, 0.2)
    storage.record_candidate(child(sid, program(1), [s], sample=1))  # duplicate
    bad = storage.record_candidate(child(sid, program(2), [s], sample=2))[0].id
    storage.record_evaluation(failed_eval(bad, common.EVAL_STATUS_INVALID, "no Model"))
    storage.record_candidate(child(sid, program(3), [s], sample=3))  # still pending
    r0, r1 = storage.get_round_stats(sid)
    assert (r0.round_index, r0.candidates, r0.scored, r0.best_fitness) == (0, 1, 1, -200.0)
    assert (r1.candidates, r1.scored, r1.duplicate, r1.failed, r1.pending) == (4, 1, 1, 1, 1)
    assert (r1.best_fitness, r1.best_fitness_so_far, r1.min_params) == (-100.0, -100.0, 500)
    assert (r1.prompt_tokens, r1.completion_tokens) == (400, 200)


def test_rounds_and_prompts_are_upserted_idempotently(storage: RDBStorage) -> None:
    sid = make_search(storage)
    storage.record_round(
        pb.RecordRoundRequest(search_id=sid, round_index=1, state=pb.ROUND_STATE_GENERATING)
    )
    done = storage.record_round(
        pb.RecordRoundRequest(
            search_id=sid,
            round_index=1,
            state=pb.ROUND_STATE_FINISHED,
            adapter_id="sp-1",
            tuning_loss=1.5,
        )
    )
    assert (done.state, done.adapter_id, done.tuning_loss) == (pb.ROUND_STATE_FINISHED, "sp-1", 1.5)
    assert done.HasField("finished_at")
    assert len(storage.list_rounds(sid)) == 1
    assert storage.get_search(sid).num_rounds == 1

    s = storage.record_candidate(seed(sid, program(0)))[0].id
    req = pb.RecordPromptRequest(
        search_id=sid, round_index=1, prompt_index=4, text="t", parent_ids=[s, s]
    )
    p1, c1 = storage.record_prompt(req)
    p2, c2 = storage.record_prompt(req)
    assert (p1.id, c1, c2) == (p2.id, True, False)
    assert list(storage.get_prompt(p1.id).parent_ids) == [s, s]


# ---------------------------------------------------------------- concurrency and schema


def _writer(url: str, sid: int, worker: int) -> list[int]:
    """One of several controllers: 20 candidates of its own plus 10 every worker writes."""
    store = RDBStorage(url, upgrade=False)
    ids = []
    for i in range(30):
        n = i if i < 10 else 1000 * (worker + 1) + i
        cand, _ = store.record_candidate(seed(sid, program(n), n))
        store.record_evaluation(ok_eval(cand.id, 100 + n, 0.1))
        ids.append(cand.id)
    store.close()
    return ids


def test_concurrent_writers_lose_nothing(storage: RDBStorage) -> None:
    sid = make_search(storage)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(_writer, [(storage.url, sid, w) for w in range(4)])
    # The shared ten got one id each, the same in every worker.
    assert all(r[:10] == results[0][:10] for r in results)
    stored, _ = storage.list_candidates(pb.ListCandidatesRequest(search_id=sid, page_size=1000))
    assert len(stored) == 10 + 4 * 20
    assert all(c.state == pb.CANDIDATE_STATE_SCORED for c in stored)


def test_migrations_create_exactly_the_models(storage: RDBStorage) -> None:
    with storage.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_an_old_schema_is_refused_with_the_fix(db_url: str) -> None:
    with pytest.raises(InvalidArgument, match="evo db upgrade"):
        RDBStorage(db_url, upgrade=False)
