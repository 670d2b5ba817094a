"""The health manager: heartbeats in, batched database writes and failovers out.

:class:`HealthManager` drives getter → :func:`~amphora_heartbeat.rules.derive` →
:func:`~amphora_heartbeat.stats.fold` → :class:`~amphora_heartbeat.store.Store` in
ticks: each tick reads the views of every amphora heard since the last one in
one statement and writes everything decided in one transaction.  Every
``health_check_interval`` it asks the store for stale amphorae and applies the
failover policy of :func:`amphora_heartbeat.tracker.decide` (start-up grace,
pause after a store error, storm guard) to them.

Two deliberate departures from Octavia's health manager:

* A heartbeat is judged by when it was **received**: ``last_update`` is its
  receive time and ``derive`` is asked with ``now`` set to it, so a heartbeat is
  never dropped as "processed too late" for having waited behind a slow
  database.  A slow database delays writes; it never fails a live amphora over.
* A heartbeat from an amphora that belongs to no live load balancer writes
  nothing, ``listener_statistics`` included (Octavia stores statistics for any
  listener id a key holder names).

When the manager falls behind, a tick takes everything received meanwhile
(coalescing); the outcome equals applying the heartbeats one by one, because
each is judged in arrival order against the view as the previous one left it.

A manager that loses heartbeats holds failovers.  Silence is evidence of a dead
amphora only if the manager would have heard it: when the kernel dropped
datagrams on the receive socket (its buffer was full: on Linux, read from
``/proc/net/udp``) or the manager dropped heartbeats from a full backlog within
the last ``heartbeat_timeout``, the stale check is paused exactly as after a
store error (``paused_at`` of :func:`~amphora_heartbeat.tracker.decide`), and
the amphorae held are logged and counted.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import logging
import os
import random
import select
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from ..models import Heartbeat
from ..store import StaleAmphora, Store, StoreError, TickWrite
from ..tracker import decide
from .backlog import Backlog, drain, receive_forever
from .failover import Failover, FailoverRunner
from .histogram import DelayHistogram
from .judge import Entry, ViewCache
from .losses import GateHolds, LossWatch
from .writer import BatchWriter

__all__ = ["HealthManager", "TickReport", "tune_gc"]

log = logging.getLogger("amphora_heartbeat.manager")

# Counters with a key after the dot, shown once they happen.
_KEYED = ("not_recorded.", "rows_written.")

# The counters :attr:`HealthManager.counters` always shows, zero or not.
_COUNTERS = (
    "ticks",
    "heartbeats_judged",
    "heartbeats_recorded",
    "rows_written",
    "unknown_amphora",
    "status_changes",
    "store_errors",
    "tick_errors",
    "poison_heartbeats",
    "unstorable_id",
    "source_mismatch",
    "stats_replayed",
    "stats_unknown_listener",
    "dropped",
    "oversized_heartbeats",
    "failovers_started",
    "failovers_succeeded",
    "failovers_failed",
    "failovers_held_back",
    "failovers_waiting",
    "failovers_held_overloaded",
    "claims_cleared",
    "failovers_held_startup",
    "failovers_held_paused",
    "stale_not_failed_over",
    "socket_drops",
    "overloads",
)


@attrs.frozen
class TickReport:
    """What one tick did (returned by :meth:`HealthManager.step`)."""

    #: Heartbeats judged in this tick.
    heartbeats: int = 0
    #: Rows the tick's transaction wrote.
    rows: int = 0
    #: Seconds from the oldest heartbeat's receipt to the tick's start.
    lag: float = 0.0
    #: Whether the tick's write failed (its heartbeats wait for the next try).
    failed: bool = False


# The longest wait before a write is tried again after a store error, in seconds.
_MAX_BACKOFF = 5.0


def _waiting(now: float, deadline: float, longest: float) -> bool:
    """Tell whether ``now`` is before ``deadline``, set at most ``longest`` seconds ahead.

    A deadline further ahead than that was set by a clock since set back: it is
    due now, or a corrected clock would delay the work by the correction.
    """
    return now < deadline <= now + longest


def _check_timings(
    heartbeat_timeout: float,
    health_check_interval: float,
    failover_threshold: int | None,
    failover_threads: int,
) -> None:
    if heartbeat_timeout <= 0 or health_check_interval <= 0:
        raise ValueError("heartbeat_timeout and health_check_interval must be positive")
    if failover_threshold is not None and failover_threshold < 1:
        raise ValueError("failover_threshold must be None or at least 1")
    if failover_threads < 1:
        raise ValueError("failover_threads must be at least 1")


def tune_gc() -> None:
    """Make the cyclic garbage collector run less often, for a process that runs a manager.

    A manager allocates a few dozen short-lived objects per heartbeat; with the
    default thresholds the collector's passes cost about a quarter of its CPU
    time (measured by the benchmark).  Heartbeat trees hold no cycles, so rarer
    passes free nothing later.  The command line and the benchmark call this;
    a library caller decides for its own process.
    """
    gc.set_threshold(50_000, 20, 100)


class HealthManager:
    """Turn received heartbeats into batched database writes, and stale amphorae into failovers.

    :param getter: a :class:`~amphora_heartbeat.getter.UDPStatusGetter` (anything
        with ``dorecv()``, ``fileno()`` and ``counters``), or None to feed
        heartbeats with :meth:`submit` only.
    :param store: where views are read and decisions written.
    :param heartbeat_interval: Octavia's option of that name, in seconds; kept
        for the rules (a heartbeat is judged at its receive time, so it never
        counts as late here).
    :param heartbeat_timeout: seconds of silence after which an amphora is stale;
        also the start-up grace and the wait after a store error.
    :param health_check_interval: seconds between stale checks.
    :param failover_threshold: when this many amphorae are stale at once, fail
        over none (storm guard: they are marked ``FAILOVER_STOPPED``); None: no guard.
    :param failover: called with an amphora id in a worker thread; returning means
        the failover is done (the amphora's ``amphora_health`` row is deleted),
        raising means it failed (``busy`` is cleared; this manager retries it
        ``heartbeat_timeout`` seconds later).  One whose signature names
        ``load_balancer_id`` gets the amphora's load balancer id too.  None:
        stale amphorae are logged and counted, nothing is marked busy.
    :param failover_threads: most failovers running at once.
    :param failover_timeout: most seconds a failover runs (a
        :class:`FailoverCommand` is killed then).  A claim older than
        ``heartbeat_timeout + failover_timeout`` belongs to a manager that died:
        another takes it over (or, if the amphora left ``ALLOCATED``, only
        clears its health row).
    :param tick: seconds between ticks of :meth:`run`.
    :param max_batch: most heartbeats judged in one tick (the rest wait for the next).
    :param max_backlog: most heartbeats kept while the store is failing; the
        oldest beyond it are dropped (and counted).
    :param max_backlog_items: most items (see
        :func:`~amphora_heartbeat.manager.judge.items`: about 130 bytes each at
        most) held received and not yet committed; a heartbeat beyond it is
        refused on arrival (counted ``dropped``).  The default bounds the
        backlog to about 250 MiB.
    :param max_heartbeat_items: the largest heartbeat accepted, in items; a
        bigger one is refused (counted ``oversized_heartbeats``).  The default
        is above any heartbeat of UUID-named members that fits the 1 MiB
        decompressed limit (about 24,000 members).
    :param started: the start of the start-up grace, seconds since the epoch;
        None: the first :meth:`step`'s ``now``.
    :param clock: the wall clock :meth:`run` and commit times use.
    :param check_source: write nothing for a heartbeat whose source address is not
        its amphora's ``lb_network_ip`` (when that is set), and count it
        ``source_mismatch``.  Octavia does not check; recommended where
        amphorae share one key.
    """

    def __init__(
        self,
        getter: Any,
        store: Store,
        *,
        heartbeat_interval: float = 10,
        heartbeat_timeout: float = 60,
        health_check_interval: float = 3,
        failover_threshold: int | None = None,
        failover: Failover | None = None,
        failover_threads: int = 10,
        failover_timeout: float = 600.0,
        tick: float = 0.1,
        max_batch: int = 20_000,
        max_backlog: int = 1_000_000,
        max_backlog_items: int = 2_000_000,
        max_heartbeat_items: int = 50_000,
        started: float | None = None,
        clock: Callable[[], float] = time.time,
        check_source: bool = False,
    ) -> None:
        _check_timings(
            heartbeat_timeout, health_check_interval, failover_threshold, failover_threads
        )
        if tick <= 0 or failover_timeout <= 0:
            raise ValueError("tick and failover_timeout must be positive")
        if min(max_batch, max_backlog, max_backlog_items, max_heartbeat_items) < 1:
            raise ValueError("max_batch and the backlog bounds must be at least 1")
        self.getter = getter
        self.store = store
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.health_check_interval = health_check_interval
        self.failover_threshold = failover_threshold
        #: Seconds after which another manager's unfinished claim may be taken over.
        self.failover_lease = heartbeat_timeout + failover_timeout
        self.tick = tick
        self.started = started
        self.clock = clock
        #: The last time the store failed (seconds since the epoch), or None.
        self.paused_at: float | None = None
        #: Receive-to-commit delays of every committed heartbeat.
        self.delays = DelayHistogram()
        #: Durations of committed ticks (read, judge, write), seconds.
        self.tick_durations = DelayHistogram()
        #: Called with the time at the end of each iteration of :meth:`run`'s loop
        #: (a watchdog watches the loop that does the work, not a thread that exists).
        self.observers: list[Callable[[float], object]] = []
        self._heard: set[str] = set()
        self._counts: collections.Counter[str] = collections.Counter()
        self._gauges: dict[str, float] = {
            "tick_seconds": 0.0,
            "tick_seconds_total": 0.0,
            "lag_seconds": 0.0,
        }
        self._backlog = Backlog(
            max_batch=max_batch,
            max_backlog=max_backlog,
            max_items=max_backlog_items,
            max_heartbeat_items=max_heartbeat_items,
        )
        self._views = ViewCache()
        self._writer = BatchWriter(
            store,
            self._views,
            heartbeat_interval=heartbeat_interval,
            check_source=check_source,
            clock=clock,
        )
        self._losses = LossWatch(heartbeat_timeout, self._counts)
        self._holds = GateHolds(self._counts)
        self._failovers = FailoverRunner(
            failover, failover_threads, self._counts, retry_after=heartbeat_timeout
        )
        self._retry_at = float("-inf")
        self._failures = 0
        self._next_check: float | None = None
        # stop() may run in a signal handler, where taking a lock (as
        # threading.Event.set does) can deadlock: a flag and a pipe instead.
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._receiver: threading.Thread | None = None

    @property
    def failover(self) -> Failover | None:
        """The failover callable (None: stale amphorae are only logged and counted)."""
        return self._failovers.failover

    @property
    def overloaded_at(self) -> float | None:
        """The last stale check that found heartbeats lost (socket or backlog drops), or None."""
        return self._losses.overloaded_at

    # --- feeding -------------------------------------------------------------------

    def submit(self, heartbeat: Heartbeat, source: str | None = None) -> None:
        """Queue a heartbeat received elsewhere (its ``recv_time`` must be set).

        ``source`` is the IP address it came from; with ``check_source`` a
        heartbeat without one counts as a mismatch.
        """
        if heartbeat.recv_time is None:
            raise ValueError("submit() needs a heartbeat with its recv_time")
        self._backlog.append(heartbeat, source)

    # --- one tick ------------------------------------------------------------------

    def step(self, now: float) -> TickReport:
        """Do one tick at ``now`` (seconds since the epoch).

        Take what was received (from the getter too, unless :meth:`run` receives
        in its own thread), judge it and write it in one transaction, apply
        finished failovers, and run the stale check when it is due.
        """
        if self.started is None:
            self.started = now
        if self.getter is not None and self._receiver is None:
            drain(self.getter, self._backlog)
        report = self._tick(now)
        self._apply_finished(now)
        if self._next_check is None or not _waiting(
            now, self._next_check, self.health_check_interval
        ):
            self._next_check = now + self.health_check_interval
            self._check(now)
        return report

    def _tick(self, now: float) -> TickReport:
        if _waiting(now, self._retry_at, _MAX_BACKOFF):
            # Backing off after a store error: keep receiving, write later.
            self._backlog.hold()
            return TickReport(failed=True)
        batch = self._backlog.take()
        if not batch:
            return TickReport()
        start = self.clock()
        lag = max(now - min(e[0].recv_time for e in batch if e[0].recv_time is not None), 0.0)
        try:
            written = self._writer.write(batch)
        except Exception:
            # A bug or data the rules refuse: retrying the same batch would fail
            # for ever, so it is dropped (counted), and the manager goes on.
            log.exception(
                "tick of %d heartbeats failed; dropping them",
                len(batch),
                extra={"event": "tick_failed", "count": len(batch)},
            )
            self._counts["tick_errors"] += 1
            self._backlog.drop(batch)
            return TickReport(len(batch), 0, lag, failed=True)
        self._counts.update(written.counts)
        self._backlog.settle(batch, written.remaining)
        if written.committed:
            self._committed(written.committed, written.rows, start, lag)
            for write in written.writes:
                self._count_write(write)
        if written.failed is not None:
            self._store_failed(written.failed, now)
            return TickReport(len(batch), written.rows, lag, failed=True)
        return TickReport(len(batch), written.rows, lag)

    def _committed(self, batch: Sequence[Entry], rows: int, start: float, lag: float) -> None:
        """Count a committed tick and the receive-to-commit delay of each heartbeat in it."""
        committed = self.clock()
        self._failures = 0
        self._counts["ticks"] += 1
        self._counts["heartbeats_judged"] += len(batch)
        self._counts["rows_written"] += rows
        delays = self.delays
        for h, _, _ in batch:
            delays.add(committed - h.recv_time)  # type: ignore[operator]
        self._gauges["tick_seconds"] = committed - start
        self._gauges["tick_seconds_total"] += committed - start
        self._gauges["last_commit_seconds"] = committed
        self.tick_durations.add(committed - start)
        self._gauges["lag_seconds"] = lag
        self._gauges["max_lag_seconds"] = max(self._gauges.get("max_lag_seconds", 0.0), lag)

    def _count_write(self, write: TickWrite) -> None:
        """Count the rows of a committed write by table, and the amphorae it recorded."""
        counts = self._counts
        for table, n in write.rows_by_table().items():
            counts["rows_written." + table] += n
        self._heard.update(write.health)

    def _store_failed(self, exc: StoreError, now: float) -> None:
        self._failures += 1
        self._counts["store_errors"] += 1
        self.paused_at = now if self.paused_at is None else max(self.paused_at, now)
        backoff = min(0.1 * 2 ** (self._failures - 1), _MAX_BACKOFF)
        self._retry_at = now + backoff
        log.warning(
            "store error (%s); retrying in %.1fs, no failover for %ss",
            exc,
            backoff,
            self.heartbeat_timeout,
            extra={"event": "store_error", "error": str(exc)},
        )

    # --- failover ------------------------------------------------------------------

    def _check(self, now: float) -> None:
        """Run the stale check at ``now``: the tracker's policy over the store's candidates."""
        self._clock_set_back(now)
        self._losses.note(now, fd=self._socket_fd(), dropped=self._backlog.dropped)
        if _waiting(now, self._retry_at, _MAX_BACKOFF):
            return
        cutoff = now - self.heartbeat_timeout
        lease_cutoff = now - self.failover_lease
        try:
            cleared = self.store.clear_expired_claims(lease_cutoff)
            if cleared:
                self._counts["claims_cleared"] += cleared
                log.warning("cleared %d expired failover claims of amphorae gone", cleared)
            candidates = self.store.stale_amphorae(cutoff, lease_cutoff)
            if candidates:
                # A heartbeat received but not committed yet (the manager is behind)
                # counts: a slow database must not fail a live amphora over.
                pending = self._backlog.pending_since(cutoff)
                candidates = {a: s for a, s in candidates.items() if a not in pending}
            self._gauges["stale_amphorae"] = len(candidates)
            self._judge_stale(candidates, now, cutoff, lease_cutoff)
        except StoreError as exc:
            self._store_failed(exc, now)

    def _clock_set_back(self, now: float) -> None:
        """Bring times ahead of ``now`` back to it: they were read from a clock since set back.

        So a corrected clock holds failovers a timeout at most, not the size of
        the correction.
        """
        if self.started is not None and self.started > now:
            self.started = now
        if self.paused_at is not None and self.paused_at > now:
            self.paused_at = now
        self._losses.set_back(now)

    def _judge_stale(
        self,
        candidates: Mapping[str, StaleAmphora],
        now: float,
        cutoff: float,
        lease_cutoff: float,
    ) -> None:
        """Apply the failover policy to the stale ``candidates`` (by amphora id)."""
        held = {a for a, c in candidates.items() if c.status == "FAILOVER_STOPPED"}
        order = list(candidates)
        # Managers sharing a database each start somewhere else in the list.
        random.shuffle(order)
        # Lost heartbeats pause failover as a store error does: silence proves
        # nothing for a timeout after the manager last missed something.
        pauses = [t for t in (self.paused_at, self.overloaded_at) if t is not None]
        decision = decide(
            order,
            now=now,
            started=self.started if self.started is not None else now,
            paused_at=max(pauses) if pauses else None,
            heartbeat_timeout=self.heartbeat_timeout,
            failover_threshold=self.failover_threshold,
            held=held,
        )
        self._losses.count_held(order, decision.failover, now)
        self._holds.count(order, now=now, timeout=self.heartbeat_timeout,
                          started=self.started, paused_at=self.paused_at)  # fmt: skip
        if decision.stopped and not decision.failover and held != set(decision.stopped):
            self._stop_storm(decision.stopped)
        # Log each stale amphora once per silence (it may report and fall silent again).
        self._failovers.keep_unhandled(decision.failover)
        if decision.failover:
            lbs = {a: candidates[a].load_balancer_id for a in decision.failover}
            self._failovers.start(
                self.store,
                decision.failover,
                cutoff,
                now=now,
                load_balancers=lbs,
                lease_cutoff=lease_cutoff,
            )

    def _stop_storm(self, stopped: Sequence[str]) -> None:
        newly = self.store.stop_failovers(stopped, self.clock())
        if newly:
            self._counts["failovers_held_back"] += newly
            log.error(
                "%d amphorae stale, at or over failover_threshold %s: failing over none",
                len(stopped),
                self.failover_threshold,
                extra={"event": "failovers_held_back", "reason": "storm", "count": len(stopped)},
            )

    def _socket_fd(self) -> int | None:
        if self.getter is None:
            return None
        try:
            return int(self.getter.fileno())
        except (AttributeError, OSError, ValueError):
            return None

    def _apply_finished(self, now: float) -> None:
        try:
            self._failovers.apply_finished(self.store, now)
        except StoreError as exc:
            self._store_failed(exc, now)

    def wait_failovers(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for running failovers to end; True if all did."""
        return self._failovers.wait(timeout)

    def reconfigure(
        self,
        *,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        health_check_interval: float,
        failover_threshold: int | None,
        failover_threads: int,
    ) -> None:
        """Apply new timings and failover limits from the next tick on (a reload).

        Failovers running go on; the next stale check runs at the next tick.
        Call it from the thread that runs :meth:`step` (e.g. ``every_tick`` of :meth:`run`).
        """
        _check_timings(
            heartbeat_timeout, health_check_interval, failover_threshold, failover_threads
        )
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.health_check_interval = health_check_interval
        self.failover_threshold = failover_threshold
        self._losses.heartbeat_timeout = heartbeat_timeout
        self._failovers.retry_after = heartbeat_timeout
        self._failovers.resize(failover_threads)
        self._next_check = None

    # --- running -------------------------------------------------------------------

    def run(self, *, every_tick: Callable[[float], object] | None = None) -> None:
        """Receive in a thread and tick every :attr:`tick` seconds until :meth:`stop`.

        ``every_tick`` is called with the tick's time (seconds since the epoch)
        before each tick, in this thread: where a reload applies its changes.
        Returns after the current tick is committed (or has failed).
        """
        if self.getter is not None:
            self._receiver = threading.Thread(
                target=receive_forever,
                args=(self.getter, self._backlog, lambda: self._stopping),
                name="amphora-heartbeat-receiver",
                daemon=True,
            )
            self._receiver.start()
        try:
            while not self._stopping:
                began = self.clock()
                if every_tick is not None:
                    every_tick(began)
                self.step(began)
                for observe in self.observers:
                    observe(self.clock())
                if not self._backlog.full_batch_waiting:
                    pause = max(self.tick - (self.clock() - began), 0.0)
                    if select.select([self._wake_r], [], [], pause)[0]:
                        self._drain_wake()
            # Commit what arrived before the stop.
            self.step(self.clock())
        finally:
            self._end_run()

    def _end_run(self) -> None:
        receiver = self._receiver
        self._receiver = None
        if receiver is not None:
            timeout = getattr(self.getter, "timeout", None)
            receiver.join(None if timeout is None else timeout + 1.0)
        self._stopping = False
        self._drain_wake()

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 512):
                pass

    def wake(self) -> None:
        """Make :meth:`run` start its next tick now; safe from any thread or signal handler."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def stop(self) -> None:
        """Ask :meth:`run` to return after its current tick; safe from any thread or signal."""
        self._stopping = True
        self.wake()

    def close(self, *, wait: bool = True) -> None:
        """Shut the failover pool down (waiting for running failovers if ``wait``).

        The getter and the store are the caller's to close.
        """
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1
        self._failovers.close(wait=wait)
        if wait:
            with contextlib.suppress(StoreError):
                self._failovers.apply_finished(self.store, self.clock())

    @property
    def backlog(self) -> int:
        """Heartbeats received and not yet committed."""
        return len(self._backlog)

    @property
    def counters(self) -> Mapping[str, float]:
        """A snapshot of the counters: the getter's and the manager's own.

        ``received``, ``accepted``, ``rejected.<reason>`` (the getter's);
        ``ticks``, ``heartbeats_judged``, ``heartbeats_recorded``, ``rows_written``,
        ``unknown_amphora``,
        ``not_recorded.<reason>``, ``status_changes``, ``store_errors``, ``tick_errors``,
        ``poison_heartbeats``, ``unstorable_id``, ``source_mismatch``,
        ``stats_replayed``, ``stats_unknown_listener`` (see
        ``docs/reference/errors.md``), ``rows_written.<table>``, ``dropped``,
        ``oversized_heartbeats``, ``claims_cleared``,
        ``failovers_started`` / ``_succeeded`` / ``_failed`` /
        ``_held_back`` / ``_waiting`` / ``_held_overloaded`` (stale amphorae not
        failed over because heartbeats were lost within ``heartbeat_timeout``) /
        ``_held_startup`` / ``_held_paused`` (in the start-up grace, or after a
        store error),
        ``stale_not_failed_over``, ``socket_drops`` (datagrams the kernel dropped
        on the receive socket, Linux only), ``overloads`` (stale checks that found
        heartbeats lost); gauges
        ``tick_seconds`` and ``lag_seconds`` (last tick), ``tick_seconds_total`` (all
        committed ticks), ``max_lag_seconds``, ``backlog``, ``backlog_items``,
        ``last_commit_seconds``
        (seconds since the epoch, once a tick committed), ``stale_amphorae`` (at the
        last stale check, once one ran), ``amphorae_heard`` (distinct amphorae
        recorded since the start), and the receive-to-commit delay
        ``delay_p99_seconds`` and ``delay_max_seconds``.
        Safe to read from another thread.
        """
        out: dict[str, float] = {}
        if self.getter is not None:
            out.update(self.getter.counters)
        # Copies first: a scrape reads this from another thread while ticks add keys.
        counts = dict(self._counts)
        counts["dropped"] = self._backlog.dropped
        counts["oversized_heartbeats"] = self._backlog.oversized
        out.update((name, counts.get(name, 0)) for name in _COUNTERS)
        out.update(sorted((k, v) for k, v in counts.items() if k.startswith(_KEYED)))
        out.update(dict(self._gauges))
        out["backlog"] = self.backlog
        out["backlog_items"] = self._backlog.items
        out["amphorae_heard"] = len(self._heard)
        out["delay_p99_seconds"] = self.delays.quantile(0.99)
        out["delay_max_seconds"] = self.delays.maximum
        return out
