"""Does the evolution help? EvoPrompting against its baselines at the same sample budget.

Runs every method with several seeds through the running services (start them first:
`evo up`, or `evo up --lm-backend tgi --lm-url http://tgi:80` for a served model), then
reads the lineage store and writes, to --out:

- results.json: per search, the counts and the best-fitness curve;
- results.md: a table per method (mean over seeds) of best fitness, best test accuracy,
  the fractions of children that parse, are unique and train, tokens and wall time;
- curves.png: the paper's Figure 2b: best fitness against the number of children
  generated, bootstrapped (100 resamples of 20 at each point; controller/analysis.py),
  one line and band per method (the children of all its seeds pooled in generation order);
- pareto.png: the paper's Figure 2a: parameters against test error, each method's front
  of its top 20 children by fitness, the seeds, and the MNIST-1D reference accuracies
  (CNN 94%, GRU 91%, MLP 68%).

Best fitness and the fronts count children only, as Algorithm 1 returns them (a seed is
never a method's result). `--settings small-model` runs the searches with the choices
that serve a small model (examples/demo.yaml: seeds stay, header, top_p 0.95, stop at
any new definition) instead of the paper's.

    .venv/bin/python -m bench.search_quality --out bench/quality [--seeds 0 1 2]
        [--methods evoprompting few-shot ...] [--rounds 3 --prompts 3 --samples 6 --steps 2000]
        [--sampling constrained free] [--novelty-resamples 2]   # LM methods once per choice
    .venv/bin/python -m bench.search_quality --out bench/quality --remeasure   # tables again
    .venv/bin/python -m bench.search_quality --out bench/quality --combine part1 part2
        # one table from runs made separately (their saved results; no services needed)

With a served model: `evo up --lm-backend tgi --lm-url http://tgi-host:80` (or
`--lm-backend openai --lm-url http://vllm:8000 --lm-model NAME`), then the same command;
TGI and OpenAI-compatible servers cannot be prompt-tuned, so `evoprompting` then runs as
`evoprompting-no-tuning` (the search says so). docs/results.md has the measured results.
"""

import argparse
import io
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evo.v1 import common_pb2 as common
from evo.v1 import lineage_pb2 as pb

from controller import analysis, sampling
from controller.clients import Lineage, Proposer, Trainers, trainer_targets
from controller.config import METHODS, SAMPLING, SMALL_MODEL_STOP, SearchConfig
from controller.progress import Progress
from controller.search import Search
from services.common import addresses

REFERENCE_ACCURACY = {"CNN": 0.94, "GRU": 0.91, "MLP": 0.68}
SEED = pb.CANDIDATE_ORIGIN_SEED


@dataclass
class Outcome:
    method: str
    seed: int
    search_id: int
    wall_seconds: float
    children: int = 0
    parsed: int = 0
    unique: int = 0
    trained: int = 0
    scored: int = 0
    tokens: int = 0
    best_fitness: float | None = None
    best_test_accuracy: float | None = None
    # (children evaluated so far, best child's fitness so far).
    curve: list[tuple[int, float]] = field(default_factory=list)
    # Every child's fitness in the order generated (None: not scored): the bootstrap's input.
    children_fitness: list[float | None] = field(default_factory=list)
    # (params, test error, seed name or "", fitness) of every scored candidate.
    points: list[tuple[int, float, str, float]] = field(default_factory=list)
    # round -> [children that parse, children]: does prompt-tuning raise the valid-code rate?
    parsed_by_round: dict[int, list[int]] = field(default_factory=dict)
    # What became of the children: "scored", "duplicate", "does not parse", "INVALID", ...
    fates: dict[str, int] = field(default_factory=dict)


