"""The `evo` command line.

Client commands talk gRPC to a service at `--address`, else `EVO_<SERVICE>_ADDRESS`,
else the local default port. `evo serve NAME` runs a service in this process;
service dependencies are imported only there, so each image needs only its extra.
"""

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
import grpc
from evo.v1 import lineage_pb2 as pb
from evo.v1 import lineage_pb2_grpc as pb_grpc
from rich.console import Console

from controller import addresses, search_cli
from controller import lineage_views as views
from services.common.metrics import metrics_option
from services.proposer.cli import propose, serve_lm
from services.trainer.cli import sandbox, serve_trainer

console = Console()
RPC_TIMEOUT_SECONDS = 30.0


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@contextmanager
def lineage_stub(address: str | None) -> Iterator[pb_grpc.LineageStub]:
    """A Lineage client; gRPC errors become one-line messages that name the fix."""
    target = addresses.resolve("lineage", address)
    channel = grpc.insecure_channel(target)
    try:
        yield pb_grpc.LineageStub(channel)
    except grpc.RpcError as e:
        code = e.code()  # type: ignore[attr-defined]
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            fail(
                f"cannot reach the lineage store at {target} ({code.name}): start it with "
                f"`evo serve lineage`, or pass --address / set {addresses.env_var('lineage')}"
            )
        fail(f"{code.name}: {e.details()}")  # type: ignore[attr-defined]
    finally:
        channel.close()


def address_option(service: str) -> Callable[[Any], Any]:
    return click.option(
        "--address",
        default=None,
        metavar="HOST:PORT",
        help=f"The {service} service. Default: ${addresses.env_var(service)}, "
        f"else localhost:{addresses.DEFAULT_PORTS[service]}.",
    )


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def call(method: Callable[..., Any], request: Any) -> Any:
    return method(request, timeout=RPC_TIMEOUT_SECONDS)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="evo-nas")
def main() -> None:
    """EvoPrompting: neural architecture search with a language model as the mutation operator."""


# ---------------------------------------------------------------- serve


@main.group()
def serve() -> None:
    """Run one of the services in this process."""


@serve.command("lineage")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=addresses.DEFAULT_PORTS["lineage"], show_default=True)
@click.option(
    "--db",
    "db_url",
    default=None,
    help="Database URL. Default: $EVO_DB_URL, else a SQLite file in $EVO_HOME (~/.evo).",
)
@click.option(
    "--migrate/--no-migrate",
    default=True,
    show_default=True,
    help="Upgrade the schema on start. With --no-migrate an old schema is refused.",
)
@metrics_option
@click.option("--log-level", default=None, help="debug, info, warning (default) or error.")
def serve_lineage(
    host: str,
    port: int,
    db_url: str | None,
    migrate: bool,
    metrics_port: int,
    log_level: str | None,
) -> None:
    """The lineage store: every search, candidate, parent link and score."""
    from services.common import logs
    from services.common import server as grpc_server
    from services.lineage import db, server
    from services.lineage.rdb import RDBStorage
    from services.lineage.storage import StoreError

    logs.setup(log_level)
    url = db_url or db.default_url()
    try:
        storage = RDBStorage(url, upgrade=migrate)
    except StoreError as e:
        fail(str(e))
    except Exception as e:  # a bad URL or an unreachable database server
        fail(f"cannot open the database {url}: {e.__class__.__name__}: {e}".splitlines()[0])
    try:
        service = server.start(storage, host, port)
    except OSError as e:
        fail(str(e))
    click.echo(
        f"lineage store serving on {host}:{service.port} (database {_redact(url)})", err=True
    )
    try:
        grpc_server.serve_forever(service, metrics_port=metrics_port)
    except OSError as e:
        fail(str(e))
    storage.close()


