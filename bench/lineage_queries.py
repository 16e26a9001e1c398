"""How fast the lineage store answers with ~100,000 candidates stored.

Fills a fresh database with synthetic evolution (bulk inserts straight into the
tables, with a fixed seed), then times queries and writes through the public
storage API (`RDBStorage`):

    .venv/bin/python -m bench.lineage_queries [--db URL ...] [--candidates 100000]

Scenario A has many short searches (50 x 2,004 candidates), scenario B one deep
search (100,004 candidates); each runs in a fresh database. Without `--db` each
scenario gets a new SQLite file in a temporary folder. A given URL (for example
postgresql://user@host/db) must name an EMPTY database: the benchmark creates
the schema, fills it, and drops its tables after each scenario (it is left empty).
"""

import argparse
import hashlib
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from evo.v1 import common_pb2 as common
from evo.v1 import lineage_pb2 as pb
from sqlalchemy import Engine, Table, func, insert, inspect, select, text

from controller import population
from services.lineage import db, models, rdb
from services.lineage.rdb import RDBStorage

SEEDS = 4
PROMPTS_PER_ROUND = 10
SAMPLES_PER_PROMPT = 20
CHILDREN_PER_ROUND = PROMPTS_PER_ROUND * SAMPLES_PER_PROMPT
PARENTS_PER_PROMPT = 2
TOP = 10  # parents are drawn from the top 10 by fitness
ROUNDS_A = 10
BATCH = 20_000  # candidates per executemany flush

# In the order foreign keys need them.
TABLES: list[Table] = [
    models.SearchRow.__table__,  # type: ignore[list-item]
    models.RoundRow.__table__,  # type: ignore[list-item]
    models.PromptRow.__table__,  # type: ignore[list-item]
    models.CandidateRow.__table__,  # type: ignore[list-item]
    models.PromptParentRow.__table__,  # type: ignore[list-item]
    models.CandidateParentRow.__table__,  # type: ignore[list-item]
    models.EvaluationRow.__table__,  # type: ignore[list-item]
]
ID_TABLES = ("searches", "rounds", "prompts", "candidates", "evaluations")


def column(enum: Any, value: int) -> str:
    """An enum value as the store writes it to a column (its own conversion)."""
    return rdb._col(enum, value)


SCORED = column(pb.CandidateState, pb.CANDIDATE_STATE_SCORED)
FAILED = column(pb.CandidateState, pb.CANDIDATE_STATE_FAILED)
DUPLICATE = column(pb.CandidateState, pb.CANDIDATE_STATE_DUPLICATE)
SEED = column(pb.CandidateOrigin, pb.CANDIDATE_ORIGIN_SEED)
LANGUAGE_MODEL = column(pb.CandidateOrigin, pb.CANDIDATE_ORIGIN_LANGUAGE_MODEL)
FAIL_REASONS = (
    "INVALID: SyntaxError: invalid syntax",
    "CRASHED: RuntimeError: mat1 and mat2 shapes cannot be multiplied",
    "TIMEOUT: training ran past 600 s",
    "OOM: CUDA out of memory",
)
MODEL_ID = "HuggingFaceTB/SmolLM2-135M"


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    searches: int
    rounds: int


def make_scenarios(candidates: int) -> dict[str, Scenario]:
    """A: many searches of 10 rounds; B: one search with all the candidates."""
    per_search = SEEDS + ROUNDS_A * CHILDREN_PER_ROUND
    deep = max(1, round((candidates - SEEDS) / CHILDREN_PER_ROUND))
    return {
        "A": Scenario("A", "A many searches", max(1, round(candidates / per_search)), ROUNDS_A),
        "B": Scenario("B", "B one deep search", 1, deep),
    }


def program(rng: random.Random, tag: int) -> str:
    """A small, distinct PyTorch model as a language model might write it."""
    widths = [64] + [rng.choice((16, 32, 64, 128, 256)) for _ in range(rng.randint(2, 5))]
    acts = ("ReLU", "GELU", "Tanh")
    layers = "\n".join(
        f"            nn.Linear({a}, {b}),\n            nn.{rng.choice(acts)}(),"
        for a, b in itertools.pairwise(widths)
    )
    return (
        "import torch\nfrom torch import nn\n\n\n"
        f"class Net{tag}(nn.Module):\n"
        '    """A multilayer perceptron for MNIST-1D."""\n\n'
        "    def __init__(self) -> None:\n"
        "        super().__init__()\n"
        f"        self.body = nn.Sequential(\n{layers}\n"
        f"            nn.Linear({widths[-1]}, 10),\n"
        "        )\n\n"
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
        "        return self.body(x)\n"
    )


