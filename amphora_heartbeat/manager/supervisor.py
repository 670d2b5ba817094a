"""Several manager processes on one address: a parent that starts, watches and stops them.

One process is bound to one core by the interpreter lock; ``manager --workers N``
runs N full managers on one database, each receiving on the same address with
``SO_REUSEPORT``.  Linux spreads datagrams over the sockets of such a group by a
hash of the source address and port, so each amphora's heartbeats reach one
worker, in order.  The exactly-once failover claim and the storm threshold
already hold across processes sharing a database.

:class:`Supervisor` is the parent: it starts the workers (any command line that
prints ``listening on IP:PORT`` once ready and its counters as one JSON object
line when it stops), restarts a worker that dies, forwards SIGHUP, stops them all
on :meth:`Supervisor.stop` (SIGTERM: each commits its current tick first), and
sums their counters.  It neither prints nor installs signal handlers: the caller
does, and hands lines and signals to it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO

from .peers import ENVIRONMENT, PeerBoard, make_board, remove_board
from .wake import WakePipe

__all__ = ["Supervisor", "reserve_port", "sum_counters"]

log = logging.getLogger("amphora_heartbeat.manager")

#: Seconds before a dead worker is started again; doubled for each quick death, up to
#: :data:`MAX_RESTART_DELAY`.
RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0
# A worker that lived this long (seconds) counts as healthy: its next death waits
# only RESTART_DELAY again.
_HEALTHY_AFTER = 30.0

#: Counters that are not added up over workers but taken at their largest.
_MAXIMA = ("delay_p99_seconds", "delay_max_seconds", "max_lag_seconds", "tick_seconds",
           "lag_seconds", "last_commit_seconds", "stale_amphorae")  # fmt: skip


def reserve_port(ip: str, port: int) -> socket.socket:
    """Bind a ``SO_REUSEPORT`` socket to ``ip:port`` (0: a free port) for workers to share.

    Keep it until the workers listen, then close it.  It is connected to a
    loopback port nobody sends from, so meanwhile it takes none of the group's
    datagrams (Linux prefers the unconnected members).
    """
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((ip, port))
        sock.connect(("::1" if family == socket.AF_INET6 else "127.0.0.1", 9))
    except OSError:
        sock.close()
        raise
    return sock


def sum_counters(each: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Add up the workers' counters; delays and durations are the largest of any worker.

    A worker's p99 is exact for its own heartbeats; the largest is an upper bound
    of the whole's p99, never an underestimate.
    """
    total: dict[str, float] = {}
    for counters in each:
        for name, value in counters.items():
            if name in _MAXIMA:
                total[name] = max(total.get(name, 0.0), value)
            else:
                total[name] = total.get(name, 0) + value
    return total


