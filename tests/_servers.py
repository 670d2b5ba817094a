"""Throwaway database servers for the tests, started from the installed binaries.

Each server lives in its own temporary folder, listens on 127.0.0.1 only, on a free
port, runs as an unprivileged user when the tests run as root (both servers refuse
root by default), and is stopped and deleted when the session ends.  A server starts
the first time a test asks for it, so a run of unrelated tests starts none.

Where a server's binaries are missing its tests skip, with one reason naming the
Debian package that brings them; under ``CI=true`` that is a failure instead.  A
server that does not start is a failure, with the tail of its log.

The fixtures at the end (``database_servers`` and, for each engine, the server and a
fresh database per test) are registered for every module by conftest.py.

Hand-written rather than pytest-postgresql / pytest-mysql: the first runs ``initdb`` and
``pg_ctl`` as the current user, with no way to switch to another, and root cannot run
PostgreSQL.  The second takes one ``user`` as both the server's system user and the
client's login (root's login runs the server as root) and re-runs the installer at
every start.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, NoReturn, TypeVar
from urllib.parse import unquote, urlsplit

import pytest

START_TIMEOUT = 60.0  # seconds; a shared, busy machine can be slow to start a server
PORT_ATTEMPTS = 3  # a free port may be taken by someone else before the server binds it
LOG_TAIL = 30  # lines of a server's log shown when it fails

# Where the binaries may be besides PATH: Debian keeps PostgreSQL's per version
# (newest first), and a non-root PATH often lacks the sbin folders mariadbd is in.
POSTGRES_DIRS = "/usr/lib/postgresql/*/bin"
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
USERADD = ("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin")


class ServerError(Exception):
    """A server that would not initialise, start or stop; the message ends with its log."""


def in_ci() -> bool:
    """Return whether the tests run in CI (``CI=true``), where a missing server fails."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(message: str) -> NoReturn:
    """Skip the test because a server is missing, or fail it under CI."""
    if in_ci():
        pytest.fail(f"{message} (CI=true: a missing server is a failure)", pytrace=False)
    pytest.skip(message)


def search_dirs() -> list[str]:
    """Return the folders searched for server binaries: Debian's PostgreSQL, PATH, sbin."""
    postgres = sorted(glob.glob(POSTGRES_DIRS), key=_version_key, reverse=True)
    path = os.environ.get("PATH", os.defpath).split(os.pathsep)
    return [*postgres, *path, *SBIN_DIRS]


def _version_key(folder: str) -> tuple[int, ...]:
    version = Path(folder).parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def which(names: Sequence[str], dirs: Sequence[str]) -> Path | None:
    """Return the first of ``names`` found as an executable in ``dirs``, or None."""
    for name in names:
        found = shutil.which(name, path=os.pathsep.join(dirs))
        if found:
            return Path(found)
    return None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = LOG_TAIL) -> str:
    """Return the last lines of a log file, or a note that there is none."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


class RunAs:
    """Run a server's commands as an unprivileged system user when the tests run as root."""

    def __init__(self, user: str) -> None:
        """Create the system user ``user`` if needed (as root); otherwise keep the current user."""
        self.ids: tuple[int, int] | None = None
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(user)
            except KeyError:
                subprocess.run([*USERADD, user], check=True, capture_output=True)
                entry = pwd.getpwnam(user)
            self.ids = (entry.pw_uid, entry.pw_gid)

    def own(self, path: Path) -> None:
        """Give ``path`` to the user the server runs as."""
        if self.ids is not None:
            os.chown(path, *self.ids)

    def options(self) -> dict[str, Any]:
        """Return the ``subprocess`` keyword arguments that switch to the user."""
        if self.ids is None:
            return {}
        uid, gid = self.ids
        return {"user": uid, "group": gid, "extra_groups": []}


