"""`evo search start|resume|status|stop` and `evo up|down`: driving searches."""

import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import click
from evo.v1 import lineage_pb2 as pb
from rich.console import Console

from controller import lineage_views as views
from controller import sampling, stack
from controller.clients import CallFailed, Lineage, Proposer, Trainers, trainer_targets
from controller.config import ConfigError, SearchConfig, load
from controller.progress import Progress
from controller.search import RESUMABLE, Search
from services.common import addresses

console = Console()
STACK_HINT = "is the stack up? Start it with `evo up` (or point services: in the config at it)"


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _lineage(config: SearchConfig) -> Lineage:
    return Lineage(addresses.resolve("lineage", config.services.lineage or None))


def run_search(config: SearchConfig, lineage: Lineage, search_id: int) -> list[pb.Candidate]:
    """Run a search in this process until it finishes or is stopped.

    The first Ctrl-C (or SIGTERM) asks it to stop after the evaluations in flight;
    a second one exits at once, and `evo search resume` picks up from the store.
    """
    trainers = Trainers(trainer_targets(config.services.trainers))
    proposer = None
    if config.uses_language_model:
        proposer = Proposer(addresses.resolve("proposer", config.services.proposer or None))
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            click.echo("\nstopping now; `evo search resume` continues", err=True)
            raise SystemExit(130)
        stop.set()
        click.echo(
            f"\n{signal.Signals(signum).name}: finishing the evaluations in flight "
            "(again to quit at once)",
            err=True,
        )

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Progress(search_id) as progress:
            search = Search(config, search_id, lineage, trainers, proposer, progress, stop)
            try:
                return search.run()
            except CallFailed as e:
                message = f"{e}: {STACK_HINT}"
            except RuntimeError as e:
                message = str(e)
        lineage(
            "UpdateSearchState",
            pb.UpdateSearchStateRequest(
                search_id=search_id, state=pb.SEARCH_STATE_FAILED, message=message[:2000]
            ),
        )
        _fail(
            f"search {search_id} failed: {message}\nresume it with `evo search resume {search_id}`"
        )
        return []
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        trainers.close()
        if proposer is not None:
            proposer.close()


def show_result(lineage: Lineage, search_id: int, top: list[pb.Candidate]) -> None:
    if not top:
        click.echo("no candidate was scored")
        return
    console.print(views.candidates_table(f"Search {search_id}: the top {len(top)}", top))
    for c in top[:3]:
        entries = lineage(
            "GetAncestors", pb.GetLineageRequest(candidate_id=c.id, max_depth=0)
        ).entries
        chain = ", ".join(
            f"{e.candidate.id} ({e.candidate.name or 'round ' + str(e.candidate.round_index)})"
            for e in entries
        )
        click.echo(f"candidate {c.id} descends from: {chain or 'nothing (a seed)'}")
    click.echo(
        f"more: evo search show {search_id} | evo lineage tree {search_id} | "
        f"evo lineage show {top[0].id} | evo report {search_id} --out report/"
    )


report_option = click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write the HTML report (as `evo report`) into this folder at the end.",
)


def finish(lineage: Lineage, search_id: int, top: list[pb.Candidate], report: Path | None) -> None:
    show_result(lineage, search_id, top)
    if report is not None:
        from controller.report import write_report  # matplotlib is needed only here

        written = write_report(lineage.stub, search_id, report)
        click.echo(f"report: {written}")


def same_search(lineage: Lineage, config: SearchConfig) -> pb.Search | None:
    """The newest stored search of this name and exactly this config, if any."""
    wanted, newest, token = config.to_json(), None, ""
    while True:
        page = lineage("ListSearches", pb.ListSearchesRequest(page_size=1000, page_token=token))
        for found in page.searches:
            same = found.name == config.name and found.config_json == wanted
            if same and (newest is None or found.id > newest.id):
                newest = found
        token = page.next_page_token
        if not token:
            return newest


@click.command("start")
@click.argument("config_path", metavar="CONFIG", type=click.Path(path_type=Path))
@click.option("--name", default=None, help="The search's name [default: the config's].")
@click.option(
    "--resume-same",
    is_flag=True,
    help="If a search of this name and config was started before, resume it (or, finished, "
    "just show it) instead of starting another: a retried Kubernetes Job.",
)
@report_option
def search_start(
    config_path: Path, name: str | None, resume_same: bool, report_dir: Path | None
) -> None:
    """Start a search from a YAML config and run it here, showing progress."""
    try:
        config = load(config_path)
    except ConfigError as e:
        _fail(str(e))
        return
    if name:
        config.name = name
    lineage = _lineage(config)
    if resume_same:
        try:
            earlier = same_search(lineage, config)
        except CallFailed as e:
            _fail(f"{e}: {STACK_HINT}")
            return
        if earlier is not None and earlier.state == pb.SEARCH_STATE_FINISHED:
            click.echo(
                f"search {earlier.id} ({earlier.name}) already finished; nothing started: "
                f"evo search show {earlier.id}",
                err=True,
            )
            return
        if earlier is not None and earlier.state in RESUMABLE:
            click.echo(f"resuming search {earlier.id} ({earlier.name})", err=True)
            finish(lineage, earlier.id, run_search(config, lineage, earlier.id), report_dir)
            return
    try:
        sampling.pin_grammar(config)  # stored with the search: a resume samples the same
    except CallFailed as e:
        _fail(f"{e}: {STACK_HINT}")
        return
    except RuntimeError as e:
        _fail(str(e))
        return
    try:
        made = lineage(
            "CreateSearch",
            pb.CreateSearchRequest(
                name=config.name,
                task=config.task,
                method=config.method,
                config_json=config.to_json(),
            ),
        ).search
    except CallFailed as e:
        _fail(f"{e}: {STACK_HINT}")
        return
    click.echo(
        f"search {made.id} ({made.name}): {config.method} on {config.task}; "
        f"if interrupted, `evo search resume {made.id}` continues it",
        err=True,
    )
    top = run_search(config, lineage, made.id)
    finish(lineage, made.id, top, report_dir)


