"""Database fixtures shared by the store and manager tests: SQLite and PostgreSQL.

PostgreSQL comes from the server ``.ci/run`` starts (a throwaway cluster, run by
an unprivileged user because the server refuses root), found through
environment variables:

* ``AMPHORA_HEARTBEAT_PG_DSN`` — a superuser's URL on 127.0.0.1;
* ``AMPHORA_HEARTBEAT_PG_DATA`` and ``AMPHORA_HEARTBEAT_PG_CTL`` — the cluster's
  data folder and the ``pg_ctl`` command line (with ``runuser`` when needed), for
  the test that stops and restarts the server.

Each test gets a fresh database created from ``template0`` and dropped
afterwards.  (Hand-written rather than pytest-postgresql: that plugin starts its
own server as the current user, which CI's root cannot, and its database janitor
would be a test dependency for these few lines.)  Without a server the PostgreSQL tests
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
    """Yield the URL of a fresh, empty database, dropped (connections and all) after the test."""
    import psycopg

    dbname = "t_" + uuid.uuid4().hex[:16]
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {dbname} TEMPLATE template0")
    try:
        yield urlsplit(pg_server.dsn)._replace(path="/" + dbname).geturl()
    finally:
        # The server may have been stopped and started by the test: reconnect.
        with psycopg.connect(pg_server.dsn, autocommit=True, connect_timeout=30) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")


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