class Server:
    """A server in its own temporary folder; subclasses say how to set it up and run it."""

    name: ClassVar[str]
    package: ClassVar[str]  # the Debian package that brings the binaries
    system_user: ClassVar[str]

    def __init__(self, binaries: dict[str, Path]) -> None:
        """Prepare a folder and a free port; ``start()`` initialises and starts the server."""
        self.binaries = binaries
        self.run_as = RunAs(self.system_user)
        self.folder = Path(tempfile.mkdtemp(prefix=f"amphora-{self.name.lower()}-"))
        self.run_as.own(self.folder)
        self.port = free_port()
        self.log = self.folder / "server.log"

    @classmethod
    def find(cls, dirs: Sequence[str]) -> dict[str, Path] | None:
        """Return the binaries the server needs, by role, or None if one is missing."""
        raise NotImplementedError

    @classmethod
    def missing(cls) -> str:
        """Return why the server's tests skip when its binaries are missing."""
        return f"no {cls.name} server binaries: install the Debian package {cls.package}"

    def run(self, argv: Sequence[str | Path]) -> None:
        """Run one set-up or control command as the server's user; raise ServerError if it fails."""
        result = subprocess.run(
            [str(arg) for arg in argv],
            cwd=self.folder,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=2 * START_TIMEOUT,
            **self.run_as.options(),
        )
        if result.returncode != 0:
            raise ServerError(
                f"{Path(argv[0]).name} failed (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n-- {self.log}:\n{tail(self.log)}"
            )

    def start(self) -> None:
        """Start the server and wait until it accepts connections on 127.0.0.1."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server and wait until it has exited."""
        raise NotImplementedError

    def boot(self) -> None:
        """Initialise the data folder and start the server, on a new port if its port was taken."""
        self.initialise()
        for attempt in range(PORT_ATTEMPTS):
            logged = self.log.stat().st_size if self.log.exists() else 0
            try:
                self.start()
                return
            except ServerError:
                with self.log.open(errors="replace") as log:
                    log.seek(logged)
                    taken = "Address already in use" in log.read()
                if not taken or attempt == PORT_ATTEMPTS - 1:
                    raise
            self.port = free_port()

    def initialise(self) -> None:
        """Create the server's data folder."""
        raise NotImplementedError

    def close(self) -> None:
        """Delete the server's folder (subclasses stop the server at once first)."""
        shutil.rmtree(self.folder, ignore_errors=True)


class PostgresServer(Server):
    """A throwaway PostgreSQL cluster; its superuser ``postgres`` logs in without a password."""

    name = "PostgreSQL"
    package = "postgresql"
    system_user = "postgres"
    INITDB_OPTIONS = ("-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync")

    @classmethod
    def find(cls, dirs: Sequence[str]) -> dict[str, Path] | None:
        """Return ``initdb`` and ``pg_ctl`` from one folder (pg_ctl runs its own ``postgres``)."""
        for folder in dirs:
            found = {name: Path(folder, name) for name in ("initdb", "pg_ctl")}
            if all(os.access(path, os.X_OK) for path in found.values()):
                return found
        return None

    @property
    def dsn(self) -> str:
        """Return the superuser's URL to the ``postgres`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        """Return the cluster's data folder."""
        return self.folder / "data"

    def initialise(self) -> None:
        """Run ``initdb``: trust authentication, UTF-8, no locale, no fsync."""
        self.run([self.binaries["initdb"], "-D", self.data, *self.INITDB_OPTIONS])

    def start(self) -> None:
        """Write the settings (port included) and start the cluster with ``pg_ctl``."""
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.folder}'",
            "max_connections": "200",  # several managers, each with a pool
            # The data is thrown away: durability would only cost time.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        # Appended, so that a retry on another port overrides the port (the last one wins).
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self.ctl("start")

    def ctl(self, *args: str) -> None:
        """Run ``pg_ctl`` on the cluster (``"start"``, ``"stop", "-m", "fast"``), waiting for it."""
        wait = ["-w", "-t", str(int(START_TIMEOUT))]
        self.run([self.binaries["pg_ctl"], "-D", self.data, "-l", self.log, *wait, *args])

    def stop(self) -> None:
        """Stop the cluster, closing its connections (``pg_ctl stop -m fast``)."""
        self.ctl("stop", "-m", "fast")

    def close(self) -> None:
        """Stop the cluster at once (``-m immediate``, the data is thrown away) and delete it."""
        with contextlib.suppress(ServerError):  # already stopped, or never started
            self.ctl("stop", "-m", "immediate")
        super().close()