def config_for(
    method: str, seed: int, args: argparse.Namespace, how: str = "constrained"
) -> SearchConfig:
    config = SearchConfig(name=f"quality-{method}-{how}-seed{seed}", method=method, seed=seed)
    config.proposer.sampling = how
    config.proposer.novelty_resamples = args.novelty_resamples
    evo = config.evolution
    evo.rounds, evo.prompts_per_round, evo.samples_per_prompt = (
        args.rounds,
        args.prompts,
        args.samples,
    )
    evo.population_size = args.population
    config.training.steps = args.steps
    config.training.seed = seed
    config.training.wall_seconds = args.wall_seconds
    config.proposer.max_new_tokens = args.max_new_tokens
    config.tuning.epochs = args.tuning_epochs
    if args.settings == "small-model":
        evo.population = "seeds-stay"
        config.proposer.top_p = 0.95
        config.proposer.prompt_header = True
        config.proposer.stop = list(SMALL_MODEL_STOP)
    return config


def run_one(config: SearchConfig, lineage: Lineage, log: io.TextIOBase) -> tuple[int, float]:
    sampling.pin_grammar(config)  # stored with the search, as `evo search start` does
    made = lineage(
        "CreateSearch",
        pb.CreateSearchRequest(
            name=config.name, task=config.task, method=config.method, config_json=config.to_json()
        ),
    ).search
    trainers = Trainers(trainer_targets(config.services.trainers))
    proposer = Proposer(addresses.resolve("proposer", None)) if config.uses_language_model else None
    started = time.monotonic()
    with Progress(made.id, stream=log, live=False) as progress:  # type: ignore[arg-type]
        Search(config, made.id, lineage, trainers, proposer, progress).run()
    trainers.close()
    if proposer is not None:
        proposer.close()
    return made.id, time.monotonic() - started


def measure(lineage: Lineage, method: str, seed: int, search_id: int, wall: float) -> Outcome:
    found = lineage.candidates(pb.ListCandidatesRequest(search_id=search_id))
    out = Outcome(method, seed, search_id, wall)
    best: float | None = None
    evaluated = 0
    for c in sorted(found, key=lambda c: c.id):
        scored = c.state == pb.CANDIDATE_STATE_SCORED
        if scored:
            if c.origin != SEED:
                best = c.fitness if best is None else max(best, c.fitness)
            m = c.evaluation.metrics
            if m.HasField("test_accuracy"):
                out.points.append(
                    (
                        m.num_params,
                        1 - m.test_accuracy,
                        c.name if c.origin == SEED else "",
                        c.fitness,
                    )
                )
                if out.best_test_accuracy is None or m.test_accuracy > out.best_test_accuracy:
                    out.best_test_accuracy = m.test_accuracy
        if c.origin == SEED:
            continue
        out.children += 1
        out.tokens += c.completion_tokens
        parses = not c.reason.startswith(("the program does not parse", "generation failed"))
        out.parsed += parses
        counts = out.parsed_by_round.setdefault(c.round_index, [0, 0])
        counts[0] += parses
        counts[1] += 1
        fate = fate_of(c, parses)
        out.fates[fate] = out.fates.get(fate, 0) + 1
        out.unique += c.state != pb.CANDIDATE_STATE_DUPLICATE
        out.trained += c.evaluation.status == common.EVAL_STATUS_OK
        out.scored += scored
        out.children_fitness.append(c.fitness if scored else None)
        evaluated += 1
        if best is not None:
            out.curve.append((evaluated, best))
    out.best_fitness = best
    return out


def fate_of(c: pb.Candidate, parses: bool) -> str:
    if c.state == pb.CANDIDATE_STATE_SCORED:
        return "scored"
    if c.state == pb.CANDIDATE_STATE_DUPLICATE:
        return "duplicate"
    if c.state == pb.CANDIDATE_STATE_FILTERED:
        return "filtered (error >= alpha)"
    if not parses:
        return "does not parse"
    status = c.evaluation.status
    return common.EvalStatus.Name(status).removeprefix("EVAL_STATUS_") if status else "failed"


