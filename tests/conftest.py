"""Real parts for tests: databases (SQLite, PostgreSQL, MariaDB) and a running service.

PostgreSQL and MariaDB are the machine's servers (127.0.0.1, see the README). Each test run
(each of its processes, under pytest-xdist) works in a database of its own, made at the
start and dropped at the end, so runs do not disturb each other. Under CI=true a backend
that cannot be reached fails the test; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from sqlalchemy import MetaData, create_engine, inspect, text
from sqlalchemy.exc import OperationalError

from aljex_sync.store.database import normalize_url

from .support import RunningService, make_settings

PG_SERVER = os.environ.get(
    "ALJEX_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MY_SERVER = os.environ.get("ALJEX_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test")
RUN_ID = uuid.uuid4().hex[:8]
BACKENDS = ["sqlite", "postgresql", "mariadb"]


def _unreachable(name: str, error: Exception) -> None:
    reason = f"{name} is not reachable: {str(error).splitlines()[0]}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: backend tests must run)")
    pytest.skip(reason)


class ServerDatabases:
    """Creates one scratch database per server per test run, and drops it at the end."""

    def __init__(self) -> None:
        self.made: dict[str, str] = {}
        self.errors: dict[str, Exception] = {}

    NAME: ClassVar[str] = f"aljex_test_{RUN_ID}"
    STATEMENTS: ClassVar[dict[tuple[str, str], str]] = {
        ("postgresql", "create"): f'CREATE DATABASE "{NAME}"',
        ("postgresql", "drop"): f'DROP DATABASE IF EXISTS "{NAME}" WITH (FORCE)',
        ("mariadb", "create"): f"CREATE DATABASE `{NAME}` CHARACTER SET utf8mb4",
        ("mariadb", "drop"): f"DROP DATABASE IF EXISTS `{NAME}`",
    }

    def url(self, backend: str) -> str:
        if backend in self.made:
            return self.made[backend]
        if backend in self.errors:
            _unreachable(backend, self.errors[backend])
        try:
            self._admin(backend, "create")
        except OperationalError as e:
            self.errors[backend] = e
            _unreachable(backend, e)
        url = normalize_url(_server(backend)).set(database=self.NAME)
        self.made[backend] = url.render_as_string(hide_password=False)
        return self.made[backend]

    def drop_all(self) -> None:
        for backend in self.made:
            self._admin(backend, "drop")

    def _admin(self, backend: str, what: str) -> None:
        admin = create_engine(normalize_url(_server(backend)), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(self.STATEMENTS[backend, what]))
        finally:
            admin.dispose()


def _server(backend: str) -> str:
    return PG_SERVER if backend == "postgresql" else MY_SERVER


@pytest.fixture(scope="session")
def server_databases() -> Iterator[ServerDatabases]:
    databases = ServerDatabases()
    yield databases
    databases.drop_all()


def _empty(url: str) -> None:
    engine = create_engine(normalize_url(url))
    with engine.begin() as conn:  # the typed views first: they depend on the tables
        cascade = " CASCADE" if conn.dialect.name == "postgresql" else ""
        for view in inspect(conn).get_view_names():
            quoted = conn.dialect.identifier_preparer.quote(view)
            conn.execute(text(f"DROP VIEW IF EXISTS {quoted}{cascade}"))
    meta = MetaData()
    meta.reflect(engine)
    meta.drop_all(engine)
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, server_databases: ServerDatabases
) -> str:
    """A database URL with no tables in it, on each backend."""
    backend = request.param
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'aljex.db'}"
    url = server_databases.url(backend)
    _empty(url)
    return url


@pytest.fixture(params=["postgresql", "mariadb"])
def server_url(request: pytest.FixtureRequest, server_databases: ServerDatabases) -> str:
    """A database on each server backend, emptied: for what SQLite cannot have (a lost
    connection, a deadlock)."""
    url = server_databases.url(request.param)
    _empty(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'aljex.db'}"


@pytest.fixture
def service(database_url: str, tmp_path: Path) -> Iterator[RunningService]:
    """The service running on each backend, with default settings."""
    with RunningService(make_settings(database_url, tmp_path)) as running:
        yield running