class MariaDBServer(Server):
    """A throwaway MariaDB server; ``root`` logs in from 127.0.0.1 without a password."""

    name = "MariaDB"
    package = "mariadb-server"
    system_user = "mysql"
    INSTALL_OPTIONS = (
        "--no-defaults",
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
    )
    # The data is thrown away: durability would only cost time.  Small memory, no
    # binary log, no performance schema: the tests are small, the machine shared.
    OPTIONS = (
        "--skip-name-resolve",
        "--skip-log-bin",
        "--innodb-buffer-pool-size=32M",
        "--innodb-log-file-size=16M",
        "--innodb-flush-log-at-trx-commit=0",
        "--innodb-doublewrite=0",
        "--performance-schema=0",
        "--character-set-server=utf8mb4",
        "--max-connections=200",
    )

    def __init__(self, binaries: dict[str, Path]) -> None:
        """Prepare the folder, and a socket on which the server says it is ready."""
        super().__init__(binaries)
        self.process: subprocess.Popen[bytes] | None = None
        # mariadbd speaks systemd's readiness protocol: READY=1 on $NOTIFY_SOCKET.
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.folder / "notify"))
        self.run_as.own(self.folder / "notify")

    @classmethod
    def find(cls, dirs: Sequence[str]) -> dict[str, Path] | None:
        """Return ``mariadbd`` and ``mariadb-install-db`` (or their ``mysql`` names)."""
        server = which(["mariadbd", "mysqld"], dirs)
        install = which(["mariadb-install-db", "mysql_install_db"], dirs)
        if server is None or install is None:
            return None
        return {"mariadbd": server, "install-db": install}

    @property
    def url(self) -> str:
        """Return the admin's URL (root, no database), in the form octavia.conf uses."""
        return self.url_for("")

    def url_for(self, database: str) -> str:
        """Return root's URL to ``database``, ``mysql+pymysql://root@127.0.0.1:PORT/DB?...``."""
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/{database}?charset=utf8mb4"

    @property
    def data(self) -> Path:
        """Return the server's data folder."""
        return self.folder / "data"

    def initialise(self) -> None:
        """Run ``mariadb-install-db``: root without a password, no test database."""
        install = self.binaries["install-db"]
        self.run([install, *self.INSTALL_OPTIONS, f"--datadir={self.data}", *self.OPTIONS])

    def start(self) -> None:
        """Start ``mariadbd`` and wait until it says it is ready, or answers on its port."""
        argv = [
            str(self.binaries["mariadbd"]),
            "--no-defaults",
            f"--datadir={self.data}",
            f"--socket={self.folder / 'mysqld.sock'}",
            f"--pid-file={self.folder / 'mysqld.pid'}",
            f"--log-error={self.log}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            "--skip-networking=0",
            *self.OPTIONS,
        ]
        self._drain()  # what an earlier run said (READY=1 included) is not about this one
        env = {**os.environ, "NOTIFY_SOCKET": str(self.folder / "notify")}
        self.process = subprocess.Popen(
            argv,
            cwd=self.folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **self.run_as.options(),
        )
        self._wait_ready(self.process)

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.notify], [], [], 0.1)
            if readable and b"READY=1" in self.notify.recv(4096):
                return
            if process.poll() is not None:
                raise ServerError(
                    f"mariadbd exited (status {process.returncode}):\n{tail(self.log)}"
                )
            if not readable and self._answers():  # a build without systemd support
                return
        self.stop()
        raise ServerError(f"mariadbd not ready after {START_TIMEOUT:.0f} s:\n{tail(self.log)}")

    def _drain(self) -> None:
        while select.select([self.notify], [], [], 0)[0]:
            self.notify.recv(4096)

    def _answers(self) -> bool:
        import pymysql

        try:
            self.connect().close()
        except pymysql.MySQLError:
            return False
        return True

    def connect(self, database: str = "") -> Any:
        """Return an autocommit PyMySQL connection as root to ``database`` (none by default)."""
        return mysql_connect(self.url_for(database))

    def stop(self) -> None:
        """Stop the server (SIGTERM: a clean shutdown) and wait until it has exited."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def ctl(self, action: str) -> None:
        """Run ``"stop"`` or ``"start"`` on the server, waiting for it, as PostgreSQL's ``ctl``."""
        if action not in {"stop", "start"}:
            raise ValueError(f"ctl takes 'stop' or 'start', not {action!r}")
        getattr(self, action)()

    def close(self) -> None:
        """Kill the server (SIGKILL, the data is thrown away), and delete its folder."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None
        self.notify.close()
        super().close()


def mysql_connect(url: str, connect_timeout: float = 10.0) -> Any:
    """Return an autocommit PyMySQL connection to a ``mysql+pymysql://`` URL."""
    import pymysql

    parts = urlsplit(url)
    return pymysql.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=parts.path.lstrip("/") or None,
        charset="utf8mb4",
        autocommit=True,
        connect_timeout=connect_timeout,
    )


S = TypeVar("S", bound=Server)


