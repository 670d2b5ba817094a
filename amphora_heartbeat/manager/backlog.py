"""Receiving into a backlog: heartbeats wait here between the socket and a tick.

The receiving thread (or :func:`drain`, in the caller's thread) appends to a
deque, which needs no lock for one appender and one taker.  A tick takes a batch
(:meth:`Backlog.take`); a batch whose write failed is put back in front
(:meth:`Backlog.put_back`) and retried whole.  Beyond ``max_backlog`` the oldest
heartbeats are dropped and counted: a manager that cannot write must not grow
without bound.
"""

from __future__ import annotations

import collections
import itertools
import logging
import select
import time
from collections.abc import Callable
from typing import Any

from ..errors import HeartbeatError
from .judge import Entry

__all__ = ["Backlog", "drain", "receive_forever"]

log = logging.getLogger("amphora_heartbeat.manager")


class Backlog:
    """Heartbeats received and not yet committed, with their sources, oldest first."""

    def __init__(self, *, max_batch: int, max_backlog: int) -> None:
        """Hold at most ``max_backlog`` heartbeats; hand out at most ``max_batch`` at once."""
        self.max_batch = max_batch
        self.max_backlog = max_backlog
        #: New heartbeats; appended by the receiver (any one thread).
        self.queue: collections.deque[Entry] = collections.deque()
        self._held: list[Entry] = []
        #: Heartbeats dropped so far (backlog full, or a tick that could not be written).
        self.dropped = 0

    def __len__(self) -> int:
        """Return how many heartbeats wait."""
        return len(self.queue) + len(self._held)

    @property
    def full_batch_waiting(self) -> bool:
        """Tell whether a whole batch is already waiting (no reason to pause)."""
        return len(self.queue) >= self.max_batch

    def take(self) -> list[Entry]:
        """Return the next batch: held heartbeats first, then new ones, oldest first."""
        batch = self._held
        queue = self.queue
        while queue and len(batch) < self.max_batch:
            batch.append(queue.popleft())
        if len(batch) > self.max_backlog:
            excess = len(batch) - self.max_backlog
            log.warning("backlog full: dropped the %d oldest heartbeats", excess)
            self.drop(excess)
            del batch[:excess]
        self._held = []
        return batch

    def hold(self) -> None:
        """Trim to ``max_backlog`` while no tick writes (the store is failing)."""
        if len(self) > self.max_backlog:
            self._held = self.take()

    def put_back(self, batch: list[Entry]) -> None:
        """Return a batch whose write failed to the front of the line."""
        self._held = batch + self._held

    def drop(self, n: int) -> None:
        """Count ``n`` heartbeats dropped without being written."""
        self.dropped += n

    def pending_since(self, cutoff: float) -> set[str]:
        """Return the amphorae with a heartbeat waiting that was received at or after ``cutoff``."""
        return {
            h.amphora_id
            for h, _ in itertools.chain(self._held, list(self.queue))
            if h.recv_time is not None and h.recv_time >= cutoff
        }


def drain(getter: Any, backlog: Backlog) -> None:
    """Append every datagram ``getter`` has ready (at most a batch), without waiting."""
    for _ in range(backlog.max_batch):
        try:
            ready, _, _ = select.select([getter.fileno()], [], [], 0)
        except (OSError, ValueError):
            return
        if not ready:
            return
        try:
            entry = getter.dorecv()
        except HeartbeatError:
            continue  # counted by the getter
        except (TimeoutError, OSError):
            return
        backlog.queue.append(entry)


def receive_forever(getter: Any, backlog: Backlog, stopping: Callable[[], bool]) -> None:
    """Receive into ``backlog`` until ``stopping()`` or the getter is closed (a thread's body)."""
    append = backlog.queue.append
    while not stopping():
        try:
            entry = getter.dorecv()  # (heartbeat, source address): kept as received
        except (TimeoutError, HeartbeatError):
            continue
        except OSError:
            if stopping() or getter.closed:
                return
            log.exception("receiving failed; retrying")
            time.sleep(0.1)
            continue
        append(entry)
