"""The lineage store on SQLAlchemy: SQLite or PostgreSQL."""

import json
import math
import re
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

from evo.v1 import common_pb2 as common
from evo.v1 import lineage_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer, selectinload, sessionmaker

from services.common.codehash import code_hash, normalized_hash
from services.lineage import db
from services.lineage.models import (
    CandidateParentRow,
    CandidateRow,
    EvaluationRow,
    PromptParentRow,
    PromptRow,
    RoundRow,
    SearchRow,
    utcnow,
)
from services.lineage.storage import (
    MAX_CODE_BYTES,
    MAX_CONFIG_BYTES,
    MAX_LOG_TAIL_BYTES,
    MAX_NAME_CHARS,
    MAX_PAGE_SIZE,
    MAX_PARENTS,
    MAX_TEXT_BYTES,
    InvalidArgument,
    LineageStorage,
    NotFound,
)

T = TypeVar("T")


def _col(enum: Any, value: int) -> str:
    """An enum as a column value: CANDIDATE_STATE_SCORED is stored as 'scored'."""
    try:
        name = enum.Name(value)
    except ValueError:  # a number no version of the contract defines
        raise InvalidArgument(f"{enum.DESCRIPTOR.name} has no value {value}") from None
    return name.removeprefix(_prefix(enum)).lower()


def _enum(enum: Any, column: str) -> int:
    return enum.Value(_prefix(enum) + column.upper())


def _prefix(enum: Any) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.DESCRIPTOR.name).upper() + "_"


SCORED = _col(pb.CandidateState, pb.CANDIDATE_STATE_SCORED)