def _mean(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{statistics.mean(known):.3g}" if known else "-"


def table(outcomes: list[Outcome]) -> str:
    rows = [
        "| method | searches | best fitness (mean) | best test accuracy (mean) | parse | unique "
        "| train | scored | tokens per child | wall time (mean) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method in dict.fromkeys(o.method for o in outcomes):
        mine = [o for o in outcomes if o.method == method]
        children = sum(o.children for o in mine) or 1

        def frac(key: str, mine: list[Outcome] = mine, children: int = children) -> str:
            return f"{sum(getattr(o, key) for o in mine) / children:.0%}"

        rows.append(
            f"| {method} | {len(mine)} | {_mean([o.best_fitness for o in mine])} | "
            f"{_mean([o.best_test_accuracy for o in mine])} | {frac('parsed')} | "
            f"{frac('unique')} | {frac('trained')} | {frac('scored')} | "
            f"{sum(o.tokens for o in mine) / children:.0f} | "
            f"{statistics.mean(o.wall_seconds for o in mine) / 60:.1f} min |"
        )
    rounds = sorted({r for o in outcomes for r in o.parsed_by_round})
    rows += [
        "",
        "Children that parse, by round (all seeds):",
        "",
        "| method | " + " | ".join(f"round {r}" for r in rounds) + " |",
        "| --- |" + " --- |" * len(rounds),
    ]
    for method in dict.fromkeys(o.method for o in outcomes):
        cells = []
        for r in rounds:
            got = [o.parsed_by_round.get(r, [0, 0]) for o in outcomes if o.method == method]
            ok, n = sum(g[0] for g in got), sum(g[1] for g in got)
            cells.append(f"{ok / n:.0%} of {n}" if n else "-")
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    fates = sorted({f for o in outcomes for f in o.fates}, key=lambda f: (f != "scored", f))
    rows += [
        "",
        "What became of the children (all seeds):",
        "",
        "| method | " + " | ".join(fates) + " |",
        "| --- |" + " --- |" * len(fates),
    ]
    for method in dict.fromkeys(o.method for o in outcomes):
        mine = [o for o in outcomes if o.method == method]
        n = sum(o.children for o in mine) or 1
        cells = [f"{sum(o.fates.get(f, 0) for o in mine) / n:.0%}" for f in fates]
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def figures(outcomes: list[Outcome], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(o.method for o in outcomes))
    # (By label: a language-model method runs once per sampling, "evoprompting (free)".)
    colours = dict(zip(methods, plt.get_cmap("tab10").colors, strict=False))
    fig, ax = plt.subplots(figsize=(8, 5))
    for method in methods:
        runs = [o.children_fitness for o in outcomes if o.method == method]
        longest = max(len(r) for r in runs)
        curve = analysis.bootstrap_runs(runs, every=max(1, longest // 200))
        if curve:
            xs = [p.children for p in curve]
            ax.fill_between(xs, [-p.low for p in curve], [-p.high for p in curve],
                            color=colours[method], alpha=0.2, step="post")  # fmt: skip
            ax.step(xs, [-p.mean for p in curve], where="post", color=colours[method],
                    label=method)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("children generated (per search; a method's seeds pooled)")
    ax.set_ylabel("best -fitness = params x val error (lower is better)")
    ax.set_title("Best fitness against children generated (bootstrap: 100 samples of 20)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 5))
    for method in methods:
        kids = [
            analysis.Point(i, f, p, e)
            for i, (p, e, name, f) in enumerate(
                pt for o in outcomes if o.method == method for pt in o.points
            )
            if not name
        ]
        if kids:
            ax.scatter([k.num_params for k in kids], [k.error for k in kids], s=10, alpha=0.35,
                       color=colours[method])  # fmt: skip
            front = analysis.top_pareto_front(kids)
            label = f"{method}: front of the top 20"
            ax.step([k.num_params for k in front], [k.error for k in front], where="post",
                    color=colours[method], lw=2, label=label)  # fmt: skip
    seeds = {name: (p, e) for o in outcomes for p, e, name, _ in o.points if name}
    for name, (p, e) in seeds.items():
        ax.scatter([p], [e], marker="*", s=160, color="black", zorder=5)
        ax.annotate(name, (p, e), xytext=(5, 5), textcoords="offset points")
    for name, acc in REFERENCE_ACCURACY.items():
        ax.axhline(1 - acc, ls=":", color="grey")
        ax.text(0.01, 1 - acc, f" {name} reference {acc:.0%}", transform=ax.get_yaxis_transform(),
                fontsize=8, color="grey", va="bottom")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("test error")
    ax.set_title("Top-20 Pareto fronts by method; children as dots, seeds as stars")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=110)
    plt.close(fig)


def saved_outcome(saved: dict) -> Outcome:
    """An Outcome read back from results.json (JSON made its round numbers strings)."""
    rounds = {int(r): counts for r, counts in saved.pop("parsed_by_round").items()}
    return Outcome(**saved, parsed_by_round=rounds)


def combine(parts: list[Path], out: Path) -> None:
    outcomes, args = [], []
    for part in parts:
        saved = json.loads((part / "results.json").read_text())
        args.append(saved["args"])
        outcomes += [saved_outcome(o) for o in saved["outcomes"]]
    outcomes.sort(key=lambda o: (o.seed, o.method == "mutation", o.method))
    (out / "results.json").write_text(
        json.dumps({"args": args, "outcomes": [asdict(o) for o in outcomes]}, indent=1)
    )
    (out / "results.md").write_text(table(outcomes))
    figures(outcomes, out)
    print(table(outcomes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/quality"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--wall-seconds", type=float, default=120)
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--tuning-epochs", type=int, default=2)
    parser.add_argument(
        "--settings",
        choices=["paper", "small-model"],
        default="paper",
        help="the paper's population and decoding, or examples/demo.yaml's for a small model",
    )
    parser.add_argument(
        "--sampling",
        nargs="+",
        default=list(SAMPLING),
        choices=SAMPLING,
        help="the language-model methods run once per choice (mutation once in all)",
    )
    parser.add_argument("--novelty-resamples", type=int, default=2)
    parser.add_argument(
        "--remeasure",
        action="store_true",
        help="run nothing: re-read the searches of --out/results.json from the lineage store "
        "and rewrite the tables and figures",
    )
    parser.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="run nothing: join the saved results.json of these folders (runs of other seeds "
        "or methods made separately) into --out, and write its tables and figures",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.combine:
        combine(args.combine, args.out)
        return
    lineage = Lineage(addresses.resolve("lineage", None))
    if args.remeasure:
        saved = json.loads((args.out / "results.json").read_text())
        outcomes = [
            measure(lineage, o["method"], o["seed"], o["search_id"], o["wall_seconds"])
            for o in saved["outcomes"]
        ]
        saved["outcomes"] = [asdict(o) for o in outcomes]
        (args.out / "results.json").write_text(json.dumps(saved, indent=1))
        (args.out / "results.md").write_text(table(outcomes))
        figures(outcomes, args.out)
        print(table(outcomes))
        return
    outcomes = []
    with open(args.out / "searches.log", "a") as log:
        runs = [
            (method, how)
            for method in args.methods
            for how in (args.sampling if method != "mutation" else args.sampling[:1])
        ]
        for seed in args.seeds:
            for method, how in runs:
                config = config_for(method, seed, args, how)
                label = method if method == "mutation" else f"{method} ({how})"
                print(f"{label}, seed {seed} ...", flush=True)
                search_id, wall = run_one(config, lineage, log)  # type: ignore[arg-type]
                outcome = measure(lineage, label, seed, search_id, wall)
                print(
                    f"  search {search_id}: {outcome.children} children, {outcome.scored} "
                    f"scored, best fitness {outcome.best_fitness}, {wall / 60:.1f} min",
                    flush=True,
                )
                outcomes.append(outcome)
                # Written after every search, so a run cut short still leaves its results.
                (args.out / "results.json").write_text(
                    json.dumps(
                        {
                            "args": {k: str(v) for k, v in vars(args).items()},
                            "outcomes": [asdict(o) for o in outcomes],
                        },
                        indent=1,
                    )
                )
                (args.out / "results.md").write_text(table(outcomes))
                figures(outcomes, args.out)
    print(table(outcomes))


if __name__ == "__main__":
    main()
