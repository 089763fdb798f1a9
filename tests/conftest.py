"""Shared fixtures: one registry per backend (memory, SQLite file, a real PostgreSQL).

The PostgreSQL server is a throwaway cluster started once per test session. With
``FORSETI_REQUIRE_POSTGRES=1`` (set by ``make test`` and CI) a PostgreSQL test that cannot run is a
failure, never a silent skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from registries import close_opened

import forseti as fs
from forseti.testing.postgres import TemporaryPostgres, postgres_binaries

REQUIRE_PG = os.environ.get("FORSETI_REQUIRE_POSTGRES") == "1"
# a worker process or subprocess that crashes (a segfault in an extension) prints its threads'
# tracebacks into the test's output instead of dying silently
os.environ.setdefault("PYTHONFAULTHANDLER", "1")
BACKENDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
PERSISTENT = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

_skipped_pg: list[str] = []


@pytest.fixture(autouse=True)
def _close_memory_registries() -> Iterator[None]:
    """Close the registries ``registries.memory()`` opened during the test."""
    yield
    close_opened()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[TemporaryPostgres]:
    """A private PostgreSQL cluster on loopback for the whole session."""
    if postgres_binaries() is None:
        msg = "PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql"
        if REQUIRE_PG:
            pytest.fail(msg)
        pytest.skip(msg)
    with TemporaryPostgres() as server:
        yield server


def _url_factory(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[[], str]:
    """A function giving the URL of this test's store (the same store on every call)."""
    if backend == "memory":
        return lambda: "memory://"
    if backend == "sqlite":
        path = tmp_path / "forseti.db"
        return lambda: f"sqlite:///{path}"
    server: TemporaryPostgres = request.getfixturevalue("pg_server")
    url = server.new_schema_url(f"t_{uuid.uuid4().hex[:12]}")
    return lambda: url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend name: ``memory``, ``sqlite`` or ``postgres``."""
    return str(request.param)


@pytest.fixture
def store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A URL of an empty store of the parametrized backend."""
    return _url_factory(backend, tmp_path, request)()


@pytest.fixture
def reg(store_url: str, tmp_path: Path) -> Iterator[fs.EntityRegistry]:
    """An open registry on an empty store of each backend."""
    registry = fs.open(store_url, blob_dir=tmp_path / "blobs")
    yield registry
    registry.close()


@pytest.fixture(params=PERSISTENT)
def persistent_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty store that outlives a registry (SQLite file, PostgreSQL schema)."""
    return _url_factory(str(request.param), tmp_path, request)()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "postgres" in report.keywords:
        _skipped_pg.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if REQUIRE_PG and _skipped_pg:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(
                f"FAILED: {len(_skipped_pg)} PostgreSQL test(s) were skipped while "
                f"FORSETI_REQUIRE_POSTGRES=1, e.g. {_skipped_pg[0]}",
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
