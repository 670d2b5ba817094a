"""Database URLs, in the forms an operator copies from ``[database] connection`` in octavia.conf.

Octavia reads that option with SQLAlchemy, so its URLs are SQLAlchemy's:
``DIALECT[+DRIVER]://USER:PASSWORD@HOST:PORT/DATABASE?OPTIONS``.  This module
accepts the forms Octavia's deployment tools write, verbatim, and refuses
anything else with one line naming the supported forms; it parses with the
standard library (:mod:`urllib.parse`) so that no SQLAlchemy is needed.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

import attrs

__all__ = ["MYSQL_OPTIONS", "SUPPORTED", "DatabaseURL", "parse_url"]

#: The supported forms, as the error for any other URL names them.
SUPPORTED = (
    "sqlite:///RELATIVE/PATH, sqlite:////ABSOLUTE/PATH, sqlite:///:memory:,"
    " postgresql[+psycopg2|+psycopg]://USER:PASSWORD@HOST:PORT/DATABASE,"
    " mysql[+pymysql|+mysqldb]://USER:PASSWORD@HOST:PORT/DATABASE[?charset=utf8mb4]"
)
#: Query options a MySQL URL may carry (as SQLAlchemy passes them to the driver).
#: Any other is refused rather than ignored: a dropped ``ssl_ca`` would
#: silently mean an unencrypted connection.
MYSQL_OPTIONS = (
    "charset",
    "connect_timeout",
    "read_default_file",
    "read_default_group",
    "ssl_ca",
    "ssl_cert",
    "ssl_key",
    "unix_socket",
)

# Scheme (dialect and driver, as SQLAlchemy names them) to (engine, driver).
_SCHEMES: dict[str, tuple[str, str | None]] = {
    "sqlite": ("sqlite", None),
    "sqlite+pysqlite": ("sqlite", None),
    "postgresql": ("postgresql", None),
    "postgres": ("postgresql", None),
    "postgresql+psycopg2": ("postgresql", None),
    "postgresql+psycopg": ("postgresql", None),
    "mysql": ("mysql", None),
    "mysql+pymysql": ("mysql", "pymysql"),
    "mysql+mysqldb": ("mysql", "mysqldb"),
    "mariadb": ("mysql", None),
    "mariadb+pymysql": ("mysql", "pymysql"),
    "mariadb+mysqldb": ("mysql", "mysqldb"),
}


def _refuse(url: str, why: str) -> ValueError:
    # The URL may hold a password: name its scheme only.
    scheme = url.partition("://")[0] if "://" in url else url
    return ValueError(f"{why} ({scheme!r}); expected one of: {SUPPORTED}")


@attrs.frozen(repr=False)
class DatabaseURL:
    """A parsed database URL: which engine, and what to connect to."""

    #: ``"sqlite"``, ``"postgresql"`` or ``"mysql"`` (MariaDB included).
    engine: str
    #: The driver the URL names (``"pymysql"``, ``"mysqldb"``), or None.
    driver: str | None = None
    username: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    #: The database name; for SQLite the file's path (``":memory:"`` in memory).
    database: str = ""
    #: The query options, in order, decoded.
    options: tuple[tuple[str, str], ...] = ()
    #: For PostgreSQL, the URL libpq takes (the driver part removed).
    libpq: str = ""

    def __repr__(self) -> str:
        """Return a representation without the password."""
        return f"DatabaseURL({self.engine}, host={self.host!r}, database={self.database!r})"


def parse_url(url: str) -> DatabaseURL:
    """Parse a database URL; raise :class:`ValueError` naming the supported forms if it is none.

    A plain file path is refused (write ``sqlite:///PATH``), and so is
    ``sqlite:///`` with no path (in memory is ``sqlite:///:memory:``).
    Percent-encoded user names, passwords and database names are decoded.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        hint = f"; for a SQLite file write sqlite:///{url}" if url else ""
        raise ValueError(f"not a database URL{hint}; expected one of: {SUPPORTED}")
    if scheme.lower() not in _SCHEMES:
        raise _refuse(url, "unsupported database URL scheme")
    engine, driver = _SCHEMES[scheme.lower()]
    if engine == "sqlite":
        return _sqlite(url, rest)
    if engine == "postgresql":
        return DatabaseURL("postgresql", libpq="postgresql://" + rest)
    return _mysql(url, driver)


def _sqlite(url: str, rest: str) -> DatabaseURL:
    # sqlite:///x.db is the relative path x.db; sqlite:////x.db the absolute /x.db.
    if not rest.startswith("/") or rest == "/" or "?" in rest:
        raise _refuse(url, "a SQLite URL is sqlite:///PATH, without host or options")
    return DatabaseURL("sqlite", database=unquote(rest[1:]))


def _mysql(url: str, driver: str | None) -> DatabaseURL:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise _refuse(url, "the port is not a number from 0 to 65535") from None
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise _refuse(url, "a MySQL URL names one database")
    options = tuple(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted({key for key, _ in options} - set(MYSQL_OPTIONS))
    if unknown:
        raise ValueError(
            f"unsupported MySQL URL option {', '.join(unknown)};"
            f" supported: {', '.join(MYSQL_OPTIONS)}"
        )
    return DatabaseURL(
        "mysql",
        driver,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        host=parts.hostname,
        port=port,
        database=database,
        options=options,
    )
