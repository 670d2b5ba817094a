"""Writing a batch: read views, judge, write in one transaction; isolate what the database refuses.

A write that fails because of its *data* (:class:`~amphora_heartbeat.store.StoreDataError`:
a value a column cannot hold, a constraint) would fail again however often it
is retried, and every heartbeat behind it would wait for ever.  So the batch is
split in halves and each half written again (bisection), down to the single
heartbeat the database refuses: that one is dropped, counted
(``poison_heartbeats``) and logged once, and everything else is committed.  A
database that is away (any other :class:`~amphora_heartbeat.store.StoreError`)
stops the write: what is not committed yet goes back to the backlog, to be
retried with backoff.

Before the database, the store boundary: a heartbeat whose amphora id no id
column can hold (:func:`~amphora_heartbeat.store.storable_id`) is dropped and
counted (``unstorable_id``).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Sequence

import attrs

from ..store import Store, StoreConflict, StoreDataError, StoreError, TickWrite, storable_id
from .judge import Entry, ViewCache, judge

__all__ = ["BatchWriter", "Written"]

log = logging.getLogger("amphora_heartbeat.manager")

# How often a write that met another manager's change is judged again before
# the tick gives up (and retries later, as after any store error).
_CONFLICT_RETRIES = 3
# Amphorae whose refused heartbeats were logged; forgotten all at once when full.
_LOGGED_MAX = 10_000


@attrs.define
class Written:
    """What writing one batch did."""

    #: The heartbeats committed (poisoned and unstorable ones excluded).
    committed: list[Entry] = attrs.Factory(list)
    #: Rows written.
    rows: int = 0
    #: The writes committed (one per transaction).
    writes: list[TickWrite] = attrs.Factory(list)
    #: Counts by outcome (the judge's, ``poison_heartbeats``, ``unstorable_id``).
    counts: collections.Counter[str] = attrs.Factory(collections.Counter)
    #: The store error that stopped the write (the database is away), or None.
    failed: StoreError | None = None
    #: The heartbeats not written because of :attr:`failed`, oldest first.
    remaining: list[Entry] = attrs.Factory(list)


class BatchWriter:
    """Write batches to a store, isolating heartbeats whose data the database refuses."""

    def __init__(
        self,
        store: Store,
        views: ViewCache,
        *,
        heartbeat_interval: float,
        check_source: bool,
        clock: Callable[[], float],
    ) -> None:
        """Judge with ``views`` and the rules' options, write to ``store``."""
        self.store = store
        self.views = views
        self.heartbeat_interval = heartbeat_interval
        self.check_source = check_source
        self.clock = clock
        self._logged: set[str] = set()

    def write(self, batch: Sequence[Entry]) -> Written:
        """Write ``batch``, halving around data errors; stop at the first other store error."""
        out = Written()
        good = [e for e in batch if storable_id(e[0].amphora_id)]
        if len(good) < len(batch):
            out.counts["unstorable_id"] += len(batch) - len(good)
        segments: collections.deque[list[Entry]] = collections.deque([good] if good else [])
        while segments:
            segment = segments.popleft()
            try:
                rows, counts, write = self._attempt(segment)
            except StoreDataError as exc:
                if len(segment) > 1:
                    half = len(segment) // 2
                    segments.extendleft((segment[half:], segment[:half]))
                else:
                    self._poisoned(segment[0], exc, out)
                continue
            except StoreError as exc:
                out.failed = exc
                out.remaining = [e for s in (segment, *segments) for e in s]
                break
            out.committed.extend(segment)
            out.writes.append(write)
            out.rows += rows
            out.counts.update(counts)
        return out

    def _attempt(self, segment: Sequence[Entry]) -> tuple[int, collections.Counter[str], TickWrite]:
        """Read, judge and write ``segment`` in one transaction; judge again after a conflict."""
        for attempt in range(_CONFLICT_RETRIES + 1):
            stored = self.store.read_views({e[0].amphora_id for e in segment})
            judged = judge(
                segment,
                stored,
                self.views,
                heartbeat_interval=self.heartbeat_interval,
                clock=self.clock,
                check_source=self.check_source,
            )
            try:
                rows = self.store.write_tick(judged.write) if len(judged.write) else 0
            except StoreConflict:
                if attempt == _CONFLICT_RETRIES:
                    raise
                continue
            return rows, collections.Counter(judged.counts), judged.write
        raise AssertionError("unreachable")  # pragma: no cover

    def _poisoned(self, entry: Entry, exc: StoreDataError, out: Written) -> None:
        out.counts["poison_heartbeats"] += 1
        amphora_id = entry[0].amphora_id
        # Logged once per amphora (a sender repeating it is counted, not logged).
        if amphora_id in self._logged:
            return
        if len(self._logged) >= _LOGGED_MAX:
            self._logged.clear()
        self._logged.add(amphora_id)
        log.warning(
            "the database refused the heartbeat of amphora %r (seq %d); dropped it"
            " (and any more like it, counted as poison_heartbeats): %s",
            amphora_id,
            entry[0].seq,
            exc,
        )
