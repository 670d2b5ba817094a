"""Running failovers: claim, run in worker threads, record the outcome in the store.

A failover is any callable taking an amphora id (and the keyword
``load_balancer_id`` if its signature names it): returning means done (the
amphora's ``amphora_health`` row is deleted), raising means failed (``busy`` is
cleared, and this manager tries it again once ``retry_after`` seconds have
passed).  :class:`FailoverCommand` runs a command line, e.g. Octavia's
``openstack loadbalancer amphora failover {amphora_id}``, with a timeout.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import inspect
import logging
import os
import shlex
import signal
import string
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

from ..store import Store

__all__ = ["DEFAULT_FAILOVER_TIMEOUT", "Failover", "FailoverCommand", "FailoverRunner"]

log = logging.getLogger("amphora_heartbeat.manager")

#: A failover: called with the amphora id; returning means done, raising means failed.
#: One whose signature names ``load_balancer_id`` gets it as a keyword too.
Failover = Callable[..., object]

#: Seconds a failover command may run (Octavia's API answers at once and fails
#: over in the background; ``--wait`` makes ``openstack`` wait for the flow).
DEFAULT_FAILOVER_TIMEOUT = 300.0

_PLACEHOLDERS = ("amphora_id", "load_balancer_id")
# Characters of a command's output kept in the log line of a failure.
_OUTPUT_TAIL = 300


def _placeholders(arg: str) -> set[str]:
    """Return the placeholders ``arg`` uses; raise ValueError for any other field."""
    try:
        fields = [(f, s, c) for _, f, s, c in string.Formatter().parse(arg) if f is not None]
    except ValueError as exc:
        raise ValueError(f"the failover command: {exc} (write {{{{ or }}}} for a brace)") from None
    for name, spec, conversion in fields:
        if name not in _PLACEHOLDERS or spec or conversion:
            raise ValueError(
                f"the failover command: unknown placeholder {{{name}}};"
                " use {amphora_id} or {load_balancer_id}"
            )
    return {name for name, _, _ in fields}


class FailoverCommand:
    """Run a command line per failover (``--failover-command``).

    The command is split like a shell command line (no shell runs it).  Each
    argument may hold ``{amphora_id}`` and ``{load_balancer_id}``
    (``{{``/``}}`` for a literal brace); a command without placeholders gets
    the amphora id appended as its last argument.  Exit status 0 means done;
    any other status, a command that cannot be started, or one still running
    after ``timeout`` seconds (its process group is killed) raises, which the
    manager counts as a failed failover.  The command's output (stdout and
    stderr together) is kept off the manager's own; a failure's message ends
    with its last lines.

    :param command: the command line, or its arguments as a sequence.
    :param timeout: seconds a run may take; None: no limit.
    :raises ValueError: an empty command, or an unknown placeholder.
    """

    def __init__(
        self, command: str | Sequence[str], *, timeout: float | None = DEFAULT_FAILOVER_TIMEOUT
    ) -> None:
        self.argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not self.argv:
            raise ValueError("the failover command is empty")
        used = set().union(*(_placeholders(arg) for arg in self.argv))
        #: Whether the command uses placeholders (else the amphora id is appended).
        self.templated = bool(used)
        self._needs_load_balancer = "load_balancer_id" in used
        self.timeout = timeout

    def argv_for(self, amphora_id: str, load_balancer_id: str | None = None) -> list[str]:
        """Return the arguments run for one amphora (and its load balancer)."""
        if not self.templated:
            return [*(arg.format() for arg in self.argv), amphora_id]
        if load_balancer_id is None and self._needs_load_balancer:
            raise ValueError("the failover command uses {load_balancer_id}, and none was given")
        values = {"amphora_id": amphora_id, "load_balancer_id": load_balancer_id or ""}
        return [arg.format(**values) for arg in self.argv]

    def __call__(self, amphora_id: str, load_balancer_id: str | None = None) -> None:
        """Run the command for ``amphora_id``; raise unless it exits 0 within the timeout.

        :raises subprocess.CalledProcessError: a non-zero exit status.
        :raises subprocess.TimeoutExpired: still running after ``timeout`` seconds.
        :raises OSError: the command cannot be started.
        """
        argv = self.argv_for(amphora_id, load_balancer_id)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed whole on a timeout
        )
        try:
            output, _ = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            output, _ = proc.communicate()
            raise subprocess.TimeoutExpired(argv, self.timeout or 0.0, output) from None
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, argv, output)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The whole group: a shell script's children would outlive it otherwise.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _describe(exc: BaseException) -> str:
    """Return one line for a failed failover: the error and the tail of the command's output."""
    output = getattr(exc, "output", None)
    if not isinstance(output, bytes) or not output.strip():
        return str(exc)
    tail = output.decode("utf-8", "replace").strip()[-_OUTPUT_TAIL:]
    return f"{exc}; output ends {tail!r}"


def _takes_load_balancer(failover: Failover | None) -> bool:
    """Return whether ``failover`` accepts the keyword ``load_balancer_id``."""
    if failover is None:
        return False
    try:
        parameters = inspect.signature(failover).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
        return False
    return any(
        p.name == "load_balancer_id" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters
    )