def sha256(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


@dataclass
class SearchInfo:
    """What the timed part needs to know about one filled search."""

    search_id: int
    rounds: int
    last_round_id: int = 0  # a scored candidate of the last round
    # The parent nearest the middle round (most children first), for get_descendants.
    middle_parent_id: int = 0
    middle_parent_round: int = 0


@dataclass
class Filler:
    """Writes synthetic searches with big executemany batches; ids are assigned here."""

    engine: Engine
    rng: random.Random
    rows: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {t.name: [] for t in TABLES}
    )
    next_id: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ID_TABLES, 1))
    clock: datetime = datetime(2026, 1, 1, tzinfo=UTC)

    def add(self, table: str, row: dict[str, Any]) -> int:
        if table in self.next_id:
            row["id"] = self.next_id[table]
            self.next_id[table] += 1
        self.rows[table].append(row)
        return row.get("id", 0)

    def flush(self) -> None:
        with self.engine.begin() as conn:
            for table in TABLES:
                if rows := self.rows[table.name]:
                    conn.execute(insert(table), rows)
                    rows.clear()

    def tick(self, seconds: float) -> datetime:
        self.clock += timedelta(seconds=seconds)
        return self.clock

    def search(self, index: int, rounds: int) -> SearchInfo:
        """One search: seeds, then `rounds` rounds of prompts and children."""
        now = self.tick(60)
        sid = self.add(
            "searches",
            {
                "name": f"bench-{index}",
                "task": "mnist1d",
                "method": "evoprompting",
                "config_json": json.dumps({"rounds": rounds, "children": CHILDREN_PER_ROUND}),
                "state": column(pb.SearchState, pb.SEARCH_STATE_FINISHED),
                "message": "",
                "client_token": f"bench-{index}",
                "created_at": now,
                "updated_at": now,
            },
        )
        info = SearchInfo(search_id=sid, rounds=rounds)
        top: list[tuple[float, int]] = []  # (-fitness, id), best first
        originals: list[tuple[int, str]] = []  # (id, normalized_hash) of non-duplicates
        children: Counter[int] = Counter()
        middle = (rounds + 1) // 2
        round_of: dict[int, int] = {}

        for rnd in range(rounds + 1):
            self.add_round(sid, rnd)
            scored: list[tuple[float, int]] = []
            if rnd == 0:
                for i in range(SEEDS):
                    cid, fitness = self.candidate(sid, 0, None, i, [], originals)
                    round_of[cid] = 0
                    if fitness is not None:
                        scored.append((-fitness, cid))
            else:
                pool = [cid for _, cid in top]
                for p in range(PROMPTS_PER_ROUND):
                    parents = [self.rng.choice(pool) for _ in range(PARENTS_PER_PROMPT)]
                    prompt_id = self.prompt(sid, rnd, p, parents)
                    for sample in range(SAMPLES_PER_PROMPT):
                        cid, fitness = self.candidate(
                            sid, rnd, prompt_id, sample, parents, originals
                        )
                        children.update(parents)
                        round_of[cid] = rnd
                        if fitness is not None:
                            scored.append((-fitness, cid))
                            if rnd == rounds:
                                info.last_round_id = cid
            top = sorted(top + scored)[:TOP]
            if len(self.rows["candidates"]) >= BATCH:
                self.flush()
        # Often no middle-round candidate has children: parents come from the top 10,
        # which rarely changes once thousands of candidates are scored.
        pick = min(children, key=lambda c: (abs(round_of[c] - middle), -children[c], c))
        info.middle_parent_id, info.middle_parent_round = pick, round_of[pick]
        return info

    def add_round(self, sid: int, rnd: int) -> None:
        start = self.tick(1)
        self.add(
            "rounds",
            {
                "search_id": sid,
                "round_index": rnd,
                "state": column(pb.RoundState, pb.ROUND_STATE_FINISHED),
                "adapter_id": "",
                "tuning_loss": None,
                "started_at": start,
                "finished_at": start + timedelta(minutes=30),
            },
        )

    def prompt(self, sid: int, rnd: int, index: int, parents: list[int]) -> int:
        pid = self.add(
            "prompts",
            {
                "search_id": sid,
                "round_index": rnd,
                "prompt_index": index,
                "text": f"# Round {rnd}, prompt {index}: improve on parents {parents}\n",
                "temperature": 0.8,
                "target_json": json.dumps({"num_params": 5000, "val_error": 0.1}),
                "created_at": self.tick(1),
            },
        )
        for pos, parent in enumerate(parents):
            self.add("prompt_parents", {"prompt_id": pid, "position": pos, "parent_id": parent})
        return pid

    def candidate(
        self,
        sid: int,
        rnd: int,
        prompt_id: int | None,
        sample: int,
        parents: list[int],
        originals: list[tuple[int, str]],
    ) -> tuple[int, float | None]:
        """One candidate row (plus parent links and evaluation); returns (id, fitness)."""
        rng = self.rng
        seed = prompt_id is None
        code = program(rng, self.next_id["candidates"])
        digest = sha256(code)
        roll = 0.0 if seed else rng.random()
        state = SCORED if roll < 0.8 else FAILED if roll < 0.9 else DUPLICATE
        norm, duplicate_of, reason = digest, None, ""
        if state == DUPLICATE and originals:
            duplicate_of, norm = rng.choice(originals)
            reason = f"same program as candidate {duplicate_of}"
        elif state == DUPLICATE:
            state = FAILED
        if state == FAILED:
            reason = rng.choice(FAIL_REASONS)
        num_params = rng.randint(1_000, 100_000)
        val_error = rng.uniform(0.05, 0.5)
        test_error = min(1.0, val_error + rng.uniform(0.0, 0.02))
        fitness = population.fitness(num_params, val_error) if state == SCORED else None
        now = self.tick(2)
        cid = self.add(
            "candidates",
            {
                "search_id": sid,
                "round_index": rnd,
                "origin": SEED if seed else LANGUAGE_MODEL,
                "prompt_id": prompt_id,
                "sample_index": sample,
                "origin_key": f"{rnd}:{prompt_id or 0}:{sample}",
                "name": f"seed-{sample}" if seed else "",
                "code": code,
                "code_hash": digest,
                "normalized_hash": norm,
                "state": state,
                "reason": reason,
                "duplicate_of_id": duplicate_of,
                "raw_completion": "",
                "backend": "" if seed else "transformers",
                "model_id": "" if seed else MODEL_ID,
                "temperature": None if seed else 0.8,
                "top_p": None if seed else 0.95,
                "max_new_tokens": None if seed else 1024,
                "sampling_seed": None if seed else rng.getrandbits(31),
                "stop_json": "[]",
                "adapter_id": "",
                "prompt_tokens": 0 if seed else rng.randint(800, 2000),
                "completion_tokens": 0 if seed else rng.randint(200, 600),
                "generation_seconds": 0.0 if seed else rng.uniform(1.0, 5.0),
                "created_at": now,
                "num_params": num_params if state == SCORED else None,
                "best_val_error": val_error if state == SCORED else None,
                "test_error": test_error if state == SCORED else None,
                "fitness": fitness,
            },
        )
        for pos, parent in enumerate(parents):
            self.add("candidate_parents", {"child_id": cid, "position": pos, "parent_id": parent})
        if state != DUPLICATE:
            originals.append((cid, norm))
        if state == SCORED:
            self.add(
                "evaluations", evaluation_row(rng, cid, num_params, val_error, test_error, now)
            )
        return cid, fitness


