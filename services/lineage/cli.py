"""The lineage store's commands: `evo serve lineage` and `evo db upgrade|current`.

Service dependencies (SQLAlchemy, Alembic) are imported inside the commands, so the `evo`
command starts without them in images that do not run the store.
"""

import sys
from typing import NoReturn

import click

from services.common import addresses
from services.common.metrics import metrics_option


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@click.command("lineage")
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


@click.group("db")
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
