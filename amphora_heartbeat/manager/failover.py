"""Running failovers: claim, run in worker threads, record the outcome in the store.

A failover is any callable taking an amphora id: returning means done (the
amphora's ``amphora_health`` row is deleted), raising means failed (``busy`` is
cleared, so the next stale check retries it).  :class:`FailoverCommand` runs a
command line, e.g. Octavia's ``openstack loadbalancer amphora failover``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence

from ..store import Store

__all__ = ["Failover", "FailoverCommand", "FailoverRunner"]

log = logging.getLogger("amphora_heartbeat.manager")

#: A failover: called with the amphora id; returning means done, raising means failed.
Failover = Callable[[str], object]


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


class FailoverRunner:
    """Start claimed failovers in a thread pool and apply their outcomes to the store.

    Outcomes are queued by the worker threads and applied by the manager's own
    thread (:meth:`apply_finished`), since a store is used by one thread.
    """

    def __init__(
        self, failover: Failover | None, threads: int, counts: collections.Counter[str]
    ) -> None:
        """Run ``failover`` in up to ``threads`` threads; count into ``counts``."""
        self.failover = failover
        self.threads = threads
        self.counts = counts
        self.running: set[str] = set()
        self._finished: collections.deque[tuple[str, bool]] = collections.deque()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._unhandled: set[str] = set()

    def keep_unhandled(self, stale: Sequence[str]) -> None:
        """Forget the unhandled amphorae no longer stale (each silence is logged once)."""
        self._unhandled.intersection_update(stale)

    def start(
        self, store: Store, stale: Sequence[str], cutoff: float, *, now: float, lease_cutoff: float
    ) -> None:
        """Claim as many of ``stale`` as threads are free, and start their failovers.

        A claim is a lease stamped ``now``; one made before ``lease_cutoff`` by a
        manager that never finished may be taken over (never one running here).
        """
        if self.failover is None:
            self._log_unhandled(stale)
            return
        stale = [a for a in stale if a not in self.running]
        free = self.threads - len(self.running)
        if free <= 0:
            self.counts["failovers_waiting"] += len(stale)
            return
        # Claim only what can start now: a claimed amphora is busy until done.
        claimed = store.claim_failovers(stale[:free], cutoff, now=now, lease_cutoff=lease_cutoff)
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self.threads, thread_name_prefix="amphora-failover"
            )
        for amphora_id in claimed:
            log.warning("amphora %s is stale: failing it over", amphora_id)
            self.counts["failovers_started"] += 1
            self.running.add(amphora_id)
            self._pool.submit(self._run, amphora_id)

    def _log_unhandled(self, stale: Sequence[str]) -> None:
        fresh = [a for a in stale if a not in self._unhandled]
        if fresh:
            self.counts["stale_not_failed_over"] += len(fresh)
            self._unhandled.update(fresh)
            log.warning(
                "%d amphorae stale and no failover configured: %s",
                len(fresh),
                ", ".join(fresh[:10]) + (" ..." if len(fresh) > 10 else ""),
            )

    def _run(self, amphora_id: str) -> None:
        if self.failover is None:  # pragma: no cover - start() runs none without one
            return
        try:
            self.failover(amphora_id)
        except Exception:
            log.exception("failover of amphora %s failed; it will be retried", amphora_id)
            self._finished.append((amphora_id, False))
        else:
            log.info("failover of amphora %s done", amphora_id)
            self._finished.append((amphora_id, True))

    def apply_finished(self, store: Store) -> None:
        """Record every finished failover in ``store``; a :class:`StoreError` stops early."""
        finished = self._finished
        while finished:
            amphora_id, ok = finished[0]
            store.finish_failover(amphora_id, succeeded=ok)
            finished.popleft()
            self.running.discard(amphora_id)
            self.counts["failovers_succeeded" if ok else "failovers_failed"] += 1

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for running failovers to end; True if all did."""
        deadline = time.monotonic() + timeout
        while len(self._finished) < len(self.running):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, *, wait: bool) -> None:
        """Shut the pool down, waiting for running failovers if ``wait``."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None
