"""The hooks an engine supplies to the shared statements, and time conversions.

:class:`EngineHooks` is the root of :class:`~amphora_heartbeat.store.base.SQLStore`:
placeholders, the id-set parameter, row locking, time values, transactions.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Collection, Iterator
from typing import Any, ClassVar

from .schema import ddl

__all__ = ["EngineHooks", "epoch", "utc"]


def utc(epoch: float) -> datetime.datetime:
    """Return a naive UTC datetime for ``epoch`` seconds, as Octavia stores time."""
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).replace(tzinfo=None)


def epoch(value: datetime.datetime) -> float:
    """Return seconds since the epoch for a naive UTC datetime."""
    return value.replace(tzinfo=datetime.timezone.utc).timestamp()


class EngineHooks:
    """What differs per engine; every statement of the store goes through these."""

    #: The "in this set of ids" test of the engine; one placeholder, see :meth:`_id_set`.
    _IDS: ClassVar[str]
    #: The engine's clause that locks claimed rows, skipping rows locked by others.
    _LOCK: ClassVar[str] = ""

    # --- engine hooks ------------------------------------------------------------------
    def _sql(self, statement: str) -> str:
        return statement

    def _id_set(self, ids: Collection[str]) -> Any:
        raise NotImplementedError

    def _time(self, epoch: float) -> Any:
        return utc(epoch)

    def _from_time(self, value: Any) -> float:
        return epoch(value)

    def _table_exists(self, cur: Any, table: str) -> bool:
        raise NotImplementedError

    def _ddl(self, table: str) -> tuple[str, ...]:
        return ddl(table)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        raise NotImplementedError
        yield

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Any]:
        raise NotImplementedError
        yield
