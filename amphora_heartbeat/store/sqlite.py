"""The embedded engine: one SQLite file through the standard library's :mod:`sqlite3`."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sqlite3
from collections.abc import Collection, Iterator
from typing import Any

from .base import SQLStore, StoreDataError, StoreError, epoch, utc

__all__ = ["SQLiteStore"]

# What the data (not the database) causes: a constraint, a value the column or the
# driver cannot hold (sqlite3 raises OverflowError for an integer beyond 64 bits
# and UnicodeEncodeError for text that is not valid Unicode).
_DATA_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, OverflowError, UnicodeEncodeError)


def _error(exc: Exception) -> StoreError:
    """Return the store error for ``exc``: a data error, or the database failing."""
    if isinstance(exc, _DATA_ERRORS):
        return StoreDataError(f"SQLite refused the data: {exc}")
    return StoreError(f"SQLite: {exc}")


class SQLiteStore(SQLStore):
    """A store in one SQLite file (standard library :mod:`sqlite3`, WAL mode).

    The embedded default, for one manager.  ``timeout`` (seconds) is how long a
    write waits for another process's lock.  Time columns hold naive UTC text in
    the form SQLAlchemy writes (``YYYY-MM-DD HH:MM:SS.ffffff``), which sorts as
    time does.

    :meth:`ping` writes (and undoes the write), so a read-only database fails
    at start-up; every transaction first checks that the file is still the one
    opened, so writes into a deleted (or replaced) file fail instead of going
    nowhere.
    """

    _IDS = "IN (SELECT value FROM json_each(?))"

    def __init__(self, path: str, *, timeout: float = 5.0) -> None:
        """Open (or create) the database file at ``path``; ``":memory:"`` works too."""
        self.path = path
        try:
            # Autocommit mode; transactions are explicit (BEGIN IMMEDIATE), so a
            # write never has to upgrade a read lock and fail.
            # One thread at a time uses a store, but not always the one that opened it.
            self._conn = sqlite3.connect(
                path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite database {path}: {exc}") from exc
        self._file = self._identity()

    def _identity(self) -> tuple[int, int] | None:
        """Return the (device, inode) of the database file; None in memory or if missing."""
        if self.path == ":memory:" or self.path.startswith("file:"):
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _check_file(self) -> None:
        if self._file is not None and self._identity() != self._file:
            raise StoreError(
                f"SQLite database file {self.path} was deleted or replaced while open;"
                " restart the manager"
            )

    def _id_set(self, ids: Collection[str]) -> Any:
        return json.dumps(list(ids))

    def _time(self, epoch: float) -> Any:
        return utc(epoch).strftime("%Y-%m-%d %H:%M:%S.%f")

    def _from_time(self, value: Any) -> float:
        return epoch(datetime.datetime.fromisoformat(value))

    def _table_exists(self, cur: Any, table: str) -> bool:
        cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
        return cur.fetchone() is not None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        self._check_file()
        try:
            cur = self._conn.cursor()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite: {exc}") from exc
        try:
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
        except (sqlite3.Error, *_DATA_ERRORS) as exc:
            with contextlib.suppress(sqlite3.Error):
                if self._conn.in_transaction:
                    cur.execute("ROLLBACK")
            raise _error(exc) from exc
        finally:
            cur.close()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Any]:
        try:
            cur = self._conn.cursor()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite: {exc}") from exc
        try:
            yield cur
        except (sqlite3.Error, *_DATA_ERRORS) as exc:
            raise _error(exc) from exc
        finally:
            cur.close()

    def ping(self) -> None:
        """Raise :class:`StoreError` unless the database file can be written.

        A table is created and the creation undone: a read-only file (or
        folder) fails here rather than at every tick.
        """
        self._check_file()
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("CREATE TABLE amphora_heartbeat_ping (x INTEGER)")
            finally:
                conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite database {self.path} cannot be written: {exc}") from exc

    def close(self) -> None:
        """Close the database file."""
        self._conn.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"
