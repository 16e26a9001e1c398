"""How lineage records look to a person: tables, a family tree, DOT and JSON."""

import json
from collections.abc import Iterable, Sequence
from typing import Any

from evo.v1 import common_pb2
from evo.v1 import lineage_pb2 as pb
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table


def to_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def dump_json(data: Any) -> str:
    if isinstance(data, Message):
        data = to_dict(data)
    elif isinstance(data, list):
        data = [to_dict(d) if isinstance(d, Message) else d for d in data]
    return json.dumps(data, indent=2)


def short_state(value: int, enum: Any = pb.CandidateState) -> str:
    return enum.Name(value).split("_STATE_", 1)[-1].lower()


def _num(value: float | None, fmt: str = "{:.4f}") -> str:
    return "-" if value is None else fmt.format(value)


def _fitness(c: pb.Candidate) -> float | None:
    return c.fitness if c.HasField("fitness") else None


def _params(c: pb.Candidate) -> int | None:
    return c.evaluation.metrics.num_params if c.HasField("evaluation") else None


def _val_error(c: pb.Candidate) -> float | None:
    if c.HasField("evaluation") and c.evaluation.status == common_pb2.EVAL_STATUS_OK:
        return c.evaluation.metrics.best_val_error
    return None


ORIGINS = {
    pb.CANDIDATE_ORIGIN_SEED: "seed",
    pb.CANDIDATE_ORIGIN_LANGUAGE_MODEL: "lm",
    pb.CANDIDATE_ORIGIN_MUTATION: "mutation",
}


def searches_table(searches: Sequence[pb.Search]) -> Table:
    table = Table(title="Searches")
    for col in ("id", "name", "task", "method", "state", "rounds", "candidates", "best fitness"):
        table.add_column(col)
    for s in searches:
        table.add_row(
            str(s.id),
            s.name,
            s.task,
            s.method,
            short_state(s.state, pb.SearchState),
            str(s.num_rounds),
            str(s.num_candidates),
            _num(s.best_fitness if s.HasField("best_fitness") else None, "{:.1f}"),
        )
    return table


