"""Benchmark the receive path against its floor: ``python -m amphora_heartbeat.bench``.

Measures, on this machine and in one run:

* **floor** -- a bare loop of one HMAC + ``zlib.decompress`` + ``json.loads``
  over the same packets, in memory and behind ``recvfrom`` on a loopback socket,
  validating nothing; and a lean floor that calls the JSON scanner directly, as
  the library does (``json.loads`` adds two regular-expression passes);
* **baseline** -- Octavia's receive algorithm restated here (not imported): the
  hex trailer tried first, a second HMAC for raw trailers, unbounded
  decompression, ``json.loads``; for hex and raw trailers;
* **this library** -- unwrap (hex and raw trailers, zlib and zstd), unwrap +
  ``Heartbeat.from_dict``, ``rules.derive``, and the full path:
  ``UDPStatusGetter.check()`` with no-op handlers while the fleet generator
  sends from another process (1,000 amphorae; 2 listeners, 2 pools, 4 members),
  at full speed and at a fixed rate (accepted per second and loss);
* **memory** -- resident set size before and after many packets through the
  getter's socket-free step.

Cases are interleaved and repeated (``--rounds``, at least 3); the table shows
medians, extremes and spread, then the ratios against the project's targets.
Timing is never asserted anywhere: this machine is shared and noisy.

``python -m amphora_heartbeat.bench manager ...`` runs the health manager's
benchmark (:mod:`amphora_heartbeat.bench.manager`).

The package: :mod:`.common` (timings, cases, results, machine facts),
:mod:`.receive` (the receive-path cases), :mod:`.report` (targets, report and
the command), :mod:`.manager` (the health manager's benchmark).
"""

from __future__ import annotations

from .common import Case, Result, Timing, machine_facts, rss_bytes
from .receive import (
    AMPHORAE,
    KEY,
    Packets,
    SocketSettings,
    baseline_unwrap,
    floor_step,
    lean_floor_step,
    measure_memory,
    profile,
    run_rounds,
)
from .report import TARGETS, Target, main

__all__ = [
    "AMPHORAE",
    "KEY",
    "TARGETS",
    "Case",
    "Packets",
    "Result",
    "SocketSettings",
    "Target",
    "Timing",
    "baseline_unwrap",
    "floor_step",
    "lean_floor_step",
    "machine_facts",
    "main",
    "measure_memory",
    "profile",
    "rss_bytes",
    "run_rounds",
]
