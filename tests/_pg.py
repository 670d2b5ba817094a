"""Database fixtures shared by the store and manager tests: SQLite and PostgreSQL.

PostgreSQL comes from the server ``.ci/run`` starts (a throwaway cluster, run by
an unprivileged user because the server refuses root), found through
environment variables:

* ``AMPHORA_HEARTBEAT_PG_DSN`` — a superuser's URL on 127.0.0.1;
* ``AMPHORA_HEARTBEAT_PG_DATA`` and ``AMPHORA_HEARTBEAT_PG_CTL`` — the cluster's
  data folder and the ``pg_ctl`` command line (with ``runuser`` when needed), for
  the test that stops and restarts the server.

Each test gets a fresh database created from ``template0`` by pytest-postgresql's
``DatabaseJanitor`` and dropped afterwards.  Without a server the PostgreSQL tests
skip, except under ``CI=true``, where a missing server is a failure.

Test modules take the fixtures by assignment (``store = _pg.store``), so that the
fixture parameters do not shadow an import.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import attrs
import pytest

from amphora_heartbeat.store import PostgresStore, SQLiteStore, open_store

ENGINES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@attrs.frozen
class PGServer:
    """The PostgreSQL server the tests may use."""

    dsn: str
    data: str | None
    pg_ctl: tuple[str, ...]

    def ctl(self, *args: str) -> None:
        """Run ``pg_ctl`` on the cluster (for stop / start)."""
        if self.data is None or not self.pg_ctl:
            pytest.skip("AMPHORA_HEARTBEAT_PG_DATA / AMPHORA_HEARTBEAT_PG_CTL not set")
        subprocess.run(
            [*self.pg_ctl, "-D", self.data, "-w", "-t", "60", *args],
            check=True,
            stdout=subprocess.DEVNULL,
        )


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def pg_server() -> PGServer:
    """Return the PostgreSQL server from the environment, or skip (fail under CI)."""
    dsn = os.environ.get("AMPHORA_HEARTBEAT_PG_DSN")
    if not dsn:
        message = "no PostgreSQL server: AMPHORA_HEARTBEAT_PG_DSN is not set"
        if _in_ci():
            pytest.fail(message + " (CI=true: .ci/run should have started one)")
        pytest.skip(message)
    import psycopg

    try:
        psycopg.connect(dsn, connect_timeout=5).close()
    except psycopg.Error as exc:
        if _in_ci():
            pytest.fail(f"PostgreSQL at AMPHORA_HEARTBEAT_PG_DSN does not answer: {exc}")
        pytest.skip(f"PostgreSQL at AMPHORA_HEARTBEAT_PG_DSN does not answer: {exc}")
    return PGServer(
        dsn,
        os.environ.get("AMPHORA_HEARTBEAT_PG_DATA"),
        tuple(shlex.split(os.environ.get("AMPHORA_HEARTBEAT_PG_CTL", ""))),
    )


@pytest.fixture
def pg_dsn(pg_server: PGServer) -> Iterator[str]:
    """Yield the URL of a fresh, empty database, dropped after the test."""
    from psycopg.conninfo import conninfo_to_dict
    from pytest_postgresql.janitor import DatabaseJanitor

    params = conninfo_to_dict(pg_server.dsn)
    dbname = "t_" + uuid.uuid4().hex[:16]
    janitor = DatabaseJanitor(
        user=str(params.get("user", "postgres")),
        host=str(params.get("host", "127.0.0.1")),
        port=str(params.get("port", 5432)),
        password=params.get("password"),  # type: ignore[arg-type]
        dbname=dbname,
        template_dbname="template0",
        maintenance_dbname=str(params.get("dbname", "postgres")),
    )
    janitor.init()
    try:
        yield urlsplit(pg_server.dsn)._replace(path="/" + dbname).geturl()
    finally:
        janitor.drop()


@pytest.fixture(params=ENGINES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Return the URL of an empty database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'health.db'}"
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn


@pytest.fixture
def store(db_url: str) -> Iterator[SQLiteStore | PostgresStore]:
    """Yield an open store on an empty database with the schema created."""
    s = open_store(db_url)
    s.create_schema()
    try:
        yield s
    finally:
        s.close()
