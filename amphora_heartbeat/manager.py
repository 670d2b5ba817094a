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

import argparse
import collections
import concurrent.futures
import contextlib
import gc
import itertools
import json
import logging
import os
import random
import secrets
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import attrs

from .errors import HeartbeatError
from .getter import UDPStatusGetter
from .models import Heartbeat, ListenerStats
from .rules import LoadBalancerView, derive
from .sender import parse_address
from .stats import fold
from .store import StatsUpsert, Store, StoredView, StoreError, TickWrite, open_store
from .tracker import decide

__all__ = [
    "DelayHistogram",
    "FailoverCommand",
    "HealthManager",
    "TickReport",
    "add_arguments",
    "main",
    "run",
    "run_demo",
    "tune_gc",
]

log = logging.getLogger("amphora_heartbeat.manager")

# Views kept between ticks (by load balancer id); cleared when this many.
_VIEW_CACHE_SIZE = 200_000

#: A failover: called with the amphora id; returning means done, raising means failed.
Failover = Callable[[str], object]


def _socket_drops(fd: int) -> tuple[int, int] | None:
    """Return ``(inode, drops)`` of the UDP socket ``fd`` from Linux's /proc, or None.

    ``drops`` counts the datagrams the kernel discarded for that socket (its
    receive buffer was full) since it was created.
    """
    try:
        inode = str(os.fstat(fd).st_ino)
    except (OSError, ValueError):
        return None
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table, encoding="ascii") as f:
                next(f, None)  # the header
                for line in f:
                    fields = line.split()
                    # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
                    if len(fields) >= 13 and fields[9] == inode:
                        return int(inode), int(fields[12])
        except (OSError, ValueError):
            continue
    return None