class Servers:
    """The session's servers: each started at its first use, all closed by ``close()``."""

    def __init__(self, dirs: Sequence[str] | None = None) -> None:
        """Look for binaries in ``dirs`` (by default :func:`search_dirs`)."""
        self.dirs = dirs
        self.started: dict[type[Server], Server] = {}
        self.failed: dict[type[Server], tuple[bool, str]] = {}  # (missing?, message)

    def postgres(self) -> PostgresServer:
        """Return the PostgreSQL server, starting it if needed; skip or fail if there is none."""
        return self.get(PostgresServer)

    def mariadb(self) -> MariaDBServer:
        """Return the MariaDB server, starting it if needed; skip or fail if there is none."""
        return self.get(MariaDBServer)

    def get(self, kind: type[S]) -> S:
        """Return the server of this kind, starting it at the first call.

        A failure is remembered, so that the tests after the first one fail (or skip)
        at once with the same message rather than try again.
        """
        if kind not in self.started and kind not in self.failed:
            self._start(kind)
        if kind in self.failed:
            missing, message = self.failed[kind]
            if missing:
                unavailable(message)
            pytest.fail(message, pytrace=False)
        server = self.started[kind]
        if not isinstance(server, kind):
            raise TypeError(server)
        return server

    def _start(self, kind: type[Server]) -> None:
        binaries = kind.find(search_dirs() if self.dirs is None else self.dirs)
        if binaries is None:
            self.failed[kind] = (True, kind.missing())
            return
        server = None
        try:
            server = kind(binaries)
            server.boot()
        except (ServerError, OSError, subprocess.SubprocessError) as exc:
            if server is not None:
                server.close()
            self.failed[kind] = (False, f"{kind.name} did not start: {exc}")
            return
        self.started[kind] = server

    def close(self) -> None:
        """Stop and delete every server started; safe to call more than once."""
        while self.started:
            _, server = self.started.popitem()
            server.close()


# The marker a test needing each server carries.
MARKERS: dict[str, type[Server]] = {"postgres": PostgresServer, "mysql": MariaDBServer}


def require_installed(item: pytest.Item, dirs: Sequence[str] | None = None) -> None:
    """Skip (fail under CI) a test marked for a server whose binaries are missing.

    Called before the test's fixtures are set up (conftest.py's pytest_runtest_setup):
    pytest reports a skip raised inside a fixture at each test's own line, whereas
    these all come from one line, so ``pytest -ra`` folds them into one summary line
    per server, with a count.
    """
    for marker, kind in MARKERS.items():
        if item.get_closest_marker(marker) is None:
            continue
        if kind.find(search_dirs() if dirs is None else dirs) is None:
            unavailable(kind.missing())


@pytest.fixture(scope="session")
def database_servers() -> Iterator[Servers]:
    """Yield the session's servers, each started at first use; stop them all at the end.

    Registered by conftest.py only: a second copy would start a second set of servers.
    """
    servers = Servers()
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture(scope="session")
def pg_server(database_servers: Servers) -> PostgresServer:
    """Return the session's PostgreSQL server, started now if needed (skip if not installed)."""
    return database_servers.postgres()


@pytest.fixture
def pg_dsn(pg_server: PostgresServer) -> Iterator[str]:
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


@pytest.fixture(scope="session")
def mariadb_server(database_servers: Servers) -> MariaDBServer:
    """Return the session's MariaDB server, started now if needed (skip if not installed)."""
    return database_servers.mariadb()


@pytest.fixture
def mysql_url(mariadb_server: MariaDBServer) -> Iterator[str]:
    """Yield root's URL to a fresh, empty database, dropped (connections and all) after the test.

    The URL is in the form operators copy from octavia.conf:
    ``mysql+pymysql://root@127.0.0.1:PORT/DBNAME?charset=utf8mb4``.
    """
    dbname = "t_" + uuid.uuid4().hex[:16]
    with mariadb_server.connect() as admin, admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {dbname} CHARACTER SET utf8mb4")
    try:
        yield mariadb_server.url_for(dbname)
    finally:
        # The server may have been stopped and started by the test: reconnect.  A
        # connection left in a transaction would make DROP DATABASE wait: kill it.
        admin = mysql_connect(mariadb_server.url, connect_timeout=30)
        with admin, admin.cursor() as cursor:
            cursor.execute("SELECT id FROM information_schema.processlist WHERE db = %s", (dbname,))
            for (thread,) in cursor.fetchall():
                cursor.execute(f"KILL {int(thread)}")
            cursor.execute(f"DROP DATABASE IF EXISTS {dbname}")