def evaluation_row(
    rng: random.Random,
    cid: int,
    num_params: int,
    val_error: float,
    test_error: float,
    now: datetime,
) -> dict[str, Any]:
    curve = [
        [
            step,
            round(2.3 / (1 + step / 500), 4),
            round(1 - val_error * (1 + 1000 / (step + 250)), 4),
        ]
        for step in range(500, 5001, 500)
    ]
    return {
        "candidate_id": cid,
        "status": column(common.EvalStatus, common.EVAL_STATUS_OK),
        "message": "",
        "num_params": num_params,
        "best_val_error": val_error,
        "best_val_accuracy": 1 - val_error,
        "test_accuracy": 1 - test_error,
        "train_seconds": rng.uniform(20, 120),
        "steps_completed": 5000,
        "curve_json": json.dumps([[s, tl, va, round(1 - va, 4)] for s, tl, va in curve]),
        "extra_json": "{}",
        "log_tail": "",
        "sandbox_backend": "subprocess",
        "trainer_id": "trainer-0",
        "task": "mnist1d",
        "budget_steps": 5000,
        "budget_seed": 0,
        "wall_seconds": rng.uniform(25, 130),
        "created_at": now + timedelta(minutes=2),
    }


# ---------------------------------------------------------------- databases


def backend_label(engine: Engine) -> str:
    version = ".".join(str(v) for v in (engine.dialect.server_version_info or ())[:3])
    return f"{engine.dialect.name} {version}".strip()


