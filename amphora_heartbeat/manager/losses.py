"""Losses and holds: a manager that lost heartbeats holds failovers for a while.

Silence is evidence of a dead amphora only if the manager would have heard it.
When the kernel dropped datagrams on the receive socket (its buffer was full: on
Linux, read from ``/proc/net/udp``) or the manager dropped heartbeats from its
backlog within the last ``heartbeat_timeout``, stale amphorae are held as after a
store error, and the ones held are logged and counted.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Collection, Sequence

__all__ = ["GateHolds", "LossWatch", "getter_fd", "socket_drops"]

log = logging.getLogger("amphora_heartbeat.manager")


def getter_fd(getter: object) -> int | None:
    """Return the getter's socket, to read the kernel's drops on it (None: not a socket)."""
    try:
        return int(getter.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None


def socket_drops(fd: int) -> tuple[int, int] | None:
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


class LossWatch:
    """Notice lost heartbeats at each stale check, and count the failovers they hold back."""

    def __init__(self, heartbeat_timeout: float, counts: collections.Counter[str]) -> None:
        """Hold failovers for ``heartbeat_timeout`` seconds after a loss; count into ``counts``."""
        self.heartbeat_timeout = heartbeat_timeout
        self.counts = counts
        #: The last stale check that found heartbeats lost, or None.
        self.overloaded_at: float | None = None
        self._socket_reading: tuple[int, int] | None = None
        self._dropped_seen = 0
        self._held: set[str] = set()

    def _socket_losses(self, fd: int | None) -> int:
        reading = socket_drops(fd) if fd is not None else None
        if reading is None:
            return 0
        before = self._socket_reading
        self._socket_reading = reading
        # The first reading is the baseline (drops before it fall in the start-up
        # grace); a new socket (the getter rebound) starts counting from zero.
        if before is None:
            return 0
        drops = reading[1] - before[1] if before[0] == reading[0] else reading[1]
        if drops <= 0:
            return 0
        self.counts["socket_drops"] += drops
        return drops

    def note(self, now: float, *, fd: int | None, dropped: int) -> None:
        """Set :attr:`overloaded_at` to ``now`` if heartbeats were lost since the last check.

        ``fd`` is the receive socket (None: none to read), ``dropped`` the
        manager's own running count of heartbeats dropped.
        """
        lost = self._socket_losses(fd) + dropped - self._dropped_seen
        self._dropped_seen = dropped
        if not lost:
            return
        if self.overloaded_at is None or now >= self.overloaded_at + self.heartbeat_timeout:
            log.warning(
                "overloaded: %d heartbeats lost (receive buffer full or backlog full);"
                " no failover until %ss after the last loss",
                lost,
                self.heartbeat_timeout,
                extra={"event": "overloaded", "count": lost},
            )
        self.counts["overloads"] += 1
        self.overloaded_at = now if self.overloaded_at is None else max(self.overloaded_at, now)

    def set_back(self, now: float) -> None:
        """Bring :attr:`overloaded_at` back to ``now`` if a clock since set back put it ahead."""
        if self.overloaded_at is not None and self.overloaded_at > now:
            self.overloaded_at = now

    def count_held(self, stale: Sequence[str], started: Sequence[str], now: float) -> None:
        """Count and log stale amphorae not failed over because heartbeats were lost."""
        at = self.overloaded_at
        if at is None or now >= at + self.heartbeat_timeout:
            self._held.clear()
            return
        fresh = [a for a in stale if a not in self._held and a not in started]
        if fresh:
            self._held.update(fresh)
            self.counts["failovers_held_overloaded"] += len(fresh)
            log.warning(
                "%d amphorae stale while the manager loses heartbeats: not failing them over",
                len(fresh),
                extra={"event": "failovers_held_back", "reason": "losses", "count": len(fresh)},
            )


class GateHolds:
    """Count stale amphorae held by the start-up grace or by the wait after a store error.

    Each amphora is counted once per hold (``failovers_held_startup`` or
    ``failovers_held_paused``), as :meth:`LossWatch.count_held` counts losses.
    """

    def __init__(self, counts: collections.Counter[str]) -> None:
        """Count into ``counts``."""
        self.counts = counts
        self._held: dict[str, set[str]] = {"startup": set(), "paused": set()}

    def count(
        self,
        stale: Collection[str],
        *,
        now: float,
        timeout: float,
        started: float | None,
        paused_at: float | None,
    ) -> None:
        """Count the ``stale`` amphorae a gate holds at ``now`` (each gate lasts ``timeout`` s)."""
        starting = started is not None and now < started + timeout
        paused = not starting and paused_at is not None and now < paused_at + timeout
        for reason, active in (("startup", starting), ("paused", paused)):
            held = self._held[reason]
            if not active:
                held.clear()
                continue
            fresh = [a for a in stale if a not in held]
            held.update(fresh)
            self.counts["failovers_held_" + reason] += len(fresh)