class FailoverRunner:
    """Start claimed failovers in a thread pool and apply their outcomes to the store.

    Outcomes are queued by the worker threads and applied by the manager's own
    thread (:meth:`apply_finished`), since a store is used by one thread.  An
    amphora whose failover failed is not started again by this runner until
    ``retry_after`` seconds after the failure was recorded.
    """

    def __init__(
        self,
        failover: Failover | None,
        threads: int,
        counts: collections.Counter[str],
        *,
        retry_after: float = 60.0,
    ) -> None:
        """Run ``failover`` in up to ``threads`` threads; count into ``counts``."""
        self.failover = failover
        self.threads = threads
        self.counts = counts
        #: Seconds after a failed failover before this runner tries that amphora again.
        self.retry_after = retry_after
        self.running: set[str] = set()
        self._finished: collections.deque[tuple[str, bool]] = collections.deque()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._unhandled: set[str] = set()
        self._failed_at: dict[str, float] = {}
        self._pass_load_balancer = _takes_load_balancer(failover)

    def keep_unhandled(self, stale: Sequence[str]) -> None:
        """Forget the unhandled amphorae no longer stale (each silence is logged once)."""
        self._unhandled.intersection_update(stale)

    def resize(self, threads: int) -> None:
        """Allow ``threads`` failovers at once from now on; running ones go on."""
        if threads != self.threads and self._pool is not None:
            # A pool's size is fixed: the next start makes one of the new size.
            self._pool.shutdown(wait=False)
            self._pool = None
        self.threads = threads

    def start(
        self,
        store: Store,
        stale: Sequence[str],
        cutoff: float,
        *,
        now: float,
        load_balancers: Mapping[str, str] | None = None,
        lease_cutoff: float | None = None,
    ) -> None:
        """Claim as many of ``stale`` as threads are free, and start their failovers.

        ``load_balancers`` maps amphora ids to their load balancer's id, handed
        to a failover that takes ``load_balancer_id``.  A claim is a lease
        stamped ``now``; one made before ``lease_cutoff`` by a manager that never
        finished may be taken over (never one running here).
        """
        if self.failover is None:
            self._log_unhandled(stale)
            return
        stale = [a for a in self._due(stale, now) if a not in self.running]
        if not stale:
            return
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
        lbs = load_balancers or {}
        for amphora_id in claimed:
            log.warning(
                "amphora %s is stale: failing it over",
                amphora_id,
                extra={"event": "failover_started", "amphora_id": amphora_id},
            )
            self.counts["failovers_started"] += 1
            self.running.add(amphora_id)
            self._pool.submit(self._run, amphora_id, lbs.get(amphora_id))

    def _due(self, stale: Sequence[str], now: float) -> Sequence[str]:
        """Return ``stale`` without the amphorae whose failed failover is too recent to retry."""
        failed = self._failed_at
        if not failed:
            return stale
        for amphora_id, at in list(failed.items()):
            if now >= at + self.retry_after:
                del failed[amphora_id]
        return [a for a in stale if a not in failed]

    def _log_unhandled(self, stale: Sequence[str]) -> None:
        fresh = [a for a in stale if a not in self._unhandled]
        if fresh:
            self.counts["stale_not_failed_over"] += len(fresh)
            self._unhandled.update(fresh)
            log.warning(
                "%d amphorae stale and no failover configured: %s",
                len(fresh),
                ", ".join(fresh[:10]) + (" ..." if len(fresh) > 10 else ""),
                extra={"event": "stale_not_failed_over", "count": len(fresh)},
            )

    def _run(self, amphora_id: str, load_balancer_id: str | None) -> None:
        failover = self.failover
        if failover is None:  # pragma: no cover - start() runs none without one
            return
        try:
            if self._pass_load_balancer:
                failover(amphora_id, load_balancer_id=load_balancer_id)
            else:
                failover(amphora_id)
        except (subprocess.SubprocessError, OSError) as exc:
            log.error("failover of amphora %s failed: %s", amphora_id, _describe(exc))
            self._finished.append((amphora_id, False))
        except Exception:
            log.exception(
                "failover of amphora %s failed",
                amphora_id,
                extra={"event": "failover_failed", "amphora_id": amphora_id},
            )
            self._finished.append((amphora_id, False))
        else:
            log.info(
                "failover of amphora %s done",
                amphora_id,
                extra={"event": "failover_succeeded", "amphora_id": amphora_id},
            )
            self._finished.append((amphora_id, True))

    def apply_finished(self, store: Store, now: float) -> None:
        """Record every finished failover in ``store``; a :class:`StoreError` stops early.

        ``now`` (seconds since the epoch) is when a failure is recorded: the
        amphora is retried ``retry_after`` seconds later.
        """
        finished = self._finished
        while finished:
            amphora_id, ok = finished[0]
            store.finish_failover(amphora_id, succeeded=ok)
            finished.popleft()
            self.running.discard(amphora_id)
            self.counts["failovers_succeeded" if ok else "failovers_failed"] += 1
            if not ok:
                self._failed_at[amphora_id] = now
                log.warning(
                    "amphora %s: failover failed; retried in %ss", amphora_id, self.retry_after
                )

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
