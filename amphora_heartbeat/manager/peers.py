"""What the workers on one address tell each other before a stale check.

With ``manager --workers N`` the kernel hands each amphora's heartbeats to one
worker, but every worker runs the stale check over the whole database.  The
check must not take another worker's trouble for silence:

* a worker that is behind holds heartbeats received and not yet committed, so
  the database says their amphorae were last heard earlier than they were;
* a worker that lost heartbeats (its socket's buffer, or its backlog, was
  full) cannot tell which amphorae they came from.

So each worker publishes, at each of its stale checks, one slot of a small
shared file (:class:`PeerBoard`, made by the supervisor): when it wrote it, the
receive time of its oldest heartbeat not yet committed, and when it last lost
heartbeats.  Before its own check a worker reads the other slots:

* the cutoff moves back by the longest lag among them, bounded from above:
  a peer that had nothing pending when it wrote may have fallen behind since,
  by at most the time since it wrote (so the lag counted is ``now - oldest``,
  or ``now - written`` when nothing was pending); a failover comes that much
  later, never earlier;
* a peer's loss holds every worker's failovers for a ``heartbeat_timeout``, as
  the worker's own loss does.

A slot not written for ``stale_after`` seconds is a dead or stuck worker's:
it is ignored (what that worker held will not be committed anyway).
"""

from __future__ import annotations

import mmap
import os
import shutil
import struct
import tempfile
from collections.abc import Mapping

import attrs

__all__ = ["ENVIRONMENT", "PeerBoard", "PeerNews", "make_board", "remove_board"]

#: The environment variable a supervisor gives each worker: ``PATH:INDEX:COUNT``.
ENVIRONMENT = "AMPHORA_HEARTBEAT_PEERS"

# One slot: written at, oldest heartbeat pending (0: none), last loss (0: none).
_SLOT = struct.Struct("<ddd")


@attrs.frozen
class PeerNews:
    """What the other workers said, as one stale check needs it."""

    #: Seconds the slowest live peer may be behind (0: none is).
    lag: float = 0.0
    #: The last time a live peer lost heartbeats, or None.
    lost_at: float | None = None


class PeerBoard:
    """One worker's view of the shared file: its own slot to write, the others to read."""

    def __init__(self, path: str, index: int, count: int) -> None:
        """Map ``path`` (made by :meth:`create` for ``count`` workers); write slot ``index``."""
        if not 0 <= index < count:
            raise ValueError(f"worker index {index} is not below the count {count}")
        self.index = index
        self.count = count
        with open(path, "r+b") as file:
            self._map = mmap.mmap(file.fileno(), _SLOT.size * count)

    @staticmethod
    def create(path: str, count: int) -> None:
        """Make the shared file for ``count`` workers, every slot empty."""
        with open(path, "wb") as file:
            file.write(bytes(_SLOT.size * count))

    @staticmethod
    def environ_value(path: str, index: int, count: int) -> str:
        """Return the value of :data:`ENVIRONMENT` naming slot ``index`` of board ``path``."""
        return f"{path}:{index}:{count}"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> PeerBoard | None:
        """Return the board :data:`ENVIRONMENT` names, or None when it is not set."""
        value = environ.get(ENVIRONMENT)
        if not value:
            return None
        path, index, count = value.rsplit(":", 2)
        return cls(path, int(index), int(count))

    def publish(self, now: float, oldest_pending: float | None, lost_at: float | None) -> None:
        """Write this worker's slot at ``now``."""
        _SLOT.pack_into(
            self._map, _SLOT.size * self.index, now, oldest_pending or 0.0, lost_at or 0.0
        )

    def read(self, now: float, stale_after: float) -> PeerNews:
        """Return what the other workers that wrote in the last ``stale_after`` seconds said."""
        lag, lost = 0.0, 0.0
        for i in range(self.count):
            if i == self.index:
                continue
            written, oldest, lost_at = _SLOT.unpack_from(self._map, _SLOT.size * i)
            if not written or now - written > stale_after:
                continue
            lag = max(lag, now - (oldest or written))
            lost = max(lost, lost_at)
        return PeerNews(lag, lost or None)

    def close(self) -> None:
        """Unmap the file."""
        self._map.close()


def make_board(count: int) -> str:
    """Make a board for ``count`` workers in a new private folder; return its path."""
    path = os.path.join(tempfile.mkdtemp(prefix="amphora-heartbeat-peers-"), "board")
    PeerBoard.create(path, count)
    return path


def remove_board(path: str) -> None:
    """Delete a board :func:`make_board` made, and its folder."""
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)
