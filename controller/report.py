"""A self-contained HTML report of one search, read from the lineage store over gRPC.

The report is one `index.html` with its figures embedded as data URIs (the PNGs are also
written beside it), so it can be mailed, attached to a CI run or opened offline.
Everything the language model or a user wrote (code, names, messages) is HTML-escaped.
"""

import base64
import html
import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: reports are written by servers and CI too

import matplotlib.pyplot as plt
from evo.v1 import lineage_pb2 as pb
from evo.v1 import lineage_pb2_grpc as pb_grpc
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.colors import BoundaryNorm
from matplotlib.lines import Line2D

from controller import analysis, population
from controller.config import ConfigError, SearchConfig

SCORED = pb.CANDIDATE_STATE_SCORED
SEED = pb.CANDIDATE_ORIGIN_SEED
SEED_STYLE: dict[str, Any] = {"marker": "*", "s": 120, "color": "black", "label": "seed"}
CHILD_STYLE: dict[str, Any] = {"s": 18, "color": "tab:blue", "alpha": 0.6, "label": "child"}
ROUND_STYLE: dict[str, Any] = {"cmap": "viridis", "s": 30, "alpha": 0.85, "edgecolors": "none"}
FRONT_STYLE: dict[str, Any] = {"color": "crimson", "marker": "o", "mfc": "none", "ms": 9}
BEST_STYLE: dict[str, Any] = {"color": "crimson", "marker": "o", "lw": 2, "label": "best so far"}
RING_STYLE: dict[str, Any] = {"fc": "none", "ec": "crimson", "linewidths": 1.5, "zorder": 4}
TOP_FRONT_STYLE: dict[str, Any] = {"color": "darkorange", "lw": 2, "ls": "--"}


@dataclass
class SearchData:
    """Everything the report shows, fetched once so that figures and tables agree."""

    search: pb.Search
    candidates: list[pb.Candidate]
    rounds: list[pb.RoundStats]
    front: list[pb.ParetoPoint]
    top: list[pb.Candidate]


def population_size(search: pb.Search) -> int:
    try:
        return int(json.loads(search.config_json)["evolution"]["population_size"])
    except (ValueError, KeyError, TypeError):
        return 10


def fetch(stub: pb_grpc.LineageStub, search_id: int, top: int, timeout: float) -> SearchData:
    """The five reads the report needs, each with a deadline so a hung store cannot hang us."""
    search = stub.GetSearch(pb.GetSearchRequest(search_id=search_id), timeout=timeout)
    candidates: list[pb.Candidate] = []
    token = ""
    while True:
        page = stub.ListCandidates(
            pb.ListCandidatesRequest(
                search_id=search_id, page_size=1000, page_token=token, include_code=True
            ),
            timeout=timeout,
        )
        candidates.extend(page.candidates)
        token = page.next_page_token
        if not token:
            break
    rounds = stub.GetRoundStats(pb.GetRoundStatsRequest(search_id=search_id), timeout=timeout)
    front = stub.GetParetoFront(
        pb.GetParetoFrontRequest(search_id=search_id, error_metric=pb.ERROR_METRIC_TEST),
        timeout=timeout,
    )
    return SearchData(
        search, candidates, list(rounds.rounds), list(front.points), best(search, candidates, top)
    )


def best(search: pb.Search, candidates: list[pb.Candidate], top: int) -> list[pb.Candidate]:
    """What the search returns (population.result under its stored config: the best
    children under the paper's population), at most `top` of them."""
    try:
        rules = SearchConfig.from_json(search.config_json).rules
    except (ConfigError, ValueError):
        rules = population.Rules(population=population.SEEDS_STAY)
    rules = population.Rules(**{**rules.__dict__, "population_size": top})
    scored = {c.id: c for c in _scored(candidates)}
    members = [population.Member(c.id, c.round_index, c.fitness) for c in scored.values()]
    return [scored[m.id] for m in population.result(rules, members)]


def _opt(message: Any, field: str) -> Any:
    """An optional proto field's value, or None when unset (proto3 would say 0)."""
    return getattr(message, field) if message.HasField(field) else None


def _fitness(c: pb.Candidate) -> float | None:
    return _opt(c, "fitness")


def _test_error(c: pb.Candidate) -> float | None:
    accuracy = _opt(c.evaluation.metrics, "test_accuracy")
    return None if accuracy is None else 1 - accuracy


def _scored(cands: Iterable[pb.Candidate]) -> list[pb.Candidate]:
    return [c for c in cands if c.state == SCORED and _fitness(c) is not None]