class _Worker:
    """One worker process and what it said."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[str] | None = None
        self.readers: list[threading.Thread] = []
        self.started = 0.0
        self.ready = threading.Event()
        self.counters: dict[str, float] | None = None
        self.delay = RESTART_DELAY
        self.restart_at: float | None = None


class Supervisor:
    """Run ``workers`` copies of ``argv`` and keep them running until :meth:`stop`.

    :param argv: the worker's command line.
    :param workers: how many to run (at least 1).
    :param on_line: called with (worker index, line, True if from stderr) for each
        line a worker prints other than its ready line and its counters; called from
        reader threads.
    :param env: the workers' environment (None: this process's).
    """

    def __init__(
        self,
        argv: Sequence[str],
        workers: int,
        *,
        on_line: Callable[[int, str, bool], None] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.argv = list(argv)
        self.on_line = on_line
        self.env = dict(env) if env is not None else None
        self.workers = [_Worker(i) for i in range(workers)]
        #: Workers started again after they died.
        self.restarts = 0
        self._stopping = False
        self._wake = WakePipe()
        self._finished: list[dict[str, float]] = []
        # What the workers tell each other before their stale checks (.peers).
        self._board = make_board(workers)

    def start(self, timeout: float = 30.0) -> bool:
        """Start every worker; return True once all said they listen.

        Return False as soon as one exits before that, or at ``timeout`` seconds.
        """
        for worker in self.workers:
            self._spawn(worker)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(w.ready.is_set() for w in self.workers):
                return True
            if any(w.proc is not None and w.proc.poll() is not None for w in self.workers):
                return False
            self._wake.wait(0.05)
        return False

    def _spawn(self, worker: _Worker) -> None:
        worker.ready.clear()
        worker.counters = None
        worker.started = time.monotonic()
        worker.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if self.on_line is not None else None,
            text=True,
            env={
                **(os.environ if self.env is None else self.env),
                ENVIRONMENT: PeerBoard.environ_value(self._board, worker.index, len(self.workers)),
            },
        )
        worker.readers = [
            threading.Thread(target=self._read, args=(worker, worker.proc), daemon=True)
        ]
        if worker.proc.stderr is not None:
            worker.readers.append(
                threading.Thread(
                    target=self._read_errors, args=(worker.index, worker.proc.stderr), daemon=True
                )
            )
        for reader in worker.readers:
            reader.start()

    def _read(self, worker: _Worker, proc: subprocess.Popen[str]) -> None:
        """Read one worker's output until it closes (a reader thread's body)."""
        if proc.stdout is None:  # pragma: no cover - started with stdout=PIPE
            return
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            if line.startswith("listening on ") and not worker.ready.is_set():
                worker.ready.set()
            elif line.startswith("{"):
                with contextlib.suppress(ValueError):
                    worker.counters = json.loads(line)
            elif self.on_line is not None:
                self.on_line(worker.index, line, False)
        self._wake.wake()

    def _read_errors(self, index: int, stream: IO[str]) -> None:
        """Hand each line of one worker's stderr to ``on_line`` (a reader thread's body)."""
        for raw in stream:
            if self.on_line is not None:
                self.on_line(index, raw.rstrip("\n"), True)

    def run(self) -> dict[str, float]:
        """Watch the workers until :meth:`stop`; return their counters added up."""
        while not self._stopping:
            self._wake.wait(0.5)
            self._tend(time.monotonic())
        return self._stop_all()

    def _tend(self, now: float) -> None:
        """Restart the workers that died, each after its delay."""
        for worker in self.workers:
            proc = worker.proc
            if proc is None or proc.poll() is None or self._stopping:
                continue
            if worker.restart_at is None:
                self._note_death(worker, proc.returncode, now)
            elif now >= worker.restart_at:
                worker.restart_at = None
                self.restarts += 1
                self._spawn(worker)

    def _note_death(self, worker: _Worker, status: int, now: float) -> None:
        if worker.counters is not None:
            self._finished.append(worker.counters)
        healthy = now - worker.started >= _HEALTHY_AFTER
        worker.delay = RESTART_DELAY if healthy else min(worker.delay * 2, MAX_RESTART_DELAY)
        worker.restart_at = now + worker.delay
        log.warning(
            "manager worker %d exited with status %s; starting it again in %.1fs",
            worker.index,
            status,
            worker.delay,
        )

    def signal_all(self, signum: int) -> None:
        """Send ``signum`` to every running worker (SIGHUP: reload)."""
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signum)

    def stop(self) -> None:
        """Ask :meth:`run` to stop the workers and return; safe from a signal handler."""
        self._stopping = True
        self._wake.wake()

    def _stop_all(self, timeout: float = 60.0) -> dict[str, float]:
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            proc = worker.proc
            if proc is None:
                continue
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for reader in worker.readers:
                reader.join(5.0)  # each ends at its pipe's end: the counters line is read
        finished = self._finished + [w.counters for w in self.workers if w.counters]
        total = sum_counters(finished)
        total["worker_restarts"] = self.restarts
        total["workers"] = len(self.workers)
        return total

    def close(self) -> None:
        """Release the wake-up pipe and the workers' shared board."""
        self._wake.close()
        remove_board(self._board)
