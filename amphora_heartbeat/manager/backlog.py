"""Receiving into a backlog: heartbeats wait here between the socket and a tick.

The receiving thread (or :func:`drain`, in the caller's thread) appends to a
deque, which needs no lock for one appender and one taker.  A tick takes a batch
(:meth:`Backlog.take`) and settles it once written (:meth:`Backlog.settle`);
what a failed write left is put back in front and retried.

The backlog is bounded in memory, not only in heartbeats: each heartbeat is
weighed in items (:func:`~.judge.items`: members, pools, listeners), and
everything received and not yet committed, the batch being written included,
stays under ``max_items``.  A heartbeat that would exceed it is refused on
arrival, one bigger than ``max_heartbeat_items`` alone is refused too (counted
``oversized_heartbeats``), and beyond ``max_backlog`` heartbeats the oldest are
dropped.  Refused and dropped heartbeats are counted (``dropped``); losing
heartbeats holds failovers for a while (:mod:`.losses`).
"""

from __future__ import annotations

import collections
import itertools
import logging
import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import HeartbeatError
from ..models import Heartbeat
from .judge import Entry, items

__all__ = ["Backlog", "Receiver", "drain", "receive_forever"]

log = logging.getLogger("amphora_heartbeat.manager")


def _weight(entries: Sequence[Entry]) -> int:
    return sum(e[2] for e in entries)


class Backlog:
    """Heartbeats received and not yet committed, with their sources and sizes, oldest first."""

    def __init__(
        self, *, max_batch: int, max_backlog: int, max_items: int, max_heartbeat_items: int
    ) -> None:
        """Hold at most ``max_backlog`` heartbeats and ``max_items`` items; hand out ``max_batch``.

        A heartbeat of more than ``max_heartbeat_items`` items is refused.
        """
        self.max_batch = max_batch
        self.max_backlog = max_backlog
        self.max_items = max_items
        self.max_heartbeat_items = max_heartbeat_items
        #: New heartbeats; appended by the receiver (any one thread).
        self.queue: collections.deque[Entry] = collections.deque()
        self._held: list[Entry] = []
        # Items appended (the appender's thread) and items settled or dropped
        # (the taker's): each counter has one writer, so no lock is needed.
        self._added = 0
        self._removed = 0
        self._trimmed = 0
        #: Heartbeats refused on arrival because the backlog was full (in items).
        self.refused = 0
        #: Heartbeats refused for their size alone (more than ``max_heartbeat_items``).
        self.oversized = 0

    def __len__(self) -> int:
        """Return how many heartbeats wait."""
        return len(self.queue) + len(self._held)

    @property
    def items(self) -> int:
        """Return the items held: received, not yet committed nor dropped."""
        return self._added - self._removed

    @property
    def dropped(self) -> int:
        """Return the heartbeats dropped so far (refused on arrival, or the oldest trimmed)."""
        return self._trimmed + self.refused

    @property
    def full_batch_waiting(self) -> bool:
        """Tell whether a whole batch is already waiting (no reason to pause)."""
        return len(self.queue) >= self.max_batch

    def append(self, heartbeat: Heartbeat, source: str | None) -> None:
        """Queue a received heartbeat, unless it is too big or the backlog is full (counted)."""
        size = items(heartbeat)
        if size > self.max_heartbeat_items:
            self.oversized += 1
        elif self._added - self._removed + size > self.max_items:
            self.refused += 1
        else:
            self._added += size
            self.queue.append((heartbeat, source, size))

    def take(self) -> list[Entry]:
        """Return the next batch: held heartbeats first, then new ones, oldest first."""
        batch = self._held
        queue = self.queue
        while queue and len(batch) < self.max_batch:
            batch.append(queue.popleft())
        if len(batch) > self.max_backlog:
            excess = len(batch) - self.max_backlog
            log.warning(
                "backlog full: dropped the %d oldest heartbeats",
                excess,
                extra={"event": "backlog_full", "count": excess},
            )
            self.drop(batch[:excess])
            del batch[:excess]
        self._held = []
        return batch

    def hold(self) -> None:
        """Trim to ``max_backlog`` while no tick writes (the store is failing)."""
        if len(self) > self.max_backlog:
            self._held = self.take()

    def settle(self, batch: Sequence[Entry], remaining: list[Entry]) -> None:
        """Release a written batch, putting ``remaining`` (not written) back in front."""
        self._removed += _weight(batch) - _weight(remaining)
        if remaining:
            self._held = remaining + self._held

    def drop(self, entries: Sequence[Entry]) -> None:
        """Release ``entries`` dropped without being written, and count them."""
        self._trimmed += len(entries)
        self._removed += _weight(entries)

    def oldest(self) -> float | None:
        """Return the receive time of the oldest heartbeat waiting, or None if none waits."""
        for entries in (self._held, self.queue):
            try:
                return entries[0][0].recv_time
            except IndexError:  # empty (the receiver may take the queue's last meanwhile)
                continue
        return None

    def pending_since(self, cutoff: float) -> set[str]:
        """Return the amphorae with a heartbeat waiting that was received at or after ``cutoff``."""
        return {
            h.amphora_id
            for h, _, _ in itertools.chain(self._held, list(self.queue))
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
            heartbeat, source = getter.dorecv()
        except HeartbeatError:
            continue  # counted by the getter
        except (TimeoutError, OSError):
            return
        backlog.append(heartbeat, source)


def receive_forever(getter: Any, backlog: Backlog, stopping: Callable[[], bool]) -> None:
    """Receive into ``backlog`` until ``stopping()`` or the getter is closed (a thread's body)."""
    append = backlog.append
    while not stopping():
        try:
            heartbeat, source = getter.dorecv()
        except (TimeoutError, HeartbeatError):
            continue
        except OSError:
            if stopping() or getter.closed:
                return
            log.exception("receiving failed; retrying")
            time.sleep(0.1)
            continue
        append(heartbeat, source)


class Receiver:
    """A daemon thread running :func:`receive_forever`, started at once."""

    def __init__(self, getter: Any, backlog: Backlog, stopping: Callable[[], bool]) -> None:
        """Receive from ``getter`` into ``backlog`` until ``stopping()``."""
        timeout = getattr(getter, "timeout", None)
        # The thread sees stopping() at the latest when dorecv() times out.
        self._join_timeout = None if timeout is None else timeout + 1.0
        self._thread = threading.Thread(
            target=receive_forever,
            args=(getter, backlog, stopping),
            name="amphora-heartbeat-receiver",
            daemon=True,
        )
        self._thread.start()

    def join(self) -> None:
        """Wait for the thread to end (at most the getter's timeout and a second)."""
        self._thread.join(self._join_timeout)