def _nothing(ax: Axes, text: str) -> None:
    """An empty search still gets its figure, saying why it is empty, instead of an error."""
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=13, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _round_ticks(lo: int, hi: int) -> range:
    """Whole rounds only, about ten of them at most, even when there is just one."""
    return range(lo, hi + 1, (hi - lo) // 10 + 1)


def _round_axis(ax: Axes, rounds: list[int]) -> None:
    ax.set_xlim(min(rounds) - 0.5, max(rounds) + 0.5)  # room for the jitter
    ax.set_xticks(_round_ticks(min(rounds), max(rounds)))
    ax.set_xlabel("round")


def _round_norm(lo: int, hi: int) -> BoundaryNorm:
    """One colour band per round, so the colour bar reads as whole rounds."""
    return BoundaryNorm([r - 0.5 for r in range(lo, hi + 2)], plt.get_cmap("viridis").N)


def plot_pareto(ax: Axes, data: SearchData) -> None:
    pts = [c for c in _scored(data.candidates) if _test_error(c) is not None]
    ax.set_title("Size vs test error (Pareto front: lower left is better)")
    if not pts:
        return _nothing(ax, "no scored candidates with a test accuracy yet")
    seeds = [c for c in pts if c.origin == SEED]
    kids = [c for c in pts if c.origin != SEED]
    if kids:
        xs = [c.evaluation.metrics.num_params for c in kids]
        rounds = [c.round_index for c in kids]
        norm = _round_norm(min(rounds), max(rounds))
        sc = ax.scatter(
            xs, [_test_error(c) for c in kids], c=rounds, norm=norm, zorder=5, **ROUND_STYLE
        )
        ax.figure.colorbar(sc, ax=ax, label="round", ticks=_round_ticks(min(rounds), max(rounds)))
    for c in seeds:
        x, y = c.evaluation.metrics.num_params, _test_error(c)
        ax.scatter([x], [y], marker="*", s=220, color="black", zorder=2)
        ax.annotate(c.name or f"#{c.id}", (x, y), xytext=(6, 6), textcoords="offset points")
    if data.front:
        front = [(p.num_params, p.error) for p in data.front]
        ax.step(*zip(*front, strict=True), where="post", zorder=3, **FRONT_STYLE)
    top_front = analysis.top_pareto_front(
        [
            analysis.Point(c.id, c.fitness, c.evaluation.metrics.num_params, _test_error(c) or 0)
            for c in kids
        ]
    )
    if top_front:
        xy = [(p.num_params, p.error) for p in top_front]
        ax.step(*zip(*xy, strict=True), where="post", zorder=4, **TOP_FRONT_STYLE)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("test error (1 - test accuracy)")
    ax.legend(
        handles=[
            Line2D([], [], marker="*", ls="", color="black", ms=12, label="seed"),
            Line2D([], [], marker="o", ls="", color="tab:green", label="child (colour = round)"),
            Line2D([], [], color="crimson", label="Pareto front"),
            Line2D(
                [], [], label="front of the top 20 children (paper, Fig. 2a)", **TOP_FRONT_STYLE
            ),
        ],
        loc="best",
        framealpha=0.9,
    )
    ax.grid(True, which="both", alpha=0.25)


def plot_fitness(ax: Axes, data: SearchData) -> None:
    scored = _scored(data.candidates)
    ax.set_title("Fitness by round")
    if not scored:
        return _nothing(ax, "no scored candidates yet")
    jitter = random.Random(0)  # the same report twice draws the same picture
    for is_seed, style in ((True, SEED_STYLE), (False, CHILD_STYLE)):
        group = [c for c in scored if (c.origin == SEED) == is_seed]
        if group:
            xs = [c.round_index + jitter.uniform(-0.18, 0.18) for c in group]
            ax.scatter(xs, [-(_fitness(c) or 0.0) for c in group], **style)
    so_far = [(r.round_index, _opt(r, "best_fitness_so_far")) for r in data.rounds]
    best = [(rnd, -value) for rnd, value in so_far if value is not None]
    if best:
        ax.plot(*zip(*best, strict=True), drawstyle="steps-post", **BEST_STYLE)
    values = [-(_fitness(c) or 0.0) for c in scored] + [b[1] for b in best]
    ax.set_yscale("log" if all(v > 0 for v in values) else "symlog")
    _round_axis(ax, [c.round_index for c in scored] + [b[0] for b in best])
    ax.set_ylabel("-fitness = params x val error (lower is better)")
    ax.legend(loc="upper right")
    ax.grid(True, which="major", alpha=0.25)


def children_fitness(candidates: list[pb.Candidate]) -> list[float | None]:
    """Every child in the order generated, its fitness if scored (the bootstrap's input)."""
    kids = sorted((c for c in candidates if c.origin != SEED), key=lambda c: c.id)
    return [_fitness(c) if c.state == SCORED else None for c in kids]


def plot_curve(ax: Axes, data: SearchData) -> None:
    ax.set_title("Best fitness against children generated (bootstrap: 100 samples of 20)")
    curve = analysis.bootstrap_best_fitness(children_fitness(data.candidates))
    if not curve:
        return _nothing(ax, "no scored child yet")
    xs = [p.children for p in curve]
    ax.fill_between(xs, [-p.low for p in curve], [-p.high for p in curve], alpha=0.25,
                    color="tab:blue", step="post", label="10th-90th percentile")  # fmt: skip
    ax.step(xs, [-p.mean for p in curve], where="post", color="tab:blue", label="mean")
    seeds = [-(_fitness(c) or 0.0) for c in _scored(data.candidates) if c.origin == SEED]
    if seeds:
        ax.axhline(min(seeds), ls=":", color="black", label="best seed")
    values = [-p.low for p in curve] + [-p.high for p in curve] + seeds
    ax.set_yscale("log" if all(v > 0 for v in values) else "symlog")
    ax.set_xlabel("children generated")
    ax.set_ylabel("-fitness = params x val error (lower is better)")
    ax.legend(loc="upper right")
    ax.grid(True, which="major", alpha=0.25)


def _lineage_positions(cands: list[pb.Candidate]) -> dict[int, tuple[float, float]]:
    """Round on x; within a round the best scored on top, the unscored below, centred on 0."""
    by_round: dict[int, list[pb.Candidate]] = defaultdict(list)
    for c in cands:
        by_round[c.round_index].append(c)
    pos: dict[int, tuple[float, float]] = {}
    for rnd, group in by_round.items():
        group.sort(key=lambda c: (c.state != SCORED, -(_fitness(c) or 0.0), c.id))
        for i, c in enumerate(group):
            pos[c.id] = (rnd, (len(group) - 1) / 2 - i)
    return pos


def plot_lineage(ax: Axes, data: SearchData) -> None:
    cands = data.candidates
    ax.set_title("Family tree: edges run parent -> child; the best of each round on top")
    if not cands:
        return _nothing(ax, "no candidates yet")
    pos = _lineage_positions(cands)
    top_ids = {c.id for c in data.top}
    edges = [
        (pos[p], pos[c.id], c.id in top_ids) for c in cands for p in set(c.parent_ids) if p in pos
    ]
    faint = 0.5 if len(edges) < 100 else 0.15  # hundreds of edges: a haze, not a black mass
    for hot, colour, width, alpha in ((False, "grey", 0.6, faint), (True, "crimson", 1.0, 0.7)):
        lines = [(a, b) for a, b, h in edges if h == hot]
        ax.add_collection(LineCollection(lines, colors=colour, linewidths=width, alpha=alpha))
    size = max(10.0, 60.0 - len(cands) / 10)
    hollow = {"facecolors": "none", "edgecolors": "grey", "linewidths": 0.7}
    groups: list[tuple[str, Callable[[pb.Candidate], bool], dict[str, Any]]] = [
        ("seed", lambda c: c.state == SCORED and c.origin == SEED, SEED_STYLE | {"s": size * 3}),
        ("scored", lambda c: c.state == SCORED and c.origin != SEED, {"s": size, "color": "C0"}),
        ("failed / duplicate / filtered / pending", lambda c: c.state != SCORED, hollow),
    ]
    for label, keep, style in groups:
        xy = [pos[c.id] for c in cands if keep(c)]
        if xy:
            style = {"s": size / 2} | style | {"label": label}
            ax.scatter(*zip(*xy, strict=True), zorder=3, **style)
    marked = [i for i in top_ids if i in pos]
    if marked:
        label = f"top {len(marked)} (red edges: their parents)"
        ax.scatter(
            *zip(*(pos[i] for i in marked), strict=True), s=size * 4, label=label, **RING_STYLE
        )
    for i in marked:
        ax.annotate(
            f"#{i}", pos[i], xytext=(5, 3), textcoords="offset points", fontsize=7, color="crimson"
        )
    ax.autoscale_view()
    _round_axis(ax, [c.round_index for c in cands])
    ax.set_yticks([])
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)