def _redact(url: str) -> str:
    """Hide a password in a database URL."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


# ---------------------------------------------------------------- db


@main.group("db")
def db_group() -> None:
    """Manage the lineage database schema."""


db_url_option = click.option(
    "--db",
    "db_url",
    default=None,
    help="Database URL. Default: $EVO_DB_URL, else ~/.evo/lineage.db.",
)


@db_group.command("upgrade")
@db_url_option
@click.option("--revision", default="head", show_default=True)
def db_upgrade(db_url: str | None, revision: str) -> None:
    """Create or migrate the schema (run by an init job in a cluster)."""
    from services.lineage import db

    url = db_url or db.default_url()
    db.upgrade(url, revision)
    engine = db.make_engine(url)
    click.echo(f"{_redact(url)} is at revision {db.current_revision(engine)}")
    engine.dispose()


@db_group.command("current")
@db_url_option
def db_current(db_url: str | None) -> None:
    """Print the schema revision of the database and the one this version needs."""
    from services.lineage import db

    url = db_url or db.default_url()
    engine = db.make_engine(url)
    click.echo(f"database: {db.current_revision(engine) or 'empty'}; needed: {db.head_revision()}")
    engine.dispose()


# ---------------------------------------------------------------- search


@main.group()
def search() -> None:
    """Start, watch, stop, resume and inspect searches."""


@search.command("list")
@address_option("lineage")
@json_option
@click.option("--limit", default=100, show_default=True, help="At most this many searches.")
def search_list(address: str | None, as_json: bool, limit: int) -> None:
    """All searches, oldest first."""
    found: list[pb.Search] = []
    token = ""
    with lineage_stub(address) as stub:
        while len(found) < limit:
            page = call(
                stub.ListSearches,
                pb.ListSearchesRequest(page_size=min(limit - len(found), 1000), page_token=token),
            )
            found.extend(page.searches)
            token = page.next_page_token
            if not token:
                break
    if as_json:
        click.echo(views.dump_json(found))
    elif not found:
        click.echo("no searches yet")
    else:
        console.print(views.searches_table(found))


@search.command("show")
@click.argument("search_id", type=int)
@address_option("lineage")
@json_option
@click.option("--top", default=10, show_default=True, help="How many of the best to list.")
def search_show(search_id: int, address: str | None, as_json: bool, top: int) -> None:
    """A search's configuration, per-round statistics and best candidates."""
    with lineage_stub(address) as stub:
        found = call(stub.GetSearch, pb.GetSearchRequest(search_id=search_id))
        stats = call(stub.GetRoundStats, pb.GetRoundStatsRequest(search_id=search_id)).rounds
        best = call(stub.GetPopulation, pb.GetPopulationRequest(search_id=search_id, k=top))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "search": views.to_dict(found),
                    "rounds": [views.to_dict(r) for r in stats],
                    "top": [views.to_dict(c) for c in best.candidates],
                },
                indent=2,
            )
        )
        return
    console.print(views.search_detail(found))
    if stats:
        console.print(views.round_stats_table(stats))
    if best.candidates:
        console.print(views.candidates_table(f"Top {top} by fitness", best.candidates))


# ---------------------------------------------------------------- lineage


@main.group()
def lineage() -> None:
    """Walk the family tree of candidates."""


@lineage.command("show")
@click.argument("candidate_id", type=int)
@address_option("lineage")
@json_option
def lineage_show(candidate_id: int, address: str | None, as_json: bool) -> None:
    """One candidate: its code, parents, proposer settings and evaluation."""
    with lineage_stub(address) as stub:
        found = call(stub.GetCandidate, pb.GetCandidateRequest(candidate_id=candidate_id))
    if as_json:
        click.echo(views.dump_json(found))
    else:
        views.candidate_detail(console, found)


def _lineage_walk(
    kind: str, candidate_id: int, max_depth: int, address: str | None, as_json: bool
) -> None:
    with lineage_stub(address) as stub:
        method = stub.GetAncestors if kind == "ancestors" else stub.GetDescendants
        entries = call(
            method, pb.GetLineageRequest(candidate_id=candidate_id, max_depth=max_depth)
        ).entries
    if as_json:
        click.echo(views.dump_json(list(entries)))
    elif not entries:
        click.echo(f"candidate {candidate_id} has no {kind}")
    else:
        console.print(
            views.candidates_table(
                f"{kind.capitalize()} of candidate {candidate_id}",
                [e.candidate for e in entries],
                [e.depth for e in entries],
            )
        )