class DelayHistogram:
    """Receive-to-commit delays in fixed 1 ms buckets up to ``limit`` seconds.

    Bounded memory whatever the traffic; quantiles are exact to the bucket width.
    """

    def __init__(self, *, limit: float = 60.0, width: float = 0.001) -> None:
        """Make an empty histogram of ``limit / width`` buckets (seconds)."""
        self.width = width
        self._counts = [0] * (int(limit / width) + 1)
        self.count = 0
        self.maximum = 0.0

    def add(self, delay: float, n: int = 1) -> None:
        """Count ``n`` delays of ``delay`` seconds."""
        i = min(max(int(delay / self.width), 0), len(self._counts) - 1)
        self._counts[i] += n
        self.count += n
        self.maximum = max(self.maximum, delay)

    def quantile(self, q: float) -> float:
        """Return the least bucket bound (seconds) at or below which a ``q`` share falls."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self._counts):
            seen += n
            if seen >= rank and n:
                return (i + 1) * self.width
        return self.maximum  # pragma: no cover - rank never exceeds count

    def snapshot(self) -> DelayHistogram:
        """Return a copy (subtract two with :meth:`since` to measure a window)."""
        copy = DelayHistogram.__new__(DelayHistogram)
        copy.width = self.width
        copy._counts = list(self._counts)
        copy.count = self.count
        copy.maximum = self.maximum
        return copy

    def since(self, earlier: DelayHistogram) -> DelayHistogram:
        """Return the delays counted after ``earlier`` (a snapshot of this histogram)."""
        diff = self.snapshot()
        diff._counts = [a - b for a, b in zip(self._counts, earlier._counts, strict=True)]
        diff.count = self.count - earlier.count
        return diff


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


class FailoverCommand:
    """Run a command line per failover, the amphora id appended (``--failover-command``).

    Exit status 0 means done; any other status, or a command that cannot be
    started, raises, which the manager counts as a failed failover.
    """

    def __init__(self, command: str | Sequence[str], *, timeout: float | None = None) -> None:
        """Split ``command`` like a shell command line (a sequence is taken as is)."""
        self.argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not self.argv:
            raise ValueError("the failover command is empty")
        self.timeout = timeout

    def __call__(self, amphora_id: str) -> None:
        """Run the command for ``amphora_id``; raise unless it exits 0."""
        subprocess.run(
            [*self.argv, amphora_id], check=True, timeout=self.timeout, stdin=subprocess.DEVNULL
        )


def _diff(before: LoadBalancerView, after: LoadBalancerView, out: _Changes) -> None:
    """Add to ``out`` every status that differs between two views of one load balancer."""
    if after.id is not None and after.operating_status != before.operating_status:
        out.load_balancers[after.id] = after.operating_status
    for lid, lv in after.listeners.items():
        if lv.operating_status != before.listeners[lid].operating_status:
            out.listeners[lid] = lv.operating_status
    for pid, pv in after.pools.items():
        old = before.pools[pid]
        if pv.operating_status != old.operating_status:
            out.pools[pid] = pv.operating_status
        for mid, mv in pv.members.items():
            if mv.operating_status != old.members[mid].operating_status:
                out.members[mid] = mv.operating_status


@attrs.define
class _Changes:
    load_balancers: dict[str, str] = attrs.Factory(dict)
    listeners: dict[str, str] = attrs.Factory(dict)
    pools: dict[str, str] = attrs.Factory(dict)
    members: dict[str, str] = attrs.Factory(dict)


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
        raising means it failed (``busy`` is cleared, so it is retried).  None:
        stale amphorae are logged and counted, nothing is marked busy.
    :param failover_threads: most failovers running at once.
    :param tick: seconds between ticks of :meth:`run`.
    :param max_batch: most heartbeats judged in one tick (the rest wait for the next).
    :param max_backlog: most heartbeats kept while the store is failing; the
        oldest beyond it are dropped (and counted).
    :param started: the start of the start-up grace, seconds since the epoch;
        None: the first :meth:`step`'s ``now``.
    :param clock: the wall clock :meth:`run` and commit times use.
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
        tick: float = 0.1,
        max_batch: int = 20_000,
        max_backlog: int = 1_000_000,
        started: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if heartbeat_timeout <= 0 or health_check_interval <= 0 or tick <= 0:
            raise ValueError("heartbeat_timeout, health_check_interval and tick must be positive")
        if failover_threshold is not None and failover_threshold < 1:
            raise ValueError("failover_threshold must be None or at least 1")
        if failover_threads < 1 or max_batch < 1 or max_backlog < 1:
            raise ValueError("failover_threads, max_batch and max_backlog must be at least 1")
        self.getter = getter
        self.store = store
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.health_check_interval = health_check_interval
        self.failover_threshold = failover_threshold
        self.failover = failover
        self.failover_threads = failover_threads
        self.tick = tick
        self.max_batch = max_batch
        self.max_backlog = max_backlog
        self.started = started
        self.clock = clock
        #: The last time the store failed (seconds since the epoch), or None.
        self.paused_at: float | None = None
        #: The last stale check that found heartbeats lost (socket or backlog drops), or None.
        self.overloaded_at: float | None = None
        self._socket_reading: tuple[int, int] | None = None
        self._dropped_seen = 0
        self._held_overloaded: set[str] = set()
        #: Receive-to-commit delays of every committed heartbeat.
        self.delays = DelayHistogram()
        self._queue: collections.deque[Heartbeat] = collections.deque()
        self._backlog: list[Heartbeat] = []
        self._retry_at = float("-inf")
        self._failures = 0
        self._next_check: float | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._running: set[str] = set()
        self._finished: collections.deque[tuple[str, bool]] = collections.deque()
        self._unhandled: set[str] = set()
        # stop() may run in a signal handler, where taking a lock (as
        # threading.Event.set does) can deadlock: a flag and a pipe instead.
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._receiver: threading.Thread | None = None
        self._counts: collections.Counter[str] = collections.Counter()
        self._gauges: dict[str, float] = {"tick_seconds": 0.0, "lag_seconds": 0.0}
        self._views: dict[str, tuple[Mapping[str, Any], frozenset[str], LoadBalancerView]] = {}

    # --- feeding -------------------------------------------------------------------

    def submit(self, heartbeat: Heartbeat) -> None:
        """Queue a heartbeat received elsewhere (its ``recv_time`` must be set)."""
        if heartbeat.recv_time is None:
            raise ValueError("submit() needs a heartbeat with its recv_time")
        self._queue.append(heartbeat)

    def _drain_getter(self) -> None:
        """Take every datagram the getter has ready, without waiting."""
        getter = self.getter
        for _ in range(self.max_batch):
            try:
                ready, _, _ = select.select([getter.fileno()], [], [], 0)
            except (OSError, ValueError):
                return
            if not ready:
                return
            try:
                heartbeat, _ = getter.dorecv()
            except HeartbeatError:
                continue  # counted by the getter
            except (TimeoutError, OSError):
                return
            self._queue.append(heartbeat)

    def _receive_forever(self) -> None:
        getter = self.getter
        queue = self._queue
        while not self._stopping:
            try:
                heartbeat, _ = getter.dorecv()
            except (TimeoutError, HeartbeatError):
                continue
            except OSError:
                if self._stopping or getter.closed:
                    return
                log.exception("receiving failed; retrying")
                time.sleep(0.1)
                continue
            queue.append(heartbeat)

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
            self._drain_getter()
        report = self._tick(now)
        self._apply_finished(now)
        if self._next_check is None or now >= self._next_check:
            self._next_check = now + self.health_check_interval
            self._check(now)
        return report

    def _take_batch(self) -> list[Heartbeat]:
        batch = self._backlog
        queue = self._queue
        while queue and len(batch) < self.max_batch:
            batch.append(queue.popleft())
        if len(batch) > self.max_backlog:
            dropped = len(batch) - self.max_backlog
            self._counts["dropped"] += dropped
            log.warning("backlog full: dropped the %d oldest heartbeats", dropped)
            del batch[:dropped]
        self._backlog = []
        return batch

    def _tick(self, now: float) -> TickReport:
        if now < self._retry_at:
            # Backing off after a store error: keep receiving, write later.
            if len(self._queue) + len(self._backlog) > self.max_backlog:
                self._backlog = self._take_batch()
            return TickReport(failed=True)
        batch = self._take_batch()
        if not batch:
            return TickReport()
        start = self.clock()
        oldest = min(h.recv_time for h in batch if h.recv_time is not None)
        lag = max(now - oldest, 0.0)
        try:
            write, judged = self._judge(batch, now)
            rows = self.store.write_tick(write) if len(write) else 0
        except StoreError as exc:
            self._store_failed(exc, now)
            self._backlog = batch + self._backlog
            return TickReport(len(batch), 0, lag, failed=True)
        except Exception:
            # A bug or data the rules refuse: retrying the same batch would fail
            # for ever, so it is dropped (counted), and the manager goes on.
            log.exception("tick of %d heartbeats failed; dropping them", len(batch))
            self._counts["tick_errors"] += 1
            self._counts["dropped"] += len(batch)
            return TickReport(len(batch), 0, lag, failed=True)
        committed = self.clock()
        self._failures = 0
        self._counts.update(judged)
        self._counts["ticks"] += 1
        self._counts["heartbeats_judged"] += len(batch)
        self._counts["rows_written"] += rows
        delays = self.delays
        for h in batch:
            delays.add(committed - h.recv_time)  # type: ignore[operator]
        self._gauges["tick_seconds"] = committed - start
        self._gauges["lag_seconds"] = lag
        self._gauges["max_lag_seconds"] = max(self._gauges.get("max_lag_seconds", 0.0), lag)
        return TickReport(len(batch), rows, lag)

    def _judge(self, batch: Sequence[Heartbeat], now: float) -> tuple[TickWrite, Mapping[str, int]]:
        """Judge a tick's heartbeats in arrival order; return the write and counts."""
        stored = self.store.read_views({h.amphora_id for h in batch})
        counts: collections.Counter[str] = collections.Counter()
        original: dict[str, LoadBalancerView] = {}
        current: dict[str, LoadBalancerView] = {}
        health: dict[str, float] = {}
        reallocated: set[str] = set()
        rows: dict[tuple[str, str], ListenerStats] = {}
        replaced: set[tuple[str, str]] = set()
        interval = self.heartbeat_interval
        for heartbeat in batch:
            amphora_id = heartbeat.amphora_id
            sv: StoredView | None = stored.get(amphora_id)
            if sv is None:
                counts["unknown_amphora"] += 1
                continue
            lb_id = sv.load_balancer_id
            view = current.get(lb_id)
            if view is None:
                view = original[lb_id] = current[lb_id] = self._view(sv)
            recv_time: float = heartbeat.recv_time  # type: ignore[assignment]
            # Judged at its receive time: waiting in a queue never makes it late.
            update = derive(heartbeat, view, now=recv_time, heartbeat_interval=interval)
            if update.changed:
                current[lb_id] = view.apply(update)
            if update.record_heartbeat:
                counts["heartbeats_recorded"] += 1
                if recv_time > health.get(amphora_id, float("-inf")):
                    health[amphora_id] = recv_time
                if sv.amphora_status == "FAILOVER_STOPPED":
                    reallocated.add(amphora_id)
            else:
                counts["not_recorded." + str(update.reason)] += 1
            folded = fold(rows, heartbeat)
            rows.update(folded)
            if not heartbeat.stats_are_deltas:
                replaced.update(folded)
        changes = _Changes()
        for lb_id, view in current.items():
            before = original[lb_id]
            if view is not before:
                _diff(before, view, changes)
        write = TickWrite(
            now=self.clock(),
            health=health,
            load_balancers=changes.load_balancers,
            listeners=changes.listeners,
            pools=changes.pools,
            members=changes.members,
            stats=[StatsUpsert(k[0], k[1], s, add=k not in replaced) for k, s in rows.items()],
            reallocated=reallocated,
        )
        counts["status_changes"] += (
            len(changes.load_balancers)
            + len(changes.listeners)
            + len(changes.pools)
            + len(changes.members)
        )
        return write, counts

    def _view(self, sv: StoredView) -> LoadBalancerView:
        """Return the rules' view of ``sv``, reusing the last one built if nothing changed."""
        cached = self._views.get(sv.load_balancer_id)
        # Comparing two small mappings costs a fraction of building and
        # validating a view, and most load balancers do not change between ticks.
        if cached is not None and cached[0] == sv.view and cached[1] == sv.udp_listeners_down:
            return cached[2]
        view = LoadBalancerView.from_dict(sv.view, udp_listeners_down=sv.udp_listeners_down)
        if len(self._views) >= _VIEW_CACHE_SIZE:
            self._views.clear()
        self._views[sv.load_balancer_id] = (sv.view, sv.udp_listeners_down, view)
        return view

    def _store_failed(self, exc: StoreError, now: float) -> None:
        self._failures += 1
        self._counts["store_errors"] += 1
        self.paused_at = now if self.paused_at is None else max(self.paused_at, now)
        backoff = min(0.1 * 2 ** (self._failures - 1), 5.0)
        self._retry_at = now + backoff
        log.warning(
            "store error (%s); retrying in %.1fs, no failover for %ss",
            exc,
            backoff,
            self.heartbeat_timeout,
        )

    # --- failover ------------------------------------------------------------------

    def _check(self, now: float) -> None:
        """Run the stale check at ``now``: the tracker's policy over the store's candidates."""
        self._note_losses(now)
        if now < self._retry_at:
            return
        cutoff = now - self.heartbeat_timeout
        try:
            candidates = self.store.stale_amphorae(cutoff)
            if candidates:
                # A heartbeat received but not committed yet (the manager is behind)
                # counts: a slow database must not fail a live amphora over.
                pending = {
                    h.amphora_id
                    for h in itertools.chain(self._backlog, list(self._queue))
                    if h.recv_time is not None and h.recv_time >= cutoff
                }
                candidates = {a: s for a, s in candidates.items() if a not in pending}
            held = {a for a, status in candidates.items() if status == "FAILOVER_STOPPED"}
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
            self._count_held_overloaded(order, decision.failover, now)
            if decision.stopped and not decision.failover and held != set(decision.stopped):
                newly = self.store.stop_failovers(decision.stopped, self.clock())
                if newly:
                    self._counts["failovers_held_back"] += newly
                    log.error(
                        "%d amphorae stale, at or over failover_threshold %s: failing over none",
                        len(decision.stopped),
                        self.failover_threshold,
                    )
            # Log each stale amphora once per silence (it may report and fall silent again).
            self._unhandled.intersection_update(decision.failover)
            if decision.failover:
                self._start_failovers(decision.failover, cutoff)
        except StoreError as exc:
            self._store_failed(exc, now)

    def _note_losses(self, now: float) -> None:
        """Set :attr:`overloaded_at` to ``now`` if heartbeats were lost since the last check."""
        lost = 0
        getter = self.getter
        reading = None
        if getter is not None:
            try:
                reading = _socket_drops(getter.fileno())
            except (AttributeError, OSError, ValueError):
                reading = None
        if reading is not None:
            before = self._socket_reading
            self._socket_reading = reading
            # The first reading is the baseline (drops before it fall in the start-up
            # grace); a new socket (the getter rebound) starts counting from zero.
            if before is not None:
                drops = reading[1] - before[1] if before[0] == reading[0] else reading[1]
                if drops > 0:
                    self._counts["socket_drops"] += drops
                    lost += drops
        dropped = self._counts["dropped"]
        lost += dropped - self._dropped_seen
        self._dropped_seen = dropped
        if not lost:
            return
        if self.overloaded_at is None or now >= self.overloaded_at + self.heartbeat_timeout:
            log.warning(
                "overloaded: %d heartbeats lost (receive buffer full or backlog full);"
                " no failover until %ss after the last loss",
                lost,
                self.heartbeat_timeout,
            )
        self._counts["overloads"] += 1
        self.overloaded_at = now if self.overloaded_at is None else max(self.overloaded_at, now)

    def _count_held_overloaded(
        self, stale: Sequence[str], started: Sequence[str], now: float
    ) -> None:
        """Count and log stale amphorae not failed over because heartbeats were lost."""
        at = self.overloaded_at
        if at is None or now >= at + self.heartbeat_timeout:
            self._held_overloaded.clear()
            return
        fresh = [a for a in stale if a not in self._held_overloaded and a not in started]
        if fresh:
            self._held_overloaded.update(fresh)
            self._counts["failovers_held_overloaded"] += len(fresh)
            log.warning(
                "%d amphorae stale while the manager loses heartbeats: not failing them over",
                len(fresh),
            )

    def _start_failovers(self, stale: Sequence[str], cutoff: float) -> None:
        if self.failover is None:
            fresh = [a for a in stale if a not in self._unhandled]
            if fresh:
                self._counts["stale_not_failed_over"] += len(fresh)
                self._unhandled.update(fresh)
                log.warning(
                    "%d amphorae stale and no failover configured: %s",
                    len(fresh),
                    ", ".join(fresh[:10]) + (" ..." if len(fresh) > 10 else ""),
                )
            return
        free = self.failover_threads - len(self._running)
        if free <= 0:
            self._counts["failovers_waiting"] += len(stale)
            return
        # Claim only what can start now: a claimed amphora is busy until done.
        claimed = self.store.claim_failovers(stale[:free], cutoff)
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self.failover_threads, thread_name_prefix="amphora-failover"
            )
        for amphora_id in claimed:
            log.warning("amphora %s is stale: failing it over", amphora_id)
            self._counts["failovers_started"] += 1
            self._running.add(amphora_id)
            self._pool.submit(self._run_failover, amphora_id)

    def _run_failover(self, amphora_id: str) -> None:
        assert self.failover is not None
        try:
            self.failover(amphora_id)
        except Exception:
            log.exception("failover of amphora %s failed; it will be retried", amphora_id)
            self._finished.append((amphora_id, False))
        else:
            log.info("failover of amphora %s done", amphora_id)
            self._finished.append((amphora_id, True))

    def _apply_finished(self, now: float) -> None:
        finished = self._finished
        while finished:
            amphora_id, ok = finished[0]
            try:
                self.store.finish_failover(amphora_id, succeeded=ok)
            except StoreError as exc:
                self._store_failed(exc, now)
                return
            finished.popleft()
            self._running.discard(amphora_id)
            self._counts["failovers_succeeded" if ok else "failovers_failed"] += 1

    def wait_failovers(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for running failovers to end; True if all did."""
        deadline = time.monotonic() + timeout
        while len(self._finished) < len(self._running):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    # --- running -------------------------------------------------------------------

    def run(self) -> None:
        """Receive in a thread and tick every :attr:`tick` seconds until :meth:`stop`.

        Returns after the current tick is committed (or has failed).
        """
        if self.getter is not None:
            self._receiver = threading.Thread(
                target=self._receive_forever, name="amphora-heartbeat-receiver", daemon=True
            )
            self._receiver.start()
        try:
            while not self._stopping:
                began = self.clock()
                self.step(began)
                if len(self._queue) < self.max_batch:
                    pause = max(self.tick - (self.clock() - began), 0.0)
                    select.select([self._wake_r], [], [], pause)
            # Commit what arrived before the stop.
            self.step(self.clock())
        finally:
            receiver = self._receiver
            self._receiver = None
            if receiver is not None:
                timeout = getattr(self.getter, "timeout", None)
                receiver.join(None if timeout is None else timeout + 1.0)
            self._stopping = False
            with contextlib.suppress(OSError):
                while os.read(self._wake_r, 512):
                    pass

    def stop(self) -> None:
        """Ask :meth:`run` to return after its current tick; safe from any thread or signal."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def close(self, *, wait: bool = True) -> None:
        """Shut the failover pool down (waiting for running failovers if ``wait``).

        The getter and the store are the caller's to close.
        """
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None
        if wait:
            with contextlib.suppress(StoreError):
                self._apply_finished(self.clock())

    @property
    def backlog(self) -> int:
        """Heartbeats received and not yet committed."""
        return len(self._queue) + len(self._backlog)

    @property
    def counters(self) -> Mapping[str, float]:
        """A snapshot of the counters: the getter's and the manager's own.

        ``received``, ``accepted``, ``rejected.<reason>`` (the getter's);
        ``ticks``, ``heartbeats_judged``, ``heartbeats_recorded``, ``rows_written``,
        ``unknown_amphora``,
        ``not_recorded.<reason>``, ``status_changes``, ``store_errors``, ``tick_errors``,
        ``dropped``, ``failovers_started`` / ``_succeeded`` / ``_failed`` /
        ``_held_back`` / ``_waiting`` / ``_held_overloaded`` (stale amphorae not
        failed over because heartbeats were lost within ``heartbeat_timeout``),
        ``stale_not_failed_over``, ``socket_drops`` (datagrams the kernel dropped
        on the receive socket, Linux only), ``overloads`` (stale checks that found
        heartbeats lost); gauges
        ``tick_seconds`` and ``lag_seconds`` (last tick), ``max_lag_seconds``,
        ``backlog``, and the receive-to-commit delay ``delay_p99_seconds`` and
        ``delay_max_seconds``.
        """
        out: dict[str, float] = {}
        if self.getter is not None:
            out.update(self.getter.counters)
        for name in (
            "ticks",
            "heartbeats_judged",
            "heartbeats_recorded",
            "rows_written",
            "unknown_amphora",
            "status_changes",
            "store_errors",
            "tick_errors",
            "dropped",
            "failovers_started",
            "failovers_succeeded",
            "failovers_failed",
            "failovers_held_back",
            "failovers_waiting",
            "failovers_held_overloaded",
            "stale_not_failed_over",
            "socket_drops",
            "overloads",
        ):
            out[name] = self._counts[name]
        for name, value in sorted(self._counts.items()):
            if name.startswith("not_recorded."):
                out[name] = value
        out.update(self._gauges)
        out["backlog"] = self.backlog
        out["delay_p99_seconds"] = self.delays.quantile(0.99)
        out["delay_max_seconds"] = self.delays.maximum
        return out


# --- command line ----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, *, key_options: bool = True) -> None:
    """Add the ``manager`` command's options to ``parser``.

    ``key_options`` adds ``--key`` and ``--key-file`` too (leave them out when
    the caller's parser has its own); the ``AMPHORA_HEARTBEAT_KEY`` environment
    variable is read when neither is given.
    """
    if key_options:
        group = parser.add_mutually_exclusive_group()
        group.add_argument(
            "--key",
            action="append",
            metavar="K",
            help="heartbeat key; repeat for a key ring (prefer --key-file or"
            " $AMPHORA_HEARTBEAT_KEY)",
        )
        group.add_argument(
            "--key-file",
            metavar="F",
            help="file holding the key as UTF-8; one trailing newline is ignored; several"
            " lines make a key ring",
        )
    parser.add_argument(
        "--db",
        required=True,
        metavar="URL",
        help="sqlite:///PATH (sqlite:////abs/path) or postgresql://USER@HOST:PORT/DB",
    )
    parser.add_argument(
        "--bind",
        default="127.0.0.1:5555",
        metavar="IP:PORT",
        help="address to receive on; default %(default)s",
    )
    parser.add_argument(
        "--failover-command",
        metavar="CMD",
        help="run CMD AMPHORA_ID for each stale amphora (exit 0: done; else retried)",
    )
    timing = (
        ("--heartbeat-timeout", 60.0, "seconds of silence before an amphora is stale"),
        ("--heartbeat-interval", 10.0, "the amphorae's heartbeat interval, seconds"),
        ("--health-check-interval", 3.0, "seconds between stale checks"),
        ("--tick", 0.1, "seconds between database writes"),
    )
    for option, default, text in timing:
        parser.add_argument(
            option, type=float, default=default, metavar="S", help=text + "; default %(default)s"
        )
    parser.add_argument(
        "--failover-threshold",
        type=int,
        metavar="N",
        help="fail none over when N amphorae are stale at once (storm guard); default none",
    )
    parser.add_argument(
        "--failover-threads",
        type=int,
        default=10,
        metavar="N",
        help="most failovers at once; default %(default)s",
    )
    parser.add_argument(
        "--sock-rlimit",
        type=int,
        default=0,
        metavar="BYTES",
        help="SO_RCVBUF in bytes; default 0, the system's",
    )


def tune_gc() -> None:
    """Make the cyclic garbage collector run less often, for a process that runs a manager.

    A manager allocates a few dozen short-lived objects per heartbeat; with the
    default thresholds the collector's passes cost about a quarter of its CPU
    time (measured by the benchmark).  Heartbeat trees hold no cycles, so rarer
    passes free nothing later.  The command line and the benchmark call this;
    a library caller decides for its own process.
    """
    gc.set_threshold(50_000, 20, 100)


def _parse_keys(text: str) -> str | list[str] | None:
    # The command line's own key-file format; an empty key is refused (None).
    from .__main__ import CommandError, parse_keys  # noqa: PLC0415  (__main__ loads this module)

    try:
        key = parse_keys(text)
    except CommandError:
        return None
    return key if isinstance(key, str) else [str(k) for k in key]


def _read_key(args: argparse.Namespace) -> str | list[str] | None:
    """Return the key from ``--key``, ``--key-file`` or ``AMPHORA_HEARTBEAT_KEY``, or None.

    The command line's conventions: ``--key`` repeated makes a key ring; a key
    file or the variable holds one key a line (one trailing newline ignored).
    """
    keys = getattr(args, "key", None)
    if keys:
        return list(keys) if len(keys) > 1 else str(keys[0])
    key_file = getattr(args, "key_file", None)
    if key_file:
        with open(key_file, encoding="utf-8") as f:
            return _parse_keys(f.read())
    text = os.environ.get("AMPHORA_HEARTBEAT_KEY")
    return None if text is None else _parse_keys(text)


def run(args: argparse.Namespace) -> int:
    """Run the ``manager`` command until SIGINT or SIGTERM; return the exit status.

    Prints ``listening on IP:PORT`` once bound and the store answers, and the
    counters as one JSON line at the end (exit status 0).  A missing key or a
    bad option is exit status 2; an unreachable store, 1.
    """
    try:
        key = _read_key(args)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: cannot read the key file: {exc}", file=sys.stderr)
        return 2
    if not key:
        print(
            "error: no key (or an empty one): give --key-file F, $AMPHORA_HEARTBEAT_KEY or --key K",
            file=sys.stderr,
        )
        return 2
    try:
        ip, port = parse_address(args.bind)
    except ValueError as exc:
        print(f"error: --bind: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(args, key, ip, port)
    except StoreError as exc:
        print(f"error: the database is unreachable: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot receive on {args.bind}: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, key: str | list[str], ip: str, port: int) -> int:
    store = open_store(args.db)
    for attempt in range(2):
        try:
            store.create_schema()  # only the tables missing: nothing on an Octavia database
            break
        except StoreError:
            if attempt:
                raise  # another manager creating the schema at the same time wins once
    store.ping()
    tune_gc()
    getter = UDPStatusGetter(key, ip, port, timeout=0.2, rcvbuf=args.sock_rlimit or None)
    failover = FailoverCommand(args.failover_command) if args.failover_command else None
    manager = HealthManager(
        getter,
        store,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout,
        health_check_interval=args.health_check_interval,
        failover_threshold=args.failover_threshold,
        failover=failover,
        failover_threads=args.failover_threads,
        tick=args.tick,
    )

    def on_signal(signum: int, frame: object) -> None:
        manager.stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    host, bound = getter.address
    print(f"listening on {host}:{bound}", flush=True)
    try:
        manager.run()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        manager.close(wait=False)
        getter.close()
        store.close()
    print(json.dumps(dict(manager.counters), sort_keys=True), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m amphora_heartbeat.manager`` (the same as the ``manager`` command)."""
    parser = argparse.ArgumentParser(
        prog="python -m amphora_heartbeat.manager",
        description="Receive heartbeats, write them to the database in batches, fail over"
        " stale amphorae.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())


# --- the demo ----------------------------------------------------------------------------
# ``python -m amphora_heartbeat demo``: a simulated fleet sends to a manager over
# 127.0.0.1; the manager writes a SQLite file (in a temporary folder unless --db
# names a database) and the table shown is read back from that database.


class _DemoTraffic:
    """The demo fleet's heartbeats: members go DOWN and come back, one amphora falls silent."""

    def __init__(self, fleet: Sequence[Any], *, seed: int, interval: float, start: float,
                 duration: float) -> None:  # fmt: skip
        self.fleet = fleet
        self.rng = random.Random(seed)
        self.interval = interval
        self.rounds = 0
        self.seq = {a.amphora_id: 0 for a in fleet}
        self.down_until: dict[str, float] = {}
        # The last amphora falls silent early enough to go stale within the run.
        self.silent = fleet[-1].amphora_id if len(fleet) > 1 else None
        self.silent_at = start + min(4 * interval, duration / 4)

    def messages(self, now: float) -> list[dict[str, Any]]:
        """Return this round's heartbeat of every amphora still talking."""
        members = [m for a in self.fleet for p in a.pools for m in p.members]
        first = self.rounds == 0
        self.rounds += 1
        if members and (first or self.rng.random() < 0.4):
            member = members[0] if first else self.rng.choice(members)
            self.down_until[member] = now + self.interval * self.rng.randint(2, 5)
        out = []
        for amphora in self.fleet:
            if amphora.amphora_id == self.silent and now >= self.silent_at:
                continue
            member_status = {
                m: ("DOWN" if self.down_until.get(m, 0) > now else "UP")
                for p in amphora.pools
                for m in p.members
            }
            pool_status = {
                p.pool_id: "DOWN" if all(member_status[m] == "DOWN" for m in p.members) else "UP"
                for p in amphora.pools
            }
            stats = {
                lst.listener_id: ListenerStats(
                    bytes_in=self.rng.randrange(100_000),
                    bytes_out=self.rng.randrange(400_000),
                    active_connections=self.rng.randrange(50),
                    total_connections=self.rng.randrange(100),
                )
                for lst in amphora.listeners
            }
            self.seq[amphora.amphora_id] += 1
            out.append(
                amphora.message(
                    seq=self.seq[amphora.amphora_id],
                    stats=stats,
                    pool_status=pool_status,
                    member_status=member_status,
                )
            )
        return out


def _demo_table(
    fleet: Sequence[Any],
    store: Any,
    manager: HealthManager,
    traffic: _DemoTraffic,
    failed_over: Collection[str],
    *,
    now: float,
    start: float,
    duration: float,
    where: str,
) -> str:
    """Return the demo's status table, every status read back from the database."""
    ids = [a.amphora_id for a in fleet]
    views = store.read_views(ids)
    health = store.read_health()
    c = manager.counters
    lines = [
        f"amphora_heartbeat demo: {len(fleet)} amphorae -> {where}   "
        f"t = {now - start:4.1f} s of {duration:g} s",
        f"heartbeats received {c['received']}, accepted {c['accepted']}, "
        f"rejected {c['received'] - c['accepted']}; ticks {c['ticks']}, rows written "
        f"{c['rows_written']}; failed over {len(failed_over)}",
        "",
        f"{'LOAD BALANCER / LISTENER / POOL / MEMBER':<44}{'STATUS':<11}AMPHORA",
    ]
    for amphora in fleet:
        aid = amphora.amphora_id
        view = views[aid].view if aid in views else {}
        row = health.get(aid)
        if aid in failed_over:
            state = "STALE: failed over (simulated)"
        elif row is None:
            state = "no health row yet"
        else:
            state = f"last_update {now - row[0]:4.1f} s ago"
            if aid == traffic.silent and now >= traffic.silent_at:
                state = "silent, " + state
        lines.append(
            f"{'load balancer ' + amphora.load_balancer_id[:8]:<44}"
            f"{view.get('operating_status', '?'):<11}{aid[:8]} seq {traffic.seq[aid]:<4} {state}"
        )
        listeners = view.get("listeners", {})
        pools = view.get("pools", {})
        for listener in amphora.listeners:
            status = listeners.get(listener.listener_id, {}).get("operating_status", "?")
            lines.append(f"{'  listener ' + listener.listener_id[:8]:<44}{status}")
            for pool in listener.pools:
                pv = pools.get(pool.pool_id, {"members": {}})
                lines.append(f"{'    pool ' + pool.pool_id[:8]:<44}{pv.get('operating_status')}")
                for member in pool.members:
                    status = pv["members"].get(member, {}).get("operating_status", "?")
                    lines.append(f"{'      member ' + member[:8]:<44}{status}")
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    """Run ``demo``: a simulated fleet → a manager → a database, shown live from the database.

    ``args`` has ``amphorae``, ``duration`` and ``interval`` (seconds), ``seed`` and
    ``db`` (None: a SQLite file in a temporary folder, removed at the end).
    """
    from .sender import UDPStatusSender, format_address  # noqa: PLC0415 (the demo only)
    from .testing import make_fleet  # noqa: PLC0415

    if args.amphorae < 1 or args.duration <= 0 or args.interval <= 0:
        print("error: --amphorae, --duration and --interval must be positive", file=sys.stderr)
        return 2
    out = sys.stdout
    live = out.isatty()
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    with contextlib.ExitStack() as stack:
        url = getattr(args, "db", None)
        if not url:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="amphora-demo-"))
            url = f"sqlite:///{folder}/demo.db"
        store = open_store(url)
        stack.callback(store.close)
        store.create_schema()
        fleet = make_fleet(args.amphorae, seed=args.seed, members=3)
        if len(store.read_views([a.amphora_id for a in fleet])) < len(fleet):
            store.add_fleet(fleet)
        key = secrets.token_hex(16)  # the demo's own, never shown
        getter = stack.enter_context(UDPStatusGetter(key, "127.0.0.1", 0, timeout=0.05))
        sender = stack.enter_context(UDPStatusSender(key, [format_address(getter.address)]))
        failed_over: list[str] = []
        interval = args.interval
        manager = HealthManager(
            getter,
            store,
            heartbeat_interval=10 * interval,
            # Stale after three missed heartbeats (Octavia: 60 s at a 10 s interval).
            heartbeat_timeout=3 * interval,
            health_check_interval=interval / 2,
            failover=failed_over.append,
            tick=0.05,
        )
        stack.callback(manager.close)
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        stack.callback(lambda: [signal.signal(s, h) for s, h in old.items()])
        start = time.time()
        end = start + args.duration
        traffic = _DemoTraffic(
            fleet, seed=args.seed, interval=interval, start=start, duration=args.duration
        )
        where = f"{url if getattr(args, 'db', None) else 'a SQLite file in a temporary folder'}"
        next_round = start
        next_draw = start + (0.25 if live else 1.0)
        now = start
        while now < end and not stopping:
            if now >= next_round:
                for message in traffic.messages(now):
                    sender.dosend(message)
                next_round += interval
            manager.step(now)
            select.select([getter.fileno()], [], [], 0.05)
            now = time.time()
            if now >= next_draw:
                table = _demo_table(
                    fleet, store, manager, traffic, failed_over,
                    now=now, start=start, duration=args.duration, where=where,
                )  # fmt: skip
                if live:
                    out.write("\x1b[H\x1b[2J" + table + "\n")
                else:
                    out.write(f"--- snapshot at {now - start:.1f} s\n{table}\n")
                out.flush()
                next_draw += 0.25 if live else 1.0
        manager.step(time.time())
        manager.wait_failovers(5)
        manager.step(time.time())
        now = time.time()
        table = _demo_table(
            fleet, store, manager, traffic, failed_over,
            now=now, start=start, duration=args.duration, where=where,
        )  # fmt: skip
        out.write(("\x1b[H\x1b[2J" if live else "") + f"=== final, after {now - start:.1f} s\n")
        out.write(table + "\n")
        out.flush()
    return 0