def _lineage_size(data: SearchData) -> tuple[float, float]:
    """Wider with more rounds, taller with more candidates per round, within reason."""
    per_round: dict[int, int] = defaultdict(int)
    for c in data.candidates:
        per_round[c.round_index] += 1
    most = max(per_round.values(), default=1)
    return min(max(9.0, 6 + 1.2 * len(per_round)), 20), min(max(4.5, 0.12 * most), 14)


def _figure(
    path: Path,
    plot: Callable[[Axes, SearchData], None],
    data: SearchData,
    size: tuple[float, float],
) -> None:
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    try:
        plot(ax, data)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


# ---------------------------------------------------------------- HTML

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; } table.top td:nth-child(2) { text-align: left; }
pre { background: #f6f6f6; padding: 8px; overflow-x: auto; font-size: 12px; }
img { max-width: 100%; display: block; margin: 1em 0; }
dt { font-weight: bold; float: left; width: 8em; } dd { margin-left: 9em; }
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _table(header: list[str], rows: Iterable[Iterable[object]], css_class: str = "") -> str:
    """Every cell is escaped here, so no caller can forget to."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>\n" for row in rows)
    return f'<table class="{css_class}"><tr>{head}</tr>\n{body}</table>'


def _search_html(s: pb.Search) -> str:
    created = s.created_at.ToDatetime(tzinfo=UTC).isoformat() if s.created_at.seconds else "-"
    try:
        config = json.dumps(json.loads(s.config_json), indent=2, sort_keys=True)
    except ValueError:
        config = s.config_json
    fields = {
        "id": s.id,
        "task": s.task,
        "method": s.method,
        "state": pb.SearchState.Name(s.state).removeprefix("SEARCH_STATE_").lower(),
        "created": created,
        "rounds": s.num_rounds,
        "candidates": s.num_candidates,
        "best fitness": _num(_opt(s, "best_fitness"), "{:.1f}"),
    }
    if s.message:
        fields["message"] = s.message
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in fields.items())
    return (
        f"<h1>Search {s.id}: {_e(s.name)}</h1><dl>{items}</dl>"
        f"<details><summary>configuration</summary><pre>{_e(config)}</pre></details>"
    )


def _rounds_html(rounds: list[pb.RoundStats]) -> str:
    counts = ("candidates", "scored", "duplicate", "failed", "filtered", "pending")
    header = ["round", *counts, "best fitness", "best so far", "tokens (prompt + completion)"]
    rows = [
        [r.round_index, *(getattr(r, f) for f in counts)]
        + [_num(_opt(r, f), "{:.1f}") for f in ("best_fitness", "best_fitness_so_far")]
        + [f"{r.prompt_tokens:,} + {r.completion_tokens:,}"]
        for r in rounds
    ]
    return _table(header, rows) if rows else "<p>no rounds yet</p>"


def _top_html(data: SearchData) -> str:
    if not data.top:
        return "<p>no scored candidates yet</p>"
    code = {c.id: c.code for c in data.candidates}
    header = ["id", "name", "round", "params", "best val error", "test accuracy", "fitness"]
    rows: list[list[object]] = []
    for c in data.top:
        m = c.evaluation.metrics
        scores = [f"{m.best_val_error:.4f}", _num(_opt(m, "test_accuracy"), "{:.4f}")]
        fitness = _num(_fitness(c), "{:.1f}")
        parents = ", ".join(str(p) for p in c.parent_ids) or "-"
        rows.append([c.id, c.name, c.round_index, f"{m.num_params:,}", *scores, fitness, parents])
    blocks = "".join(
        f"<details><summary>{_e(f'#{c.id} {c.name}'.strip())} (round {c.round_index})</summary>"
        f"<pre>{_e(code.get(c.id) or c.code)}</pre></details>\n"
        for c in data.top
    )
    return _table([*header, "parents"], rows, "top") + f"<h3>Code</h3>{blocks}"


def write_report(
    stub: pb_grpc.LineageStub,
    search_id: int,
    out_dir: Path,
    *,
    top: int | None = None,
    timeout: float = 30.0,
) -> Path:
    """Write index.html and the four PNGs for one search into out_dir; return index.html.

    `top` defaults to the search's population size p (what the search returns), else 10.
    """
    if top is None:
        top = population_size(
            stub.GetSearch(pb.GetSearchRequest(search_id=search_id), timeout=timeout)
        )
    data = fetch(stub, search_id, top, timeout)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = []
    figures = [
        ("pareto", plot_pareto, (9.0, 5.5)),
        ("fitness", plot_fitness, (9.0, 5.5)),
        ("curve", plot_curve, (9.0, 5.5)),
        ("lineage", plot_lineage, _lineage_size(data)),
    ]
    for name, plot, size in figures:
        path = out_dir / f"{name}.png"
        _figure(path, plot, data, size)
        b64 = base64.b64encode(path.read_bytes()).decode("ascii")
        images.append(f'<img alt="{name}" src="data:image/png;base64,{b64}">')
    s = data.search
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>evo search {s.id}: {_e(s.name)}</title><style>{CSS}</style></head><body>\n"
        f"{_search_html(s)}\n<h2>Rounds</h2>{_rounds_html(data.rounds)}\n"
        f"<h2>Figures</h2>{''.join(images)}\n"
        f"<h2>The search's result: top {len(data.top)} by fitness</h2>{_top_html(data)}\n"
        "</body></html>\n"
    )
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