max_depth_option = click.option(
    "--max-depth", default=0, show_default=True, help="Generations to follow; 0 follows all."
)


@lineage.command("ancestors")
@click.argument("candidate_id", type=int)
@max_depth_option
@address_option("lineage")
@json_option
def lineage_ancestors(
    candidate_id: int, max_depth: int, address: str | None, as_json: bool
) -> None:
    """Every ancestor of a candidate through all its parents, nearest first."""
    _lineage_walk("ancestors", candidate_id, max_depth, address, as_json)


@lineage.command("descendants")
@click.argument("candidate_id", type=int)
@max_depth_option
@address_option("lineage")
@json_option
def lineage_descendants(
    candidate_id: int, max_depth: int, address: str | None, as_json: bool
) -> None:
    """Every descendant of a candidate, nearest first."""
    _lineage_walk("descendants", candidate_id, max_depth, address, as_json)


@lineage.command("tree")
@click.argument("search_id", type=int)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "dot", "json"]),
    default="text",
    show_default=True,
    help="dot renders with Graphviz: evo lineage tree 1 --format dot | dot -Tsvg > tree.svg",
)
@address_option("lineage")
def lineage_tree(search_id: int, fmt: str, address: str | None) -> None:
    """The whole family tree of a search."""
    candidates: list[pb.Candidate] = []
    token = ""
    with lineage_stub(address) as stub:
        found = call(stub.GetSearch, pb.GetSearchRequest(search_id=search_id))
        while True:
            page = call(
                stub.ListCandidates,
                pb.ListCandidatesRequest(search_id=search_id, page_size=1000, page_token=token),
            )
            candidates.extend(page.candidates)
            token = page.next_page_token
            if not token:
                break
    if fmt == "json":
        click.echo(views.tree_json(found, candidates))
    elif fmt == "dot":
        click.echo(views.tree_dot(search_id, candidates))
    elif candidates:
        click.echo(views.tree_text(candidates))
    else:
        click.echo(f"search {search_id} has no candidates yet")


# ---------------------------------------------------------------- pareto


@main.command()
@click.argument("search_id", type=int)
@click.option(
    "--metric",
    type=click.Choice(["val", "test"]),
    default="val",
    show_default=True,
    help="val: lowest validation error in training; test: 1 - test accuracy.",
)
@address_option("lineage")
@json_option
def pareto(search_id: int, metric: str, address: str | None, as_json: bool) -> None:
    """The candidates no other beats on both size and error."""
    error_metric = pb.ERROR_METRIC_TEST if metric == "test" else pb.ERROR_METRIC_VAL
    with lineage_stub(address) as stub:
        points = call(
            stub.GetParetoFront,
            pb.GetParetoFrontRequest(search_id=search_id, error_metric=error_metric),
        ).points
    if as_json:
        click.echo(views.dump_json(list(points)))
    elif not points:
        click.echo(f"search {search_id} has no scored candidates yet")
    else:
        console.print(views.pareto_table(points))


@main.command()
@click.argument("search_id", type=int)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write index.html and its PNGs into (created if missing).",
)
@click.option(
    "--top", default=None, type=int, help="How many of the best to show [default: the search's p]."
)
@address_option("lineage")
def report(search_id: int, out_dir: Path, top: int | None, address: str | None) -> None:
    """Write an HTML report of a search (index.html plus the PNGs), readable offline."""
    from controller.report import write_report  # matplotlib is needed only here

    with lineage_stub(address) as stub:
        index = write_report(stub, search_id, out_dir, top=top, timeout=RPC_TIMEOUT_SECONDS)
    click.echo(str(index))


# ---------------------------------------------------------------- other services' commands

serve.add_command(serve_trainer, "trainer")
serve.add_command(serve_lm, "lm")
main.add_command(sandbox)
main.add_command(propose)
for command in (search_cli.search_start, search_cli.search_resume, search_cli.search_status):
    search.add_command(command)
search.add_command(search_cli.search_stop)
main.add_command(search_cli.up)
main.add_command(search_cli.down)


if __name__ == "__main__":
    main()
