"""What every benchmark shares: timings, cases, results, and the machine's facts."""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
import zlib
from collections.abc import Callable
from typing import Any

import attrs

from .. import __version__

__all__ = ["Case", "Clock", "Result", "Timing", "machine_facts", "rss_bytes"]


#: What a case's run returns: operations, wall-clock seconds, CPU seconds of
#: this process (the receiver's, for the socket cases).
Timing = tuple[int, float, float]


class Clock:
    """Wall-clock and CPU time together, started at construction."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def timing(self, ops: int) -> Timing:
        """Return ``ops`` with the wall-clock and CPU seconds since construction."""
        return ops, time.perf_counter() - self.wall, time.process_time() - self.cpu


@attrs.frozen
class Case:
    """One thing to measure: a name, a description and a function returning a :data:`Timing`."""

    name: str
    description: str
    run: Callable[[], Timing]
    socket: bool = False


@attrs.define
class Result:
    """The rates measured for one case over the rounds, in operations per second."""

    name: str
    description: str
    #: Operations per wall-clock second, one per round.
    rates: list[float] = attrs.field(factory=list)
    #: Operations per CPU second of this process, one per round: the time the
    #: machine's other tenants take is not in it.
    cpu_rates: list[float] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)

    @property
    def median(self) -> float:
        """Return the median rate (0 when nothing was measured)."""
        return statistics.median(self.rates) if self.rates else 0.0

    @property
    def spread(self) -> float:
        """Return (max - min) / median, as a fraction."""
        if len(self.rates) < 2 or not self.median:
            return 0.0
        return (max(self.rates) - min(self.rates)) / self.median

    @property
    def cpu_median(self) -> float:
        """Return the median rate per CPU second (0 when nothing was measured)."""
        return statistics.median(self.cpu_rates) if self.cpu_rates else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-ready mapping."""
        return {
            "description": self.description,
            "median_per_s": round(self.median, 1),
            "min_per_s": round(min(self.rates), 1) if self.rates else None,
            "max_per_s": round(max(self.rates), 1) if self.rates else None,
            "spread": round(self.spread, 3),
            "runs_per_s": [round(r, 1) for r in self.rates],
            "cpu_median_per_s": round(self.cpu_median, 1),
            "cpu_runs_per_s": [round(r, 1) for r in self.cpu_rates],
            "notes": self.notes,
        }


def rss_bytes() -> int:
    """Return this process's resident set size now, in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def machine_facts() -> dict[str, Any]:
    """Return what the figures depend on: CPUs, CPU model, Python, library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (math.nan, math.nan, math.nan)
    import zstandard  # noqa: PLC0415  (only its version is wanted here)

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "zstandard": zstandard.__version__,
        "amphora_heartbeat": __version__,
        "loadavg": [round(x, 2) for x in load],
    }
