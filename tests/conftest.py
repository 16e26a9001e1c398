"""Shared fixtures: every store test runs against SQLite and a live PostgreSQL."""

import importlib.util
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.lineage.rdb import RDBStorage
from tests.postgres import fresh_database, postgres_server

_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lineage.db'}"
    server = request.getfixturevalue("postgres_url")
    return fresh_database(server, f"evo_test_{next(_counter)}")


@pytest.fixture
def storage(db_url: str) -> Iterator[RDBStorage]:
    store = RDBStorage(db_url)
    yield store
    store.close()


@pytest.fixture(scope="session")
def lltokenizer():  # type: ignore[no-untyped-def]
    """llguidance's view of the embedded model's vocabulary, through llama.cpp."""
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip("needs xllamacpp (the lm extra): its llama.cpp reads the vocabulary")
    from services.proposer import model_files
    from services.proposer.backends import llama_c

    lib = llama_c.load()
    params = lib.llama_model_default_params()
    params.vocab_only = True
    model = lib.llama_model_load_from_file(str(model_files.default_gguf()).encode(), params)
    assert model
    yield llama_c.lltokenizer(lib, lib.llama_model_get_vocab(model))
    lib.llama_model_free(model)
