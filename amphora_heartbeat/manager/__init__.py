"""The health manager: heartbeats in, batched database writes and failovers out.

:class:`HealthManager` is a small coordinator over parts that can be read and
tested alone:

* :mod:`.backlog` — receiving into a backlog (a thread, or the caller's loop);
* :mod:`.judge` — judging a batch against stored views into one
  :class:`~amphora_heartbeat.store.TickWrite`;
* :mod:`.failover` — claiming stale amphorae and running their failovers;
* :mod:`.losses` — noticing lost heartbeats and holding failovers after them;
* :mod:`.histogram` — the receive-to-commit delays.
"""

from __future__ import annotations

from .core import HealthManager, TickReport, tune_gc
from .failover import Failover, FailoverCommand
from .histogram import DelayHistogram

__all__ = [
    "DelayHistogram",
    "Failover",
    "FailoverCommand",
    "HealthManager",
    "TickReport",
    "tune_gc",
]