def drop_everything(url: str) -> None:
    """Drop the lineage tables and Alembic's version table."""
    engine = db.make_engine(url)
    try:
        models.Base.metadata.drop_all(engine)
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    finally:
        engine.dispose()


def require_empty(url: str) -> None:
    engine = db.make_engine(url)
    try:
        tables = inspect(engine).get_table_names()
    finally:
        engine.dispose()
    if tables:
        sys.exit(f"{url}: the benchmark needs an empty database, found tables {tables}")


@contextmanager
def fresh_storage(url: str | None, scenario: str, tmp: Path) -> Iterator[RDBStorage]:
    """An empty, migrated store: a new SQLite file, or `url` with its tables dropped after."""
    storage = RDBStorage(url or f"sqlite:///{tmp / f'lineage-{scenario}.db'}")
    try:
        yield storage
    finally:
        storage.close()
        if url is not None:
            drop_everything(url)


def after_fill(engine: Engine, next_id: dict[str, int]) -> None:
    """PostgreSQL: move id sequences past the ids given, and VACUUM ANALYZE as autovacuum would."""
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as conn:
        for table, nxt in next_id.items():
            if nxt > 1:
                conn.execute(
                    text("SELECT setval(pg_get_serial_sequence(:t, 'id'), :v)"),
                    {"t": table, "v": nxt - 1},
                )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


def count_rows(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t.name: conn.scalar(select(func.count()).select_from(t)) or 0 for t in TABLES}


# ---------------------------------------------------------------- timing


@dataclass
class Row:
    database: str
    scenario: str
    query: str
    size: int
    median_ms: float
    p95_ms: float


def summarize(times: list[float]) -> tuple[float, float]:
    """Median and 95th percentile of `times` (seconds), in milliseconds."""
    ms = [t * 1000 for t in times]
    p95 = statistics.quantiles(ms, n=20, method="inclusive")[-1] if len(ms) > 1 else ms[0]
    return statistics.median(ms), p95


def time_query(fn: Callable[[], object], repeats: int, budget_s: float) -> tuple[int, list[float]]:
    """Run `fn` once to warm up, then `repeats` times; returns (result size, seconds each).

    A slow query runs fewer times, so as to take about `budget_s` (at least 5 runs); one
    whose warm-up alone took over `budget_s` is not run again: its warm-up is the result.
    """
    start = time.perf_counter()
    result = fn()
    warm_up = time.perf_counter() - start
    size = len(result) if isinstance(result, list) else 1
    if warm_up > budget_s:
        return size, [warm_up]
    times = []
    for _ in range(min(repeats, max(5, int(budget_s / warm_up)))):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return size, times