class RDBStorage(LineageStorage):
    def __init__(self, url: str, *, upgrade: bool = True) -> None:
        """Open the database at `url`; migrate it to the newest schema unless `upgrade` is off."""
        self.url = url
        if upgrade:
            db.upgrade(url)
        self.engine: Engine = db.make_engine(url)
        current = db.current_revision(self.engine)
        if current != db.head_revision():
            raise InvalidArgument(
                f"database schema is at revision {current}, this version needs "
                f"{db.head_revision()}: run `evo db upgrade --db {url}`"
            )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------ sessions

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        conn = self.engine.connect().execution_options(sqlite_write=True)
        try:
            with Session(bind=conn, expire_on_commit=False) as session, session.begin():
                yield session
        finally:
            conn.close()

    def _insert_or_get(
        self, find: Callable[[Session], T | None], insert: Callable[[Session], T]
    ) -> tuple[T, bool]:
        """Idempotent insert: the stored row if the key exists, else a new one.

        Two writers racing on one key both get the same row: the loser's insert
        hits the unique constraint, rolls back and reads the winner's.
        """
        for _ in range(2):
            try:
                with self._write() as session:
                    if (found := find(session)) is not None:
                        return found, False
                    return insert(session), True
            except IntegrityError:
                with self._read() as session:
                    if (found := find(session)) is not None:
                        return found, False
                # A constraint other than the idempotency key failed: try once more.
        raise InvalidArgument("the write conflicts with stored data (integrity error)")

    # ------------------------------------------------------------ searches

    def create_search(self, req: pb.CreateSearchRequest) -> tuple[pb.Search, bool]:
        _check_name("name", req.name, required=True)
        _check_name("task", req.task, required=True)
        _check_name("method", req.method, required=True)
        _check_name("client_token", req.client_token)
        config = req.config_json or "{}"
        if len(config.encode()) > MAX_CONFIG_BYTES:
            raise InvalidArgument(f"config_json is over the {MAX_CONFIG_BYTES}-byte cap")
        try:
            parsed = json.loads(config)
        except json.JSONDecodeError as e:
            raise InvalidArgument(f"config_json is not valid JSON: {e}") from None
        if not isinstance(parsed, dict):
            raise InvalidArgument("config_json must be a JSON object")

        def find(s: Session) -> pb.Search | None:
            if not req.client_token:
                return None
            row = s.scalar(select(SearchRow).where(SearchRow.client_token == req.client_token))
            return self._search_msg(s, row) if row else None

        def insert(s: Session) -> pb.Search:
            row = SearchRow(
                name=req.name,
                task=req.task,
                method=req.method,
                config_json=config,
                state=_col(pb.SearchState, pb.SEARCH_STATE_CREATED),
                message="",
                client_token=req.client_token or None,
            )
            s.add(row)
            s.flush()
            return self._search_msg(s, row)

        return self._insert_or_get(find, insert)

    def get_search(self, search_id: int) -> pb.Search:
        with self._read() as s:
            return self._search_msg(s, _get(s, SearchRow, search_id, "search"))

    def list_searches(self, page_size: int, page_token: str) -> tuple[list[pb.Search], str]:
        size = _page_size(page_size)
        after = _page_after(page_token)
        with self._read() as s:
            rows = s.scalars(
                select(SearchRow).where(SearchRow.id > after).order_by(SearchRow.id).limit(size)
            ).all()
            searches = [self._search_msg(s, r) for r in rows]
        return searches, (str(rows[-1].id) if len(rows) == size else "")

    def update_search_state(self, req: pb.UpdateSearchStateRequest) -> pb.Search:
        if req.state == pb.SEARCH_STATE_UNSPECIFIED:
            raise InvalidArgument("state is required")
        with self._write() as s:
            row = _get(s, SearchRow, req.search_id, "search")
            row.state = _col(pb.SearchState, req.state)
            row.message = _clean(req.message)
            row.updated_at = utcnow()
            s.flush()
            return self._search_msg(s, row)

    def _search_msg(self, s: Session, row: SearchRow) -> pb.Search:
        count, best = s.execute(
            select(
                func.count(CandidateRow.id),
                func.max(CandidateRow.fitness).filter(CandidateRow.state == SCORED),
            ).where(CandidateRow.search_id == row.id)
        ).one()
        num_rounds = s.scalar(select(func.count()).where(RoundRow.search_id == row.id))
        msg = pb.Search(
            id=row.id,
            name=row.name,
            task=row.task,
            method=row.method,
            config_json=row.config_json,
            state=_enum(pb.SearchState, row.state),
            message=row.message,
            client_token=row.client_token or "",
            created_at=_ts(row.created_at),
            updated_at=_ts(row.updated_at),
            num_candidates=count,
            num_rounds=num_rounds or 0,
        )
        if best is not None:
            msg.best_fitness = best
        return msg

    # ------------------------------------------------------------ rounds and prompts

    def record_round(self, req: pb.RecordRoundRequest) -> pb.Round:
        if req.round_index < 0:
            raise InvalidArgument("round_index must be 0 or more")
        if req.state == pb.ROUND_STATE_UNSPECIFIED:
            raise InvalidArgument("state is required")
        _check_name("adapter_id", req.adapter_id)

        def apply(s: Session) -> pb.Round:
            _get(s, SearchRow, req.search_id, "search")
            row = s.scalar(
                select(RoundRow).where(
                    RoundRow.search_id == req.search_id, RoundRow.round_index == req.round_index
                )
            )
            if row is None:
                row = RoundRow(search_id=req.search_id, round_index=req.round_index)
                s.add(row)
            row.state = _col(pb.RoundState, req.state)
            if req.adapter_id:
                row.adapter_id = req.adapter_id
            if req.HasField("tuning_loss"):
                row.tuning_loss = req.tuning_loss
            if req.state == pb.ROUND_STATE_FINISHED and row.finished_at is None:
                row.finished_at = utcnow()
            s.flush()
            return _round_msg(row)

        # An upsert: a concurrent first insert of the same round loses and retries as an update.
        try:
            with self._write() as s:
                return apply(s)
        except IntegrityError:
            with self._write() as s:
                return apply(s)

    def list_rounds(self, search_id: int) -> list[pb.Round]:
        with self._read() as s:
            _get(s, SearchRow, search_id, "search")
            rows = s.scalars(
                select(RoundRow)
                .where(RoundRow.search_id == search_id)
                .order_by(RoundRow.round_index)
            ).all()
            return [_round_msg(r) for r in rows]

    def record_prompt(self, req: pb.RecordPromptRequest) -> tuple[pb.Prompt, bool]:
        if req.round_index < 0 or req.prompt_index < 0:
            raise InvalidArgument("round_index and prompt_index must be 0 or more")
        _check_text("text", req.text, MAX_TEXT_BYTES, required=True)
        _check_text("target_json", req.target_json, MAX_CONFIG_BYTES)
        if len(req.parent_ids) > MAX_PARENTS:
            raise InvalidArgument(f"a prompt may show at most {MAX_PARENTS} parents")
        _check_finite(temperature=req.temperature)

        def find(s: Session) -> pb.Prompt | None:
            _get(s, SearchRow, req.search_id, "search")
            row = s.scalar(
                select(PromptRow).where(
                    PromptRow.search_id == req.search_id,
                    PromptRow.round_index == req.round_index,
                    PromptRow.prompt_index == req.prompt_index,
                )
            )
            return _prompt_msg(row) if row else None

        def insert(s: Session) -> pb.Prompt:
            _check_parents(s, req.search_id, req.parent_ids)
            row = PromptRow(
                search_id=req.search_id,
                round_index=req.round_index,
                prompt_index=req.prompt_index,
                text=_clean(req.text),
                temperature=req.temperature,
                target_json=_clean(req.target_json),
                parents=[
                    PromptParentRow(position=i, parent_id=p) for i, p in enumerate(req.parent_ids)
                ],
            )
            s.add(row)
            s.flush()
            return _prompt_msg(row)

        return self._insert_or_get(find, insert)

    def get_prompt(self, prompt_id: int) -> pb.Prompt:
        with self._read() as s:
            return _prompt_msg(_get(s, PromptRow, prompt_id, "prompt"))

    # ------------------------------------------------------------ candidates

    def record_candidate(self, req: pb.RecordCandidateRequest) -> tuple[pb.Candidate, bool]:
        code = _clean(req.code)
        if not code.strip():
            raise InvalidArgument("code is empty")
        _check_text("code", code, MAX_CODE_BYTES, required=True)
        _check_text("raw_completion", req.raw_completion, MAX_TEXT_BYTES)
        _check_name("name", req.name)
        _check_name("adapter_id", req.adapter_id)
        if req.origin == pb.CANDIDATE_ORIGIN_UNSPECIFIED:
            raise InvalidArgument("origin is required: SEED, LANGUAGE_MODEL or MUTATION")
        if req.round_index < 0 or req.sample_index < 0:
            raise InvalidArgument("round_index and sample_index must be 0 or more")
        if len(req.parent_ids) > MAX_PARENTS:
            raise InvalidArgument(f"a candidate may have at most {MAX_PARENTS} parents")
        sampling = req.proposer.sampling
        _check_finite(
            generation_seconds=req.generation_seconds,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
        )
        state = req.state or pb.CANDIDATE_STATE_PENDING
        if state not in (pb.CANDIDATE_STATE_PENDING, pb.CANDIDATE_STATE_FAILED):
            raise InvalidArgument(
                "a new candidate is PENDING or FAILED; record an evaluation to score it"
            )
        digest = code_hash(code)
        origin_key = f"{req.round_index}:{req.prompt_id}:{req.sample_index}"

        def find(s: Session) -> pb.Candidate | None:
            _get(s, SearchRow, req.search_id, "search")
            row = s.scalar(
                _candidates().where(
                    CandidateRow.search_id == req.search_id,
                    CandidateRow.code_hash == digest,
                    CandidateRow.origin_key == origin_key,
                )
            )
            return _candidate_msg(row) if row else None

        def insert(s: Session) -> pb.Candidate:
            _check_parents(s, req.search_id, req.parent_ids)
            if req.prompt_id:
                prompt = _get(s, PromptRow, req.prompt_id, "prompt")
                if prompt.search_id != req.search_id:
                    raise InvalidArgument(
                        f"prompt {req.prompt_id} belongs to search {prompt.search_id}, "
                        f"not {req.search_id}"
                    )
            norm = normalized_hash(code)
            original = s.scalar(
                select(func.min(CandidateRow.id)).where(
                    CandidateRow.search_id == req.search_id,
                    CandidateRow.normalized_hash == norm,
                )
            )
            row_state, reason = _col(pb.CandidateState, state), _clean(req.reason)
            if original is not None and state == pb.CANDIDATE_STATE_PENDING:
                row_state = _col(pb.CandidateState, pb.CANDIDATE_STATE_DUPLICATE)
                reason = f"same program as candidate {original}"
            has_sampling = req.proposer.HasField("sampling")
            row = CandidateRow(
                search_id=req.search_id,
                round_index=req.round_index,
                origin=_col(pb.CandidateOrigin, req.origin),
                prompt_id=req.prompt_id or None,
                sample_index=req.sample_index,
                origin_key=origin_key,
                name=req.name,
                code=code,
                code_hash=digest,
                normalized_hash=norm,
                state=row_state,
                reason=reason,
                duplicate_of_id=original,
                raw_completion=_clean(req.raw_completion),
                backend=req.proposer.backend,
                model_id=req.proposer.model_id,
                temperature=sampling.temperature if has_sampling else None,
                top_p=sampling.top_p if has_sampling else None,
                max_new_tokens=sampling.max_new_tokens if has_sampling else None,
                sampling_seed=sampling.seed if has_sampling else None,
                stop_json=json.dumps(list(sampling.stop)),
                adapter_id=req.adapter_id,
                prompt_tokens=req.prompt_tokens,
                completion_tokens=req.completion_tokens,
                generation_seconds=req.generation_seconds,
                parents=[
                    CandidateParentRow(position=i, parent_id=p)
                    for i, p in enumerate(req.parent_ids)
                ],
            )
            s.add(row)
            s.flush()
            return _candidate_msg(row)

        return self._insert_or_get(find, insert)

    def record_evaluation(self, req: pb.RecordEvaluationRequest) -> tuple[pb.Candidate, bool]:
        ev = req.evaluation
        if ev.status == common.EVAL_STATUS_UNSPECIFIED:
            raise InvalidArgument("evaluation.status is required")
        ok = ev.status == common.EVAL_STATUS_OK
        state = req.state or (pb.CANDIDATE_STATE_SCORED if ok else pb.CANDIDATE_STATE_FAILED)
        allowed = (
            pb.CANDIDATE_STATE_SCORED,
            pb.CANDIDATE_STATE_FAILED,
            pb.CANDIDATE_STATE_FILTERED,
        )
        if state not in allowed:
            raise InvalidArgument("an evaluated candidate is SCORED, FAILED or FILTERED")
        if state == pb.CANDIDATE_STATE_SCORED and not ok:
            raise InvalidArgument("only an OK evaluation can make a candidate SCORED")
        m = ev.metrics
        if ok and (m.num_params <= 0 or not 0.0 <= m.best_val_error <= 1.0):
            raise InvalidArgument(
                "an OK evaluation needs metrics.num_params > 0 and 0 <= best_val_error <= 1"
            )
        for field in ("message", "sandbox_backend", "trainer_id", "task"):
            _check_text(field, getattr(ev, field), MAX_TEXT_BYTES)
        _check_finite(
            best_val_accuracy=m.best_val_accuracy,
            test_accuracy=m.test_accuracy,
            train_seconds=m.train_seconds,
            wall_seconds=ev.wall_seconds,
        )
        # The controller computes fitness (controller/population.py); the store stores it.
        fitness: float | None = None
        if req.HasField("fitness"):
            _check_finite(fitness=req.fitness)
            fitness = req.fitness
        elif state == pb.CANDIDATE_STATE_SCORED:
            raise InvalidArgument(
                "a SCORED candidate needs its fitness: the controller computes it "
                "(controller.population.fitness) and sends it with the evaluation"
            )
        reason = req.reason or (
            "" if ok else f"{_col(common.EvalStatus, ev.status).upper()}: {ev.message}"
        )

        def find(s: Session) -> pb.Candidate | None:
            row = s.scalar(_candidates().where(CandidateRow.id == req.candidate_id))
            if row is None:
                raise NotFound(f"no candidate with id {req.candidate_id}")
            return _candidate_msg(row) if row.evaluation is not None else None

        def insert(s: Session) -> pb.Candidate:
            row = s.scalar(_candidates().where(CandidateRow.id == req.candidate_id))
            assert row is not None
            row.evaluation = EvaluationRow(
                status=_col(common.EvalStatus, ev.status),
                message=_clean(ev.message),
                num_params=m.num_params,
                best_val_error=m.best_val_error if ok else None,
                best_val_accuracy=m.best_val_accuracy if ok else None,
                test_accuracy=m.test_accuracy if m.HasField("test_accuracy") else None,
                train_seconds=m.train_seconds,
                steps_completed=m.steps_completed,
                curve_json=json.dumps(
                    [[p.step, p.train_loss, p.val_accuracy, p.val_error] for p in m.val_curve]
                ),
                extra_json=json.dumps(dict(m.extra)),
                log_tail=_clean(_tail(ev.log_tail, MAX_LOG_TAIL_BYTES)),
                sandbox_backend=_clean(ev.sandbox_backend),
                trainer_id=_clean(ev.trainer_id),
                task=_clean(ev.task),
                budget_steps=ev.budget_steps,
                budget_seed=ev.budget_seed,
                wall_seconds=ev.wall_seconds,
            )
            row.state = _col(pb.CandidateState, state)
            row.reason = _clean(reason)
            if ok:
                row.num_params = m.num_params
                row.best_val_error = m.best_val_error
                if m.HasField("test_accuracy"):
                    row.test_error = 1.0 - m.test_accuracy
            row.fitness = fitness
            s.flush()
            return _candidate_msg(row)

        return self._insert_or_get(find, insert)

    def get_candidate(self, candidate_id: int) -> pb.Candidate:
        with self._read() as s:
            row = s.scalar(_candidates().where(CandidateRow.id == candidate_id))
            if row is None:
                raise NotFound(f"no candidate with id {candidate_id}")
            return _candidate_msg(row)

    def list_candidates(self, req: pb.ListCandidatesRequest) -> tuple[list[pb.Candidate], str]:
        size = _page_size(req.page_size)
        query = _candidates().where(
            CandidateRow.search_id == req.search_id, CandidateRow.id > _page_after(req.page_token)
        )
        if req.HasField("round_index"):
            query = query.where(CandidateRow.round_index == req.round_index)
        if req.states:
            names = [_col(pb.CandidateState, st) for st in req.states]
            query = query.where(CandidateRow.state.in_(names))
        with self._read() as s:
            _get(s, SearchRow, req.search_id, "search")
            rows = s.scalars(query.order_by(CandidateRow.id).limit(size)).all()
            out = [_candidate_msg(r, include_code=req.include_code) for r in rows]
        return out, (str(rows[-1].id) if len(rows) == size else "")

    # ------------------------------------------------------------ queries

    def get_population(self, req: pb.GetPopulationRequest) -> list[pb.Candidate]:
        k = req.k or 10
        if not 0 < k <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"k must be between 1 and {MAX_PAGE_SIZE}")
        query = _candidates().where(
            CandidateRow.search_id == req.search_id,
            CandidateRow.state == SCORED,
            CandidateRow.fitness.is_not(None),
        )
        with self._read() as s:
            _get(s, SearchRow, req.search_id, "search")
            rows = s.scalars(
                query.order_by(CandidateRow.fitness.desc(), CandidateRow.id).limit(k)
            ).all()
            return [_candidate_msg(r) for r in rows]

    def get_ancestors(self, candidate_id: int, max_depth: int) -> list[pb.LineageEntry]:
        return self._walk(candidate_id, max_depth, up=True)

    def get_descendants(self, candidate_id: int, max_depth: int) -> list[pb.LineageEntry]:
        return self._walk(candidate_id, max_depth, up=False)

    def _walk(self, candidate_id: int, max_depth: int, *, up: bool) -> list[pb.LineageEntry]:
        """Every candidate reachable through parent links, with its nearest distance.

        The recursive query collects the reachable edges (each once, so
        diamond-shaped families stay linear); distances come from a BFS over them.
        """
        if max_depth < 0:
            raise InvalidArgument("max_depth must be 0 (no limit) or more")
        src, dst = ("child_id", "parent_id") if up else ("parent_id", "child_id")
        # Collect the edges themselves: each edge once, and every step an index lookup
        # (an IN over the reachable set made PostgreSQL scan all edges).
        reach = text(
            f"""
            WITH RECURSIVE walk(a, b) AS (
                SELECT {src}, {dst} FROM candidate_parents WHERE {src} = :start
                UNION
                SELECT cp.{src}, cp.{dst} FROM candidate_parents cp JOIN walk w ON cp.{src} = w.b
            )
            SELECT a, b FROM walk
            """
        )
        with self._read() as s:
            if s.get(CandidateRow, candidate_id) is None:
                raise NotFound(f"no candidate with id {candidate_id}")
            edges: dict[int, list[int]] = defaultdict(list)
            for a, b in s.execute(reach, {"start": candidate_id}):
                edges[a].append(b)
            depth = {candidate_id: 0}
            queue = deque([candidate_id])
            while queue:
                node = queue.popleft()
                if max_depth and depth[node] >= max_depth:
                    continue
                for nxt in edges.get(node, ()):
                    if nxt not in depth:
                        depth[nxt] = depth[node] + 1
                        queue.append(nxt)
            del depth[candidate_id]
            query = _candidates().options(
                defer(CandidateRow.code), defer(CandidateRow.raw_completion)
            )
            rows = {r.id: r for r in s.scalars(query.where(CandidateRow.id.in_(list(depth))))}
            order = sorted(depth, key=lambda i: (depth[i], i))
            return [
                pb.LineageEntry(
                    candidate=_candidate_msg(rows[i], include_code=False), depth=depth[i]
                )
                for i in order
            ]

    def get_pareto_front(self, search_id: int, metric: int) -> list[pb.ParetoPoint]:
        error = (
            CandidateRow.test_error
            if metric == pb.ERROR_METRIC_TEST
            else CandidateRow.best_val_error
        )
        with self._read() as s:
            _get(s, SearchRow, search_id, "search")
            points = s.execute(
                select(CandidateRow.id, CandidateRow.num_params, error)
                .where(
                    CandidateRow.search_id == search_id,
                    CandidateRow.state == SCORED,
                    CandidateRow.num_params.is_not(None),
                    error.is_not(None),
                )
                .order_by(CandidateRow.num_params, error, CandidateRow.id)
            ).all()
            front: list[tuple[int, int, float]] = []
            for cid, params, err in points:  # sorted by size: keep each strict error improvement
                if not front or err < front[-1][2]:
                    front.append((cid, params, err))
            rows = {
                r.id: r
                for r in s.scalars(_candidates().where(CandidateRow.id.in_([f[0] for f in front])))
            }
            return [
                pb.ParetoPoint(
                    candidate=_candidate_msg(rows[c], include_code=False), num_params=p, error=e
                )
                for c, p, e in front
            ]

    def get_round_stats(self, search_id: int) -> list[pb.RoundStats]:
        scored = CandidateRow.state == SCORED
        with self._read() as s:
            _get(s, SearchRow, search_id, "search")
            rows = s.execute(
                select(
                    CandidateRow.round_index,
                    CandidateRow.state,
                    func.count(),
                    func.max(CandidateRow.fitness).filter(scored),
                    func.min(CandidateRow.num_params).filter(scored),
                    func.min(CandidateRow.best_val_error).filter(scored),
                    func.sum(CandidateRow.prompt_tokens),
                    func.sum(CandidateRow.completion_tokens),
                )
                .where(CandidateRow.search_id == search_id)
                .group_by(CandidateRow.round_index, CandidateRow.state)
                .order_by(CandidateRow.round_index)
            ).all()
        stats: dict[int, pb.RoundStats] = {}
        for rnd, state, count, best, min_params, best_err, ptok, ctok in rows:
            st = stats.setdefault(rnd, pb.RoundStats(round_index=rnd))
            st.candidates += count
            setattr(st, state, getattr(st, state) + count)
            st.prompt_tokens += ptok or 0
            st.completion_tokens += ctok or 0
            if best is not None:
                st.best_fitness = best
                st.min_params = min_params
                st.best_val_error = best_err
        best_so_far: float | None = None
        for st in stats.values():
            if st.HasField("best_fitness"):
                best_so_far = max(st.best_fitness, best_so_far or st.best_fitness)
            if best_so_far is not None:
                st.best_fitness_so_far = best_so_far
        return list(stats.values())


