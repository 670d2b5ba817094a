"""The health manager: heartbeats in, batched database writes and failovers out.

:class:`HealthManager` is a small coordinator over parts that can be read and
tested alone:

* :mod:`.backlog` — receiving into a backlog (a thread, or the caller's loop);
* :mod:`.tick` — one tick's write: a batch out of the backlog, backoff after a
  store error;
* :mod:`.writer` — writing a batch, isolating what the database refuses;
* :mod:`.judge` — judging a batch against stored views into one
  :class:`~amphora_heartbeat.store.TickWrite`;
* :mod:`.stale` — the stale check, through the failover policy;
* :mod:`.failover` — claiming stale amphorae and running their failovers;
* :mod:`.losses` — noticing lost heartbeats and holding failovers after them;
* :mod:`.tally` — the counters, gauges and delays the manager reports;
* :mod:`.wake` — the pipe that wakes a sleeping loop (safe in a signal handler);
* :mod:`.histogram` — the receive-to-commit delays;
* :mod:`.config` — the configuration (``octavia.conf`` and flags), one object;
* :mod:`.reload` — applying a re-read configuration, keys rotating without loss.
"""

from __future__ import annotations

from .config import ManagerConfig, load_config, read_files
from .core import HealthManager, tune_gc
from .failover import DEFAULT_FAILOVER_TIMEOUT, Failover, FailoverCommand
from .histogram import DelayHistogram
from .reload import KeyRotation, Reloader
from .tick import TickReport

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