def search_detail(search: pb.Search) -> Table:
    table = Table(title=f"Search {search.id}: {search.name}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    table.add_row("task", search.task)
    table.add_row("method", search.method)
    table.add_row("state", short_state(search.state, pb.SearchState))
    if search.message:
        table.add_row("message", search.message)
    table.add_row("created", search.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC"))
    table.add_row("candidates", str(search.num_candidates))
    best = search.best_fitness if search.HasField("best_fitness") else None
    table.add_row("best fitness", _num(best, "{:.1f}"))
    table.add_row("config", json.dumps(json.loads(search.config_json or "{}"), indent=2))
    return table


def round_stats_table(rounds: Sequence[pb.RoundStats]) -> Table:
    table = Table(title="Rounds")
    cols = ("round", "children", "scored", "dup", "failed", "filtered", "pending")
    for col in (*cols, "best", "best so far", "min params", "tokens"):
        table.add_column(col, overflow="fold")
    for r in rounds:
        table.add_row(
            str(r.round_index),
            str(r.candidates),
            str(r.scored),
            str(r.duplicate),
            str(r.failed),
            str(r.filtered),
            str(r.pending),
            _num(r.best_fitness if r.HasField("best_fitness") else None, "{:.1f}"),
            _num(r.best_fitness_so_far if r.HasField("best_fitness_so_far") else None, "{:.1f}"),
            str(r.min_params) if r.HasField("min_params") else "-",
            str(r.prompt_tokens + r.completion_tokens),
        )
    return table


def candidates_table(
    title: str, candidates: Iterable[pb.Candidate], depths: Sequence[int] | None = None
) -> Table:
    table = Table(title=title)
    if depths is not None:
        table.add_column("depth")
    for col in ("id", "round", "origin", "state", "params", "val error", "fitness", "parents"):
        table.add_column(col)
    for i, c in enumerate(candidates):
        row = [
            str(c.id),
            str(c.round_index),
            ORIGINS.get(c.origin, "?"),
            short_state(c.state),
            str(_params(c) or "-"),
            _num(_val_error(c)),
            _num(_fitness(c), "{:.1f}"),
            ",".join(map(str, c.parent_ids)) or "-",
        ]
        table.add_row(*([str(depths[i])] if depths is not None else []), *row)
    return table


def pareto_table(points: Sequence[pb.ParetoPoint]) -> Table:
    table = Table(title="Pareto front (fewer parameters, lower error)")
    for col in ("id", "round", "name", "params", "error", "fitness"):
        table.add_column(col)
    for p in points:
        c = p.candidate
        table.add_row(
            str(c.id),
            str(c.round_index),
            c.name or "-",
            str(p.num_params),
            _num(p.error),
            _num(_fitness(c), "{:.1f}"),
        )
    return table


def candidate_detail(console: Console, c: pb.Candidate) -> None:
    console.print(candidates_table(f"Candidate {c.id}", [c]))
    if c.reason:
        console.print(f"reason: {c.reason}")
    if c.duplicate_of_id:
        console.print(f"duplicate of: {c.duplicate_of_id}")
    if c.prompt_id:
        console.print(f"prompt: {c.prompt_id} (sample {c.sample_index})")
    if c.proposer.model_id:
        s = c.proposer.sampling
        console.print(
            f"proposer: {c.proposer.backend} {c.proposer.model_id} temperature={s.temperature:g} "
            f"tokens={c.prompt_tokens}+{c.completion_tokens}"
        )
    if c.HasField("evaluation"):
        ev = c.evaluation
        m = ev.metrics
        test = f"{m.test_accuracy:.4f}" if m.HasField("test_accuracy") else "-"
        status = common_pb2.EvalStatus.Name(ev.status).removeprefix("EVAL_STATUS_")
        console.print(
            f"evaluation: {' '.join(filter(None, [status, ev.message]))} | task {ev.task} | "
            f"steps {m.steps_completed} | "
            f"test accuracy {test} | {m.train_seconds:.1f}s on {ev.sandbox_backend or '-'}"
        )
    console.print("code:")
    console.print(c.code, markup=False, highlight=False)


# ---------------------------------------------------------------- the family tree


def tree_text(candidates: Sequence[pb.Candidate]) -> str:
    """An indented tree: each child under its first parent, other parents named beside it."""
    children: dict[int, list[pb.Candidate]] = {}
    roots = []
    ids = {c.id for c in candidates}
    for c in candidates:
        first = next((p for p in c.parent_ids if p in ids), None)
        if first is None:
            roots.append(c)
        else:
            children.setdefault(first, []).append(c)
    lines: list[str] = []

    def label(c: pb.Candidate) -> str:
        parts = [f"#{c.id}"]
        if c.name:
            parts.append(c.name)
        parts.append(f"r{c.round_index}")
        parts.append(short_state(c.state))
        if c.duplicate_of_id:
            parts.append(f"of #{c.duplicate_of_id}")
        if (params := _params(c)) and c.state == pb.CANDIDATE_STATE_SCORED:
            parts.append(f"params={params}")
        if (err := _val_error(c)) is not None:
            parts.append(f"err={err:.4f}")
        if (fit := _fitness(c)) is not None:
            parts.append(f"fitness={fit:.1f}")
        others = sorted(set(c.parent_ids[1:]) - {c.parent_ids[0]}) if c.parent_ids else []
        if others:
            parts.append("also from " + ",".join(f"#{p}" for p in others))
        return " ".join(parts)

    def walk(c: pb.Candidate, prefix: str, last: bool, top: bool) -> None:
        lines.append(label(c) if top else f"{prefix}{'└── ' if last else '├── '}{label(c)}")
        kids = children.get(c.id, [])
        inner = "" if top else prefix + ("    " if last else "│   ")
        for i, kid in enumerate(kids):
            walk(kid, inner, i == len(kids) - 1, False)

    for root in roots:
        walk(root, "", True, True)
    return "\n".join(lines)


_DOT_COLORS = {
    pb.CANDIDATE_STATE_SCORED: "palegreen",
    pb.CANDIDATE_STATE_DUPLICATE: "lightgrey",
    pb.CANDIDATE_STATE_FAILED: "lightpink",
    pb.CANDIDATE_STATE_FILTERED: "khaki",
    pb.CANDIDATE_STATE_PENDING: "white",
}


def tree_dot(search_id: int, candidates: Sequence[pb.Candidate]) -> str:
    lines = [
        f'digraph "search_{search_id}" {{',
        "  rankdir=LR;",
        "  node [shape=box, style=filled];",
    ]
    for c in candidates:
        text = f"#{c.id} r{c.round_index} {short_state(c.state)}"
        if (params := _params(c)) and (err := _val_error(c)) is not None:
            text += f"\\n{params} params, err {err:.3f}"
        color = _DOT_COLORS.get(c.state, "white")
        lines.append(f'  c{c.id} [label="{text}", fillcolor={color}];')
    for c in candidates:
        for parent in dict.fromkeys(c.parent_ids):
            lines.append(f"  c{parent} -> c{c.id};")
    lines.append("}")
    return "\n".join(lines)


def tree_json(search: pb.Search, candidates: Sequence[pb.Candidate]) -> str:
    edges = [[p, c.id] for c in candidates for p in dict.fromkeys(c.parent_ids)]
    return json.dumps(
        {
            "search": to_dict(search),
            "candidates": [to_dict(c) for c in candidates],
            "edges": edges,
        },
        indent=2,
    )