# ---------------------------------------------------------------- helpers


def _candidates():  # type: ignore[no-untyped-def]
    return select(CandidateRow).options(
        selectinload(CandidateRow.parents), selectinload(CandidateRow.evaluation)
    )


def _get(s: Session, model: type[T], key: int, what: str) -> T:
    row = s.get(model, key) if key > 0 else None
    if row is None:
        raise NotFound(f"no {what} with id {key}")
    return row


def _check_parents(s: Session, search_id: int, parent_ids: Iterable[int]) -> None:
    wanted = set(parent_ids)
    if not wanted:
        return
    found = dict(
        s.execute(
            select(CandidateRow.id, CandidateRow.search_id).where(CandidateRow.id.in_(wanted))
        ).all()
    )
    if missing := sorted(wanted - found.keys()):
        raise NotFound(f"no parent candidate with id {', '.join(map(str, missing))}")
    if foreign := sorted(i for i, sid in found.items() if sid != search_id):
        raise InvalidArgument(
            f"parent candidate {', '.join(map(str, foreign))} belongs to another search"
        )


def _check_name(field: str, value: str, *, required: bool = False) -> None:
    if required and not value.strip():
        raise InvalidArgument(f"{field} is required")
    if len(value) > MAX_NAME_CHARS:
        raise InvalidArgument(f"{field} is over the {MAX_NAME_CHARS}-character cap")
    if "\x00" in value:
        raise InvalidArgument(f"{field} contains a NUL character")