@click.command("resume")
@click.argument("search_id", type=int)
@report_option
def search_resume(search_id: int, report_dir: Path | None) -> None:
    """Continue a stopped, failed or killed search; finished evaluations are not redone."""
    lineage = Lineage(addresses.resolve("lineage", None))
    try:
        found = lineage("GetSearch", pb.GetSearchRequest(search_id=search_id))
    except CallFailed as e:
        _fail(f"{e}: {STACK_HINT}")
        return
    if found.state not in RESUMABLE:
        state = views.short_state(found.state, pb.SearchState)
        _fail(f"search {search_id} is {state}: nothing to resume")
    try:
        config = SearchConfig.from_json(found.config_json)
    except ConfigError as e:
        _fail(f"search {search_id}'s stored config is not valid for this version: {e}")
        return
    click.echo(f"resuming search {search_id} ({found.name})", err=True)
    top = run_search(config, lineage, search_id)
    finish(lineage, search_id, top, report_dir)


@click.command("status")
@click.argument("search_id", type=int)
def search_status(search_id: int) -> None:
    """Where a search is: its state, its rounds and its best candidate so far."""
    lineage = Lineage(addresses.resolve("lineage", None))
    try:
        found = lineage("GetSearch", pb.GetSearchRequest(search_id=search_id))
        stats = lineage("GetRoundStats", pb.GetRoundStatsRequest(search_id=search_id)).rounds
    except CallFailed as e:
        _fail(str(e))
        return
    console.print(views.search_detail(found))
    if stats:
        console.print(views.round_stats_table(stats))


@click.command("stop")
@click.argument("search_id", type=int)
def search_stop(search_id: int) -> None:
    """Ask a running search to stop after the evaluations in flight."""
    lineage = Lineage(addresses.resolve("lineage", None))
    try:
        found = lineage("GetSearch", pb.GetSearchRequest(search_id=search_id))
        if found.state not in (pb.SEARCH_STATE_RUNNING, pb.SEARCH_STATE_CREATED):
            state = views.short_state(found.state, pb.SearchState)
            _fail(f"search {search_id} is {state}, not running")
        lineage(
            "UpdateSearchState",
            pb.UpdateSearchStateRequest(
                search_id=search_id, state=pb.SEARCH_STATE_STOPPING, message="stop requested"
            ),
        )
    except CallFailed as e:
        _fail(str(e))
    click.echo(
        f"search {search_id} will stop after its evaluations in flight; "
        f"`evo search resume {search_id}` continues it"
    )


@click.command("up")
@click.option(
    "--backend",
    "trainer_backend",
    default="bwrap",
    show_default=True,
    help="The trainer's sandbox: bwrap, docker or process.",
)
@click.option("--slots", default=1, show_default=True, help="Evaluations the trainer runs at once.")
@click.option(
    "--lm-backend", default="llamacpp", show_default=True, help="llamacpp, hf, tgi or openai."
)
@click.option("--lm-model", default=None, help="The proposer's model [default: SmolLM2-135M].")
@click.option("--lm-url", default=None, help="tgi/openai: the model server, e.g. http://tgi:80.")
@click.option("--without-lm", is_flag=True, help="No proposal service (for `mutation` searches).")
@click.option(
    "--time-limit",
    default=0.0,
    help="The trainer's longest evaluation in seconds [default: its own, 900]; CLRS children "
    "at full size need about 1,500 on 2 CPU cores.",
)
def up(
    trainer_backend: str,
    slots: int,
    lm_backend: str,
    lm_model: str | None,
    lm_url: str | None,
    without_lm: bool,
    time_limit: float,
) -> None:
    """Start the lineage store, trainer and proposal service as local processes."""
    try:
        stack.up(
            trainer_backend,
            slots,
            lm_backend,
            lm_model,
            not without_lm,
            click.echo,
            lm_url,
            time_limit,
        )
    except stack.StackError as e:
        _fail(str(e))
    click.echo("the stack is up; `evo down` stops it")


@click.command("down")
def down() -> None:
    """Stop what `evo up` started."""
    if not stack.down(say=click.echo):
        click.echo("nothing to stop")
