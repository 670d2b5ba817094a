"""Tests of tests/_servers.py: the throwaway database servers and their per-test databases."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import _servers
import pytest

# The databases earlier tests in this module were given, by engine.
SEEN: dict[str, list[str]] = {"postgresql": [], "mysql": []}


@pytest.mark.postgres
@pytest.mark.parametrize("turn", [1, 2])
def test_pg_dsn_is_empty_and_gone_after_its_test(
    pg_server: _servers.PostgresServer, pg_dsn: str, turn: int
) -> None:
    """Each test's PostgreSQL database starts empty, takes a table, and is dropped after it."""
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE probe (turn integer)")
        conn.execute("INSERT INTO probe VALUES (%s)", (turn,))
        dbname = conn.execute("SELECT current_database()").fetchone()
    with psycopg.connect(pg_server.dsn) as admin:
        names = {row[0] for row in admin.execute("SELECT datname FROM pg_database")}
    assert dbname is not None
    assert dbname[0] in names
    assert names.isdisjoint(SEEN["postgresql"])
    SEEN["postgresql"].append(dbname[0])


@pytest.mark.mysql
@pytest.mark.parametrize("turn", [1, 2])
def test_mysql_url_is_empty_and_gone_after_its_test(
    mariadb_server: _servers.MariaDBServer, mysql_url: str, turn: int
) -> None:
    """Each test's MariaDB database starts empty, takes a table, and is dropped after it."""
    assert mysql_url.startswith("mysql+pymysql://root@127.0.0.1:")
    assert mysql_url.endswith("?charset=utf8mb4")
    with _servers.mysql_connect(mysql_url) as conn, conn.cursor() as cursor:
        cursor.execute("SHOW TABLES")
        assert cursor.fetchall() == ()
        cursor.execute("CREATE TABLE probe (turn integer)")
        cursor.execute("INSERT INTO probe VALUES (%s)", (turn,))
        cursor.execute("SELECT DATABASE(), @@character_set_database")
        dbname, charset = cursor.fetchone()
    with mariadb_server.connect() as admin, admin.cursor() as cursor:
        cursor.execute("SHOW DATABASES")
        names = {row[0] for row in cursor.fetchall()}
    assert charset == "utf8mb4"
    assert dbname in names
    assert names.isdisjoint(SEEN["mysql"])
    SEEN["mysql"].append(dbname)


@pytest.mark.postgres
def test_pg_server_listens_on_loopback_only(pg_server: _servers.PostgresServer) -> None:
    """The PostgreSQL server is bound to 127.0.0.1 and nothing else."""
    import psycopg

    with psycopg.connect(pg_server.dsn) as admin:
        assert admin.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)


@pytest.mark.mysql
def test_mariadb_server_listens_on_loopback_only(mariadb_server: _servers.MariaDBServer) -> None:
    """The MariaDB server is bound to 127.0.0.1 and nothing else."""
    with mariadb_server.connect() as admin, admin.cursor() as cursor:
        cursor.execute("SELECT @@bind_address, @@skip_networking")
        assert cursor.fetchone() == ("127.0.0.1", 0)


@pytest.mark.postgres
def test_pg_server_stops_and_starts_again_with_its_data(
    pg_server: _servers.PostgresServer, pg_dsn: str
) -> None:
    """ctl("stop") refuses connections until ctl("start"); the data is still there after."""
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE probe AS SELECT 42 AS answer")
    pg_server.ctl("stop", "-m", "fast")
    try:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg_dsn, connect_timeout=2)
    finally:
        pg_server.ctl("start")
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT answer FROM probe").fetchone() == (42,)


@pytest.mark.mysql
def test_mariadb_server_stops_and_starts_again_with_its_data(
    mariadb_server: _servers.MariaDBServer, mysql_url: str
) -> None:
    """ctl("stop") refuses connections until ctl("start"); the data is still there after."""
    import pymysql

    with _servers.mysql_connect(mysql_url) as conn, conn.cursor() as cursor:
        cursor.execute("CREATE TABLE probe AS SELECT 42 AS answer")
    mariadb_server.ctl("stop")
    try:
        with pytest.raises(pymysql.err.OperationalError):
            _servers.mysql_connect(mysql_url, connect_timeout=2)
    finally:
        mariadb_server.ctl("start")
    with _servers.mysql_connect(mysql_url) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT answer FROM probe")
        assert cursor.fetchone() == (42,)


KINDS = [
    pytest.param(_servers.PostgresServer, id="postgresql"),
    pytest.param(_servers.MariaDBServer, id="mariadb"),
]


@pytest.mark.parametrize("kind", KINDS)
def test_missing_binaries_skip_naming_the_debian_package(
    kind: type[_servers.Server], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the binaries a server's tests skip, saying which Debian package to install."""
    monkeypatch.delenv("CI", raising=False)
    servers = _servers.Servers([str(tmp_path)])
    with pytest.raises(pytest.skip.Exception, match=f"install the Debian package {kind.package}$"):
        servers.get(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_missing_binaries_fail_under_ci(
    kind: type[_servers.Server], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CI=true a server whose binaries are missing fails its tests instead."""
    monkeypatch.setenv("CI", "true")
    servers = _servers.Servers([str(tmp_path)])
    with pytest.raises(pytest.fail.Exception, match=f"package {kind.package} .*CI=true"):
        servers.get(kind)


@pytest.mark.parametrize("marker", ["postgres", "mysql"])
def test_a_marked_test_skips_before_its_fixtures_without_binaries(
    marker: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test marked postgres or mysql skips before its fixtures when the binaries are missing."""
    monkeypatch.delenv("CI", raising=False)
    _servers.require_installed(request.node, [str(tmp_path)])  # not marked: nothing to check
    request.node.add_marker(marker)
    kind = _servers.MARKERS[marker]
    with pytest.raises(pytest.skip.Exception, match=f"install the Debian package {kind.package}$"):
        _servers.require_installed(request.node, [str(tmp_path)])


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """Yield a temporary folder every user may read, for binaries the servers' users run."""
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o755)
        yield Path(folder)


def test_a_server_that_does_not_start_fails_with_its_output(shared_dir: Path) -> None:
    """A failing initdb fails the test with its output, once: the next test fails at once."""
    for name in ("initdb", "pg_ctl"):
        script = shared_dir / name
        script.write_text("#!/bin/sh\necho 'initdb: out of disk' >&2\nexit 1\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    servers = _servers.Servers([str(shared_dir)])
    with pytest.raises(pytest.fail.Exception, match=r"did not start(.|\n)*out of disk"):
        servers.postgres()
    script.unlink()  # a retry would now fail differently
    with pytest.raises(pytest.fail.Exception, match="out of disk"):
        servers.postgres()
    assert servers.started == {}