def _clean(text_: str) -> str:
    """Free text as stored: a NUL (which PostgreSQL's text cannot hold, and a sandboxed
    program can print) becomes U+FFFD, on every database alike."""
    return text_.replace("\x00", "\ufffd")


def _check_finite(**values: float) -> None:
    """Numbers stored in their own columns: NaN and infinity would sort and sum wrongly
    (and SQLite turns NaN into NULL)."""
    for field, value in values.items():
        if not math.isfinite(value):
            raise InvalidArgument(f"{field} must be a finite number, got {value}")


def _check_text(field: str, value: str, cap: int, *, required: bool = False) -> None:
    if required and not value:
        raise InvalidArgument(f"{field} is empty")
    if len(value.encode()) > cap:
        raise InvalidArgument(f"{field} is {len(value.encode())} bytes, over the {cap}-byte cap")


def _page_size(size: int) -> int:
    if size < 0 or size > MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be between 0 and {MAX_PAGE_SIZE}")
    return size or 100


def _page_after(token: str) -> int:
    if not token:
        return 0
    if not token.isdigit():
        raise InvalidArgument("page_token is not one this service returned")
    return int(token)


def _tail(text_: str, cap: int) -> str:
    data = text_.encode()
    if len(data) <= cap:
        return text_
    return "[...cut...]\n" + data[-cap:].decode(errors="ignore")