def child_requests(
    storage: RDBStorage, info: SearchInfo, count: int, rng: random.Random
) -> list[pb.RecordCandidateRequest]:
    """Prompts for a new round (recorded untimed) and `count` children to record."""
    sid, rnd = info.search_id, info.rounds + 1
    storage.record_round(
        pb.RecordRoundRequest(search_id=sid, round_index=rnd, state=pb.ROUND_STATE_GENERATING)
    )
    pool = [c.id for c in storage.get_population(pb.GetPopulationRequest(search_id=sid, k=TOP))]
    sampling = common.SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=1024)
    reqs = []
    for p in range((count + SAMPLES_PER_PROMPT - 1) // SAMPLES_PER_PROMPT):
        parents = [rng.choice(pool) for _ in range(PARENTS_PER_PROMPT)]
        prompt, _ = storage.record_prompt(
            pb.RecordPromptRequest(
                search_id=sid,
                round_index=rnd,
                prompt_index=p,
                text=f"# Round {rnd}, prompt {p}: improve on parents {parents}\n",
                parent_ids=parents,
                temperature=0.8,
            )
        )
        for sample in range(min(SAMPLES_PER_PROMPT, count - len(reqs))):
            reqs.append(
                pb.RecordCandidateRequest(
                    search_id=sid,
                    round_index=rnd,
                    origin=pb.CANDIDATE_ORIGIN_LANGUAGE_MODEL,
                    prompt_id=prompt.id,
                    sample_index=sample,
                    parent_ids=parents,
                    code=program(rng, 10_000_000 + len(reqs)),
                    proposer=pb.ProposerSettings(
                        backend="transformers", model_id=MODEL_ID, sampling=sampling
                    ),
                    prompt_tokens=rng.randint(800, 2000),
                    completion_tokens=rng.randint(200, 600),
                    generation_seconds=rng.uniform(1.0, 5.0),
                )
            )
    return reqs


def time_writes(
    storage: RDBStorage, reqs: list[pb.RecordCandidateRequest], want_created: bool
) -> list[float]:
    times = []
    for req in reqs:
        start = time.perf_counter()
        _, created = storage.record_candidate(req)
        times.append(time.perf_counter() - start)
        assert created == want_created, "record_candidate was not idempotent"
    return times


def run_scenario(
    url: str | None, scenario: Scenario, tmp: Path, args: argparse.Namespace
) -> list[Row]:
    with fresh_storage(url, scenario.key, tmp) as storage:
        label = backend_label(storage.engine)
        rng = random.Random(args.seed)
        filler = Filler(storage.engine, rng)
        start = time.perf_counter()
        infos = [filler.search(i, scenario.rounds) for i in range(scenario.searches)]
        filler.flush()
        after_fill(storage.engine, filler.next_id)
        fill_s = time.perf_counter() - start
        counts = count_rows(storage.engine)
        print(
            f"{label}, {scenario.label}: filled {scenario.searches} search(es), "
            f"{counts['candidates']:,} candidates, {sum(counts.values()):,} rows in {fill_s:.1f} s"
            f" ({', '.join(f'{t} {n:,}' for t, n in counts.items())})",
            flush=True,
        )

        info = infos[-1]
        sid = info.search_id
        queries: list[tuple[str, Callable[[], object]]] = [
            (
                "get_population k=10",
                lambda: storage.get_population(pb.GetPopulationRequest(search_id=sid, k=10)),
            ),
            (
                f"get_ancestors (round {info.rounds})",
                lambda: storage.get_ancestors(info.last_round_id, 0),
            ),
            (
                f"get_descendants (round {info.middle_parent_round})",
                lambda: storage.get_descendants(info.middle_parent_id, 0),
            ),
            ("get_pareto_front val", lambda: storage.get_pareto_front(sid, pb.ERROR_METRIC_VAL)),
            ("get_round_stats", lambda: storage.get_round_stats(sid)),
            ("get_candidate", lambda: storage.get_candidate(info.last_round_id)),
        ]
        rows = []
        for name, fn in queries:
            size, times = time_query(fn, args.repeats, args.budget)
            if len(times) < args.repeats:
                name += f" [{len(times)} run{'s' * (len(times) > 1)}]"
            rows.append(Row(label, scenario.label, name, size, *summarize(times)))

        reqs = child_requests(storage, info, args.writes, rng)
        for name, created in (("record_candidate new", True), ("record_candidate again", False)):
            times = time_writes(storage, reqs, created)
            rows.append(
                Row(label, scenario.label, f"{name} (per call)", len(reqs), *summarize(times))
            )
        return rows


# ---------------------------------------------------------------- output

HEADERS = ("database", "scenario", "query", "result size", "median ms", "p95 ms")


def cells(row: Row) -> tuple[str, ...]:
    return (
        row.database,
        row.scenario,
        row.query,
        f"{row.size:,}",
        f"{row.median_ms:.2f}",
        f"{row.p95_ms:.2f}",
    )


def format_table(rows: list[Row], markdown: bool) -> str:
    table = [HEADERS, *(cells(r) for r in rows)]
    numeric = {3, 4, 5}
    if markdown:
        rule = ["---:" if i in numeric else "---" for i in range(len(HEADERS))]
        lines = [table[0], rule, *table[1:]]
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]

    def fmt(line: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(table[0]), rule, *(fmt(line) for line in table[1:])])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--db",
        action="append",
        metavar="URL",
        help="database URL, repeatable (default: a new SQLite file in a temporary folder); "
        "it must name an empty database",
    )
    parser.add_argument("--candidates", type=int, default=100_000, help="per scenario")
    parser.add_argument("--scenario", choices=("A", "B", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per query")
    parser.add_argument(
        "--budget", type=float, default=30.0, help="seconds per query before it runs fewer times"
    )
    parser.add_argument("--writes", type=int, default=500, help="children recorded via the API")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)

    urls: list[str | None] = list(args.db) if args.db else [None]
    for url in urls:
        if url is not None:
            require_empty(url)
    chosen = make_scenarios(args.candidates)
    keys = ("A", "B") if args.scenario == "both" else (args.scenario,)
    rows: list[Row] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="evo-bench-") as tmp:
        for url in urls:
            for key in keys:
                rows += run_scenario(url, chosen[key], Path(tmp), args)
    print()
    print(format_table(rows, args.markdown))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
