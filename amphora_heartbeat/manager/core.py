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

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..models import Heartbeat
from ..store import Store, StoreError
from .backlog import Backlog, Receiver, drain
from .failover import Failover, FailoverRunner
from .judge import ViewCache
from .losses import getter_fd
from .peers import PeerBoard
from .stale import StaleCheck
from .tally import Tally
from .tick import Ticker, TickReport, waiting
from .wake import WakePipe
from .writer import BatchWriter

__all__ = ["HealthManager", "tune_gc"]

log = logging.getLogger("amphora_heartbeat.manager")


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


def _check_bounds(tick: float, failover_timeout: float, *bounds: int) -> None:
    if tick <= 0 or failover_timeout <= 0:
        raise ValueError("tick and failover_timeout must be positive")
    if min(bounds) < 1:
        raise ValueError("max_batch and the backlog bounds must be at least 1")


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

    :param getter: a :class:`~amphora_heartbeat.getter.UDPStatusGetter` (anything with
        ``dorecv()``, ``fileno()`` and ``counters``), or None: :meth:`submit` only.
    :param store: where views are read and decisions written.
    :param heartbeat_interval: Octavia's option of that name, in seconds (for the
        rules; a heartbeat judged at its receive time is never late here).
    :param heartbeat_timeout: seconds of silence after which an amphora is stale;
        also the start-up grace and the wait after a store error.
    :param health_check_interval: seconds between stale checks.
    :param failover_threshold: when this many amphorae are stale at once, fail
        over none (storm guard: they are marked ``FAILOVER_STOPPED``); None: no guard.
    :param failover: called with an amphora id (and ``load_balancer_id`` if its
        signature names it) in a worker thread; returning means done (the
        ``amphora_health`` row is deleted), raising means failed (``busy`` is
        cleared, retried ``heartbeat_timeout`` later).  None: stale amphorae are
        logged and counted, nothing is marked busy.
    :param failover_threads: most failovers running at once.
    :param failover_timeout: most seconds a failover runs (a :class:`FailoverCommand`
        is killed then).  A claim older than ``heartbeat_timeout + failover_timeout``
        is a dead manager's: another takes it over (or only clears the health
        row of an amphora no longer ``ALLOCATED``).
    :param tick: seconds between ticks of :meth:`run`.
    :param max_batch: most heartbeats judged in one tick (the rest wait for the next).
    :param max_backlog: most heartbeats kept while the store is failing; the
        oldest beyond it are dropped (and counted).
    :param max_backlog_items: most items (:func:`~amphora_heartbeat.manager.judge.items`,
        at most about 130 bytes each) received and not yet committed; a heartbeat
        beyond it is refused (counted ``dropped``).  Default: about 250 MiB.
    :param max_heartbeat_items: the largest heartbeat accepted, in items (bigger:
        counted ``oversized_heartbeats``); the default is above any heartbeat of
        UUID-named members within the 1 MiB decompressed limit (about 24,000).
    :param started: the start of the start-up grace (epoch seconds); None: the first step.
    :param clock: the wall clock :meth:`run` and commit times use.
    :param check_source: write nothing for (and count ``source_mismatch``) a heartbeat
        not sent from its amphora's ``lb_network_ip`` when that is set.  Octavia
        does not check; recommended where amphorae share one key.
    :param peers: the board of the workers on this address (:mod:`.peers`), or None.
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
        peers: PeerBoard | None = None,
    ) -> None:
        _check_timings(
            heartbeat_timeout, health_check_interval, failover_threshold, failover_threads
        )
        _check_bounds(
            tick, failover_timeout, max_batch, max_backlog, max_backlog_items, max_heartbeat_items
        )
        self.getter = getter
        self.store = store
        self.heartbeat_interval = heartbeat_interval
        self.health_check_interval = health_check_interval
        self.tick = tick
        self.clock = clock
        self._tally = Tally()
        #: Receive-to-commit delays of every committed heartbeat.
        self.delays = self._tally.delays
        #: Durations of committed ticks (read, judge, write), seconds.
        self.tick_durations = self._tally.tick_durations
        #: Called with the time after each turn of :meth:`run`'s loop (a watchdog's hook).
        self.observers: list[Callable[[float], object]] = []
        self._backlog = Backlog(
            max_batch=max_batch,
            max_backlog=max_backlog,
            max_items=max_backlog_items,
            max_heartbeat_items=max_heartbeat_items,
        )
        self._failovers = FailoverRunner(
            failover, failover_threads, self._tally.counts, retry_after=heartbeat_timeout
        )
        self._stale = StaleCheck(
            store,
            self._failovers,
            self._tally.counts,
            heartbeat_timeout=heartbeat_timeout,
            failover_threshold=failover_threshold,
            failover_lease=heartbeat_timeout + failover_timeout,
            clock=clock,
            peers=peers,
        )
        self._stale.started = started
        self._failover_timeout = failover_timeout
        writer = BatchWriter(
            store,
            ViewCache(),
            heartbeat_interval=heartbeat_interval,
            check_source=check_source,
            clock=clock,
        )
        self._ticker = Ticker(self._backlog, writer, self._tally, self._stale, clock)
        self._next_check: float | None = None
        # stop() may run in a signal handler: a flag and a pipe, no lock.
        self._stopping = False
        self._wake = WakePipe()
        self._receiver: Receiver | None = None

    @property
    def heartbeat_timeout(self) -> float:
        """Seconds of silence after which an amphora is stale."""
        return self._stale.heartbeat_timeout

    @property
    def failover_threshold(self) -> int | None:
        """Stale amphorae at once from which none is failed over (None: no limit)."""
        return self._stale.failover_threshold

    @property
    def failover_lease(self) -> float:
        """Seconds after which another manager's unfinished claim may be taken over."""
        return self._stale.failover_lease

    @property
    def started(self) -> float | None:
        """The start of the start-up grace (seconds since the epoch; None until the first tick)."""
        return self._stale.started

    @property
    def paused_at(self) -> float | None:
        """The last time the store failed (seconds since the epoch), or None."""
        return self._stale.paused_at

    @property
    def failover(self) -> Failover | None:
        """The failover callable (None: stale amphorae are only logged and counted)."""
        return self._failovers.failover

    @property
    def overloaded_at(self) -> float | None:
        """The last stale check that found heartbeats lost (socket or backlog drops), or None."""
        return self._stale.losses.overloaded_at

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
        if self._stale.started is None:
            self._stale.started = now
        if self.getter is not None and self._receiver is None:
            drain(self.getter, self._backlog)
        report = self._ticker.tick(now)
        try:
            self._failovers.apply_finished(self.store, now)
        except StoreError as exc:
            self._ticker.store_failed(exc, now)
        if self._next_check is None or not waiting(
            now, self._next_check, self.health_check_interval
        ):
            self._next_check = now + self.health_check_interval
            self._check(now)
        return report

    # --- failover ------------------------------------------------------------------

    def _check(self, now: float) -> None:
        """Run the stale check at ``now`` unless backing off after a store error."""
        self._stale.observe(now, fd=getter_fd(self.getter), dropped=self._backlog.dropped)
        if self._ticker.backing_off(now):
            return
        try:
            self._stale.check(now, self._backlog)
        except StoreError as exc:
            self._ticker.store_failed(exc, now)
        else:
            self._tally.gauges["stale_amphorae"] = self._stale.found

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
        self.heartbeat_interval = self._ticker.writer.heartbeat_interval = heartbeat_interval
        self.health_check_interval = health_check_interval
        lease = heartbeat_timeout + self._failover_timeout
        self._stale.retime(heartbeat_timeout, failover_threshold, lease)
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
            self._receiver = Receiver(self.getter, self._backlog, lambda: self._stopping)
        try:
            while not self._stopping:
                began = self.clock()
                if every_tick is not None:
                    every_tick(began)
                self.step(began)
                for observe in self.observers:
                    observe(self.clock())
                if not self._backlog.full_batch_waiting:
                    self._wake.wait(max(self.tick - (self.clock() - began), 0.0))
            # Commit what arrived before the stop.
            self.step(self.clock())
        finally:
            self._end_run()

    def _end_run(self) -> None:
        receiver = self._receiver
        self._receiver = None
        if receiver is not None:
            receiver.join()
        self._stopping = False
        self._wake.drain()

    def wake(self) -> None:
        """Make :meth:`run` start its next tick now; safe from any thread or signal handler."""
        self._wake.wake()

    def stop(self) -> None:
        """Ask :meth:`run` to return after its current tick; safe from any thread or signal."""
        self._stopping = True
        self._wake.wake()

    def close(self, *, wait: bool = True) -> None:
        """Shut the failover pool down (waiting for running failovers if ``wait``).

        The getter and the store are the caller's to close.
        """
        self._wake.close()
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

        Every name and what it counts is listed under *Health manager counters* in
        ``docs/reference/errors.md``.  Safe to read from another thread.
        """
        received = self.getter.counters if self.getter is not None else {}
        return self._tally.snapshot(received, self._backlog)