def _ts(dt: datetime | None) -> Timestamp | None:
    if dt is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(dt)
    return ts


def _round_msg(row: RoundRow) -> pb.Round:
    msg = pb.Round(
        search_id=row.search_id,
        round_index=row.round_index,
        state=_enum(pb.RoundState, row.state),
        adapter_id=row.adapter_id or "",
        started_at=_ts(row.started_at),
        finished_at=_ts(row.finished_at),
    )
    if row.tuning_loss is not None:
        msg.tuning_loss = row.tuning_loss
    return msg


def _prompt_msg(row: PromptRow) -> pb.Prompt:
    return pb.Prompt(
        id=row.id,
        search_id=row.search_id,
        round_index=row.round_index,
        prompt_index=row.prompt_index,
        text=row.text,
        parent_ids=[p.parent_id for p in row.parents],
        temperature=row.temperature,
        target_json=row.target_json,
        created_at=_ts(row.created_at),
    )


def _candidate_msg(row: CandidateRow, *, include_code: bool = True) -> pb.Candidate:
    msg = pb.Candidate(
        id=row.id,
        search_id=row.search_id,
        round_index=row.round_index,
        origin=_enum(pb.CandidateOrigin, row.origin),
        prompt_id=row.prompt_id or 0,
        sample_index=row.sample_index,
        parent_ids=[p.parent_id for p in row.parents],
        name=row.name,
        code=row.code if include_code else "",
        code_hash=row.code_hash,
        normalized_hash=row.normalized_hash,
        state=_enum(pb.CandidateState, row.state),
        reason=row.reason,
        duplicate_of_id=row.duplicate_of_id or 0,
        proposer=pb.ProposerSettings(backend=row.backend, model_id=row.model_id),
        adapter_id=row.adapter_id,
        raw_completion=row.raw_completion if include_code else "",
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        generation_seconds=row.generation_seconds,
        created_at=_ts(row.created_at),
    )
    if row.temperature is not None:
        msg.proposer.sampling.CopyFrom(
            common.SamplingParams(
                temperature=row.temperature,
                top_p=row.top_p or 0.0,
                max_new_tokens=row.max_new_tokens or 0,
                seed=row.sampling_seed or 0,
                stop=json.loads(row.stop_json),
            )
        )
    if row.fitness is not None:
        msg.fitness = row.fitness
    if (ev := row.evaluation) is not None:
        metrics = common.Metrics(
            num_params=ev.num_params,
            best_val_error=ev.best_val_error or 0.0,
            best_val_accuracy=ev.best_val_accuracy or 0.0,
            train_seconds=ev.train_seconds,
            steps_completed=ev.steps_completed,
            val_curve=[
                common.CurvePoint(step=st, train_loss=tl, val_accuracy=va, val_error=ve)
                for st, tl, va, ve in json.loads(ev.curve_json)
            ],
            extra=json.loads(ev.extra_json),
        )
        if ev.test_accuracy is not None:
            metrics.test_accuracy = ev.test_accuracy
        msg.evaluation.CopyFrom(
            pb.Evaluation(
                status=_enum(common.EvalStatus, ev.status),
                message=ev.message,
                metrics=metrics,
                log_tail=ev.log_tail if include_code else "",
                sandbox_backend=ev.sandbox_backend,
                trainer_id=ev.trainer_id,
                task=ev.task,
                budget_steps=ev.budget_steps,
                budget_seed=ev.budget_seed,
                wall_seconds=ev.wall_seconds,
                created_at=_ts(ev.created_at),
            )
        )
    return msg
