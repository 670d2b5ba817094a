"""The health manager: heartbeats in, batched database writes and failovers out.

:class:`HealthManager` is a small coordinator over parts that can be read and
tested alone:

* :mod:`.backlog` — receiving into a backlog (a thread, or the caller's loop);
* :mod:`.judge` — judging a batch against stored views into one
  :class:`~amphora_heartbeat.store.TickWrite`;
* :mod:`.failover` — claiming stale amphorae and running their failovers;
* :mod:`.losses` — noticing lost heartbeats and holding failovers after them;
* :mod:`.histogram` — the receive-to-commit delays;
* :mod:`.config` — the configuration (``octavia.conf`` and flags), one object;
* :mod:`.reload` — applying a re-read configuration, keys rotating without loss.
"""

from __future__ import annotations

from .config import ManagerConfig, load_config, read_files
from .core import HealthManager, TickReport, tune_gc
from .failover import DEFAULT_FAILOVER_TIMEOUT, Failover, FailoverCommand
from .histogram import DelayHistogram
from .reload import KeyRotation, Reloader

__all__ = [
    "DEFAULT_FAILOVER_TIMEOUT",
    "DelayHistogram",
    "Failover",
    "FailoverCommand",
    "HealthManager",
    "KeyRotation",
    "ManagerConfig",
    "Reloader",
    "TickReport",
    "load_config",
    "read_files",
    "tune_gc",
]
