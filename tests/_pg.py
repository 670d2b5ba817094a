"""Database fixtures shared by the store and manager tests: SQLite and PostgreSQL.

PostgreSQL is a throwaway server the session starts at the first test that needs
it (see tests/_servers.py): from the Debian package ``postgresql``, on 127.0.0.1,
run by an unprivileged user when the tests run as root.  Each test gets a fresh
database created from ``template0`` and dropped afterwards (``pg_dsn``).  Without
the package the PostgreSQL tests skip, except under ``CI=true``, where a missing
server is a failure.

Test modules take the fixtures by assignment (``store = _pg.store``), so that the
fixture parameters do not shadow an import.  The server is one per session, whichever
module asks for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import _servers
import pytest

from amphora_heartbeat.store import PostgresStore, SQLiteStore, open_store

PGServer = _servers.PostgresServer

SQLITE = "sqlite"
POSTGRESQL = pytest.param("postgresql", marks=pytest.mark.postgres)
MYSQL = pytest.param("mysql", marks=pytest.mark.mysql)
# The engines every store and manager test runs on.
ENGINES = [SQLITE, POSTGRESQL, MYSQL]


# The server fixtures live with the servers; conftest.py registers them for every
# module, and the older modules take them from here by assignment.
pg_server = _servers.pg_server
pg_dsn = _servers.pg_dsn


@pytest.fixture(params=ENGINES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Return the URL of an empty database: a SQLite file, or a fresh server database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'health.db'}"
    fixture = {"postgresql": "pg_dsn", "mysql": "mysql_url"}[request.param]
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[SQLiteStore | PostgresStore]:
    """Yield an open store on an empty database with the schema created."""
    s = open_store(db_url)
    s.create_schema()
    try:
        yield s
    finally:
        s.close()
