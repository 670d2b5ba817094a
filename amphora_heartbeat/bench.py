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
benchmark (:mod:`amphora_heartbeat.bench_manager`) when it is installed.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hmac
import importlib
import importlib.util
import io
import json
import math
import multiprocessing
import os
import platform
import pstats
import socket
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from . import __version__
from .envelope import Codec, Digest, Unwrapper, wrap_envelope
from .fleet import Fleet
from .getter import UDPStatusGetter
from .models import Heartbeat
from .rules import LoadBalancerView, derive

__all__ = [
    "AMPHORAE",
    "KEY",
    "Case",
    "Result",
    "Timing",
    "baseline_unwrap",
    "floor_step",
    "lean_floor_step",
    "machine_facts",
    "main",
    "rss_bytes",
]

#: Amphorae in the benchmark's fleet (one standard packet each).
AMPHORAE = 1000
#: The key every benchmark packet is signed with.
KEY = b"amphora-heartbeat-bench"
_RECV_SIZE = 65536
# SO_RCVBUF asked for on the receiving sockets, in bytes (the kernel caps it at
# net.core.rmem_max).
_RCVBUF = 4 << 20
_HEX = 64
_RAW = 32
# Receive until idle rather than up to a count.
_NO_LIMIT = 1 << 62


# --- the reference loops ---------------------------------------------------------------


def floor_step(packet: bytes, key: bytes = KEY) -> dict[str, Any]:
    """Do the least any receiver must do for a hex/zlib packet: one HMAC, inflate, parse.

    Validates nothing and compares nothing: the lower bound of the work.
    """
    payload = packet[:-_HEX]
    hmac.digest(key, payload, "sha256")
    return json.loads(zlib.decompress(payload))  # type: ignore[no-any-return]


_scan_json = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def lean_floor_step(packet: bytes, key: bytes = KEY) -> dict[str, Any]:
    """Do the floor's work with the quickest primitives at hand: the C JSON scanner direct.

    ``json.loads`` wraps that scanner in two regular-expression passes; the
    library's unwrap skips them too, so this is the floor it must be held to.
    """
    payload = packet[:-_HEX]
    hmac.digest(key, payload, "sha256")
    return _scan_json(zlib.decompress(payload).decode("utf-8"), 0)[0]  # type: ignore[no-any-return]


def baseline_unwrap(packet: bytes, key: bytes = KEY) -> dict[str, Any]:
    """Unwrap as Octavia's receiver does (restated): hex trailer first, then raw.

    A raw-trailer packet costs a second HMAC; decompression is unbounded and
    nothing is validated.  Octavia also logs a warning per raw-trailer packet,
    which is left out here (it would only make the baseline slower).
    """
    payload = packet[:-_HEX]
    calculated = hmac.new(key, payload, "sha256").hexdigest().encode("ascii")
    if not hmac.compare_digest(packet[-_HEX:], calculated):
        payload = packet[:-_RAW]
        if not hmac.compare_digest(packet[-_RAW:], hmac.new(key, payload, "sha256").digest()):
            raise ValueError("invalid HMAC")
    return json.loads(zlib.decompress(payload))  # type: ignore[no-any-return]


# --- results -----------------------------------------------------------------------------


#: What a case's run returns: operations, wall-clock seconds, CPU seconds of
#: this process (the receiver's, for the socket cases).
Timing = tuple[int, float, float]


class _Clock:
    """Wall-clock and CPU time together, started at construction."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def timing(self, ops: int) -> Timing:
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


# --- packets -----------------------------------------------------------------------------


@attrs.define
class Packets:
    """The benchmark's traffic: one standard packet per amphora in each encoding."""

    fleet: Fleet
    messages: list[dict[str, Any]]
    by_encoding: dict[tuple[Codec, Digest], list[bytes]]

    @classmethod
    def make(cls, amphorae: int = AMPHORAE) -> Packets:
        """Build the fleet's messages and their envelopes (hex/raw, zlib/zstd)."""
        fleet = Fleet(amphorae, KEY)
        messages = [fleet.message(i, 7) for i in range(amphorae)]
        by_encoding = {
            (codec, digest): [wrap_envelope(m, KEY, codec=codec, digest=digest) for m in messages]
            for codec in Codec
            for digest in Digest
        }
        return cls(fleet, messages, by_encoding)


def _timed(step: Callable[[bytes], object], packets: Sequence[bytes], passes: int) -> Timing:
    clock = _Clock()
    for _ in range(passes):
        for packet in packets:
            step(packet)
    return clock.timing(passes * len(packets))


def _memory_cases(packets: Packets, passes: int) -> list[Case]:
    hex_zlib = packets.by_encoding[Codec.ZLIB, Digest.HEX]
    raw_zlib = packets.by_encoding[Codec.ZLIB, Digest.RAW]
    unwrapper = Unwrapper(KEY)
    unwrap = unwrapper.unwrap
    from_dict = Heartbeat.from_dict

    def parse(packet: bytes) -> Heartbeat:
        return from_dict(unwrap(packet), recv_time=1.0)

    def parse_walk(packet: bytes) -> int:
        # Touch every child, in case parts of the tree are built lazily.
        heartbeat = parse(packet)
        n = 0
        for listener in heartbeat.listeners.values():
            n += listener.stats.bytes_in
        for pool in heartbeat.pools.values():
            for member in pool.members.values():
                n += member.kind is not None
        return n

    cases = [
        Case("floor.memory", "floor: HMAC + zlib.decompress + json.loads (hex/zlib)",
             lambda: _timed(floor_step, hex_zlib, passes)),
        Case("floor.lean", "floor with the JSON scanner called directly (hex/zlib)",
             lambda: _timed(lean_floor_step, hex_zlib, passes)),
        Case("baseline.hex", "Octavia's unwrap, restated (hex/zlib)",
             lambda: _timed(baseline_unwrap, hex_zlib, passes)),
        Case("baseline.raw", "Octavia's unwrap, restated (raw/zlib: two HMACs)",
             lambda: _timed(baseline_unwrap, raw_zlib, passes)),
    ]  # fmt: skip
    for codec in Codec:
        for digest in Digest:
            enc = packets.by_encoding[codec, digest]
            label = f"{digest.value}/{codec.value}"
            cases.append(
                Case(
                    f"unwrap.{digest.value}.{codec.value}",
                    f"Unwrapper.unwrap ({label})",
                    lambda enc=enc: _timed(unwrap, enc, passes),  # type: ignore[misc]
                )
            )
            cases.append(
                Case(
                    f"parse.{digest.value}.{codec.value}",
                    f"unwrap + Heartbeat.from_dict ({label})",
                    lambda enc=enc: _timed(parse, enc, passes),  # type: ignore[misc]
                )
            )
    cases.append(
        Case(
            "parse_walk.hex.zlib",
            "unwrap + from_dict + reading every listener, pool and member (hex/zlib)",
            lambda: _timed(parse_walk, hex_zlib, passes),
        )
    )
    messages = packets.messages

    def from_dict_only() -> Timing:
        clock = _Clock()
        for _ in range(passes):
            for message in messages:
                from_dict(message, recv_time=1.0)
        return clock.timing(passes * len(messages))

    cases.append(Case("from_dict", "Heartbeat.from_dict alone (decoded dicts)", from_dict_only))
    cases.append(_derive_case(packets, passes))
    return cases


def _derive_case(packets: Packets, passes: int) -> Case:
    views = [LoadBalancerView.from_dict(spec.view()) for spec in packets.fleet.specs]
    unwrapper = Unwrapper(KEY)
    hex_zlib = packets.by_encoding[Codec.ZLIB, Digest.HEX]

    def run() -> Timing:
        # Fresh heartbeats each pass, so that anything built lazily on first
        # access is paid for here, as a controller would pay it.
        heartbeats = [Heartbeat.from_dict(unwrapper.unwrap(p), recv_time=1.0) for p in hex_zlib]
        pairs = list(zip(heartbeats, views, strict=True))
        clock = _Clock()
        for _ in range(passes):
            for heartbeat, view in pairs:
                derive(heartbeat, view, now=1.0)
        return clock.timing(passes * len(pairs))

    return Case("derive", "rules.derive on the standard packet, all ONLINE view", run)


# --- the socket cases ----------------------------------------------------------------------


_Job = tuple[str, float, "int | None", "float | None"]


def _send_child(fleet: Fleet, rings: list[list[bytes]], job: _Job, conn: Any) -> None:
    target, rate, count, duration = job
    summary = fleet.run([target], rate=rate, count=count, duration=duration, rings=rings)
    conn.send(summary.to_dict())
    conn.close()


class _Traffic:
    """A fleet sender in another process, feeding one receiving socket."""

    def __init__(
        self,
        fleet: Fleet,
        rings: list[list[bytes]],
        target: str,
        rate: float,
        *,
        count: int | None = None,
        duration: float | None = None,
    ):
        # Fork where there is fork: the child inherits the pre-built packets.
        ctx = (
            multiprocessing.get_context("fork")
            if "fork" in multiprocessing.get_all_start_methods()
            else multiprocessing.get_context("spawn")
        )
        self._parent, child = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(
            target=_send_child,
            args=(fleet, rings, (target, rate, count, duration), child),
            daemon=True,
        )
        self._proc.start()
        child.close()

    def summary(self, timeout: float = 60.0) -> dict[str, Any] | None:
        """Return the sender's summary once it has finished (None if it failed)."""
        result: dict[str, Any] | None = None
        if self._parent.poll(timeout):
            try:
                result = self._parent.recv()
            except EOFError:
                result = None
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._parent.close()
        return result


def _receive_loop(step: Callable[[], bool], first_timeout: float, limit: int) -> Timing:
    """Run ``step`` (True: one packet handled; False: idle) until idle or ``limit`` handled."""
    count = 0
    deadline = time.monotonic() + first_timeout
    while not step():
        if time.monotonic() > deadline:
            return 0, 0.0, 0.0
    # The first packet only marks the start: the rate is over the ones after it.
    clock = _Clock()
    wall = cpu = 0.0
    while count < limit:
        if not step():
            break
        count += 1
        wall = time.perf_counter()
        cpu = time.process_time()
    return count, max(0.0, wall - clock.wall), max(0.0, cpu - clock.cpu)


@attrs.frozen
class SocketSettings:
    """How much traffic each socket case sends, in packets and packets per second."""

    #: Seconds the full-speed sender sends for.
    max_seconds: float
    paced_rate: float
    paced_seconds: float
    idle: float = 0.3


def _socket_cases(
    packets: Packets, rings: dict[Codec, list[list[bytes]]], settings: SocketSettings
) -> tuple[list[Case], dict[str, list[dict[str, Any]]]]:
    senders: dict[str, list[dict[str, Any]]] = {}
    fleet = packets.fleet

    def bound_socket() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        sock.bind(("127.0.0.1", 0))
        return sock

    def floor_udp() -> Timing:
        sock = bound_socket()
        try:
            host, port = sock.getsockname()
            traffic = _Traffic(
                fleet, rings[Codec.ZLIB], f"{host}:{port}", math.inf, duration=settings.max_seconds
            )
            recv = sock.recvfrom

            def step() -> bool:
                try:
                    data, _ = recv(_RECV_SIZE)
                except TimeoutError:
                    return False
                floor_step(data)
                return True

            sock.settimeout(settings.idle)
            result = _receive_loop(step, 30.0, _NO_LIMIT)
        finally:
            sock.close()
        _record(senders, "floor.udp", traffic.summary())
        return result

    cases = [
        Case("floor.udp", "floor behind recvfrom, sender at full speed (hex/zlib)", floor_udp, True)
    ]

    def noop(heartbeat: Heartbeat, srcaddr: str) -> None:
        pass

    def check_case(
        name: str, codec: Codec, rate: float, count: int | None, duration: float | None
    ) -> Callable[[], Timing]:
        def run() -> Timing:
            getter = UDPStatusGetter(
                KEY, "127.0.0.1", 0, timeout=settings.idle, rcvbuf=_RCVBUF,
                health_handler=noop, stats_handler=noop,
            )  # fmt: skip
            try:
                host, port = getter.address
                traffic = _Traffic(
                    fleet, rings[codec], f"{host}:{port}", rate, count=count, duration=duration
                )
                check = getter.check

                def step() -> bool:
                    return check() is not None

                result = _receive_loop(step, 30.0, count or _NO_LIMIT)
                counters = dict(getter.counters)
            finally:
                getter.close()
            summary = traffic.summary()
            if summary is not None:
                summary["accepted"] = counters.get("accepted", 0)
                summary["lost"] = summary["sent"] - counters.get("received", 0)
            _record(senders, name, summary)
            return result

        return run

    cases += [
        Case("check.max.zlib", "check(), no-op handlers, sender at full speed (hex/zlib)",
             check_case("check.max.zlib", Codec.ZLIB, math.inf, None, settings.max_seconds), True),
        Case("check.max.zstd", "check(), no-op handlers, sender at full speed (hex/zstd)",
             check_case("check.max.zstd", Codec.ZSTD, math.inf, None, settings.max_seconds), True),
        Case("check.paced", f"check() with the sender at {settings.paced_rate:,.0f}/s (hex/zlib)",
             check_case("check.paced", Codec.ZLIB, settings.paced_rate,
                        int(settings.paced_rate * settings.paced_seconds), None), True),
    ]  # fmt: skip
    return cases, senders


def _record(
    senders: dict[str, list[dict[str, Any]]], name: str, summary: dict[str, Any] | None
) -> None:
    senders.setdefault(name, []).append(summary or {"error": "the sender reported nothing"})


# --- memory ------------------------------------------------------------------------------


def measure_memory(packets: Packets, count: int) -> dict[str, Any]:
    """Feed ``count`` packets through the getter's socket-free step; return RSS figures.

    The step is ``UDPStatusGetter.handle_datagram``, what ``check()`` does after
    ``recvfrom``.  RSS is read after a warm-up of a tenth of the packets and
    again at the end.
    """
    source = packets.by_encoding[Codec.ZLIB, Digest.HEX]
    getter = UDPStatusGetter(KEY, "127.0.0.1", 0, timeout=0)
    handle = getter.handle_datagram
    address = ("127.0.0.1", 40000)

    def step(packet: bytes) -> object:
        return handle(packet, address, now=1.0)

    try:
        warm = max(1, count // 10)
        n = len(source)
        for i in range(warm):
            step(source[i % n])
        gc.collect()
        before = rss_bytes()
        start = time.perf_counter()
        for i in range(count - warm):
            step(source[i % n])
        elapsed = time.perf_counter() - start
        gc.collect()
        after = rss_bytes()
    finally:
        getter.close()
    return {
        "path": "UDPStatusGetter.handle_datagram",
        "packets": count,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "growth_bytes": after - before,
        "growth_bytes_per_packet": (after - before) / max(1, count - warm),
        "rate_per_s": (count - warm) / elapsed if elapsed else 0.0,
    }


# --- profile -----------------------------------------------------------------------------


def profile(packets: Packets, count: int, top: int = 14) -> str:
    """Return cProfile's report (by own time) of unwrap + from_dict over ``count`` packets."""
    unwrapper = Unwrapper(KEY)
    source = packets.by_encoding[Codec.ZLIB, Digest.HEX]
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(count):
        Heartbeat.from_dict(unwrapper.unwrap(source[i % len(source)]), recv_time=1.0)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime").print_stats(top)
    return out.getvalue()


# --- running and reporting ---------------------------------------------------------------


def run_rounds(
    cases: Sequence[Case], rounds: int, *, progress: Callable[[str], None] | None = None
) -> dict[str, Result]:
    """Run every case once per round, interleaved, and collect the rates."""
    results = {case.name: Result(case.name, case.description) for case in cases}
    for r in range(rounds):
        if progress is not None:
            progress(f"round {r + 1}/{rounds}")
        for case in cases:
            ops, wall, cpu = case.run()
            if ops and wall > 0:
                results[case.name].rates.append(ops / wall)
                if cpu > 0:
                    results[case.name].cpu_rates.append(ops / cpu)
            else:
                results[case.name].notes.append(f"round {r + 1}: nothing measured")
    return results


@attrs.frozen
class Target:
    """One of the issue's targets: a ratio of two measured rates and its bound."""

    name: str
    numerator: str
    denominator: str
    minimum: float
    #: How the bound reads, e.g. ">= 0.8x".
    wording: str

    def evaluate(self, results: dict[str, Result]) -> dict[str, Any]:
        """Return the ratios of medians (wall clock, CPU time) and whether each meets the bound."""
        out: dict[str, Any] = {"target": self.name, "wording": self.wording}
        num = results.get(self.numerator)
        den = results.get(self.denominator)
        for kind in ("wall", "cpu"):
            a = b = 0.0
            if num is not None and den is not None:
                a, b = (
                    (num.median, den.median) if kind == "wall" else (num.cpu_median, den.cpu_median)
                )
            ratio = round(a / b, 3) if a and b else None
            out[f"{kind}_ratio"] = ratio
            out[f"{kind}_met"] = None if ratio is None else ratio >= self.minimum
        return out


TARGETS = (
    Target("parse / baseline unwrap, hex/zlib", "parse.hex.zlib", "baseline.hex", 0.8, ">= 0.8x"),
    Target("parse / baseline unwrap, raw/zlib", "parse.raw.zlib", "baseline.raw", 1.3, ">= 1.3x"),
    Target("check() vs floor behind recvfrom", "check.max.zlib", "floor.udp", 0.75, ">= 0.75x"),
    Target("zstd vs zlib end to end (check)", "check.max.zstd", "check.max.zlib", 1.0, "> 1x"),
    Target("zstd vs zlib, unwrap+from_dict", "parse.hex.zstd", "parse.hex.zlib", 1.0, "> 1x"),
    # derive <= 25% of the time of unwrap+from_dict: its rate at least 4x theirs.
    Target("derive time <= 25% of unwrap+from_dict", "derive", "parse.hex.zlib", 4.0, ">= 4x rate"),
)  # fmt: skip


def _format_table(results: dict[str, Result]) -> str:
    head = f"{'case':<19} {'median/s':>9} {'min/s':>9} {'max/s':>9} {'spread':>6} {'cpu/s':>9}"
    lines = [head + "  what"]
    for r in results.values():
        if not r.rates:
            lines.append(
                f"{r.name:<19} {'-':>9} {'-':>9} {'-':>9} {'-':>6} {'-':>9}  {r.description}"
            )
            continue
        lines.append(
            f"{r.name:<19} {r.median:>9,.0f} {min(r.rates):>9,.0f} {max(r.rates):>9,.0f} "
            f"{r.spread:>6.0%} {r.cpu_median:>9,.0f}  {r.description}"
        )
    return "\n".join(lines)


def _format_targets(evaluated: Iterable[dict[str, Any]]) -> str:
    lines = [f"  {'target':<42} {'wall':>14} {'cpu':>14}  bound"]
    for t in evaluated:
        cells = []
        for kind in ("wall", "cpu"):
            ratio = t[f"{kind}_ratio"]
            if ratio is None:
                cells.append(f"{'-':>14}")
            else:
                cells.append(f"{ratio:>6.2f}x {'met' if t[f'{kind}_met'] else 'MISSED':>6}")
        lines.append(f"  {t['target']:<42} {cells[0]} {cells[1]}  {t['wording']}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m amphora_heartbeat.bench",
        description="Benchmark the heartbeat receive path on this machine.",
        epilog="'python -m amphora_heartbeat.bench manager --help' benchmarks the health manager.",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of tables"
    )
    parser.add_argument(
        "--quick", action="store_true", help="small counts: finishes in well under a minute"
    )
    parser.add_argument(
        "--rounds", type=int, help="interleaved repetitions (default 5; 3 with --quick)"
    )
    parser.add_argument(
        "--rate", type=float, default=20_000.0, help="paced sender rate for check.paced, packets/s"
    )
    parser.add_argument(
        "--memory-packets",
        type=int,
        help="packets for the memory check (default 1,000,000; 100,000 with --quick)",
    )
    parser.add_argument(
        "--no-sockets", action="store_true", help="skip the cases that need loopback sockets"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also print a cProfile report of unwrap + from_dict"
    )
    parser.add_argument(
        "--amphorae",
        type=int,
        default=AMPHORAE,
        help=f"simulated amphorae, one standard packet each (default {AMPHORAE:,})",
    )
    parser.add_argument(
        "--passes", type=int, help="passes over the packets per in-memory run (20; 4 with --quick)"
    )
    parser.add_argument(
        "--socket-seconds",
        type=float,
        help="seconds the full-speed sender sends per socket run (3; 0.6 with --quick)",
    )
    parser.add_argument(
        "--paced-seconds", type=float, help="seconds of the paced socket run (5; 1 with --quick)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or ``manager ...``: the health manager's); return the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "manager":
        return _manager(args_list[1:])
    args = _parser().parse_args(args_list)
    rounds = args.rounds or (3 if args.quick else 5)
    if rounds < 3:
        _parser().error("--rounds must be at least 3 (medians of fewer runs mean little here)")
    passes = args.passes or (4 if args.quick else 20)
    memory_packets = args.memory_packets or (100_000 if args.quick else 1_000_000)
    settings = SocketSettings(
        max_seconds=args.socket_seconds or (0.6 if args.quick else 3.0),
        paced_rate=args.rate,
        paced_seconds=args.paced_seconds or (1.0 if args.quick else 5.0),
    )

    def say(text: str) -> None:
        if not args.json:
            print(f"  .. {text}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    say("building packets")
    packets = Packets.make(args.amphorae)
    cases = _memory_cases(packets, passes)
    senders: dict[str, list[dict[str, Any]]] = {}
    if not args.no_sockets:
        variants = 2 if args.quick else 4
        rings = {
            codec: _rings(packets.fleet, codec, variants) for codec in (Codec.ZLIB, Codec.ZSTD)
        }
        socket_cases, senders = _socket_cases(packets, rings, settings)
        cases += socket_cases
    results = run_rounds(cases, rounds, progress=say)
    say(f"memory: {memory_packets:,} packets")
    memory = measure_memory(packets, memory_packets)
    evaluated = [t.evaluate(results) for t in TARGETS]
    report: dict[str, Any] = {
        "machine": machine_facts(),
        "settings": {
            "quick": args.quick,
            "rounds": rounds,
            "amphorae": args.amphorae,
            "packet": "2 listeners, 2 pools, 4 members; version 3",
            "packet_bytes": len(packets.by_encoding[Codec.ZLIB, Digest.HEX][0]),
            "in_memory_ops_per_run": passes * args.amphorae,
            **attrs.asdict(settings),
        },
        "results": {name: r.to_dict() for name, r in results.items()},
        "senders": senders,
        "targets": evaluated,
        "memory": memory,
        "octavia": _octavia_note(),
    }
    if args.profile:
        report["profile"] = profile(packets, 20_000 if args.quick else 100_000)
    report["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report, results, evaluated)
    return 0


def _rings(fleet: Fleet, codec: Codec, variants: int) -> list[list[bytes]]:
    return Fleet(len(fleet.specs), KEY, codec=codec).build(variants)


def _octavia_note() -> str:
    if importlib.util.find_spec("octavia") is None:
        return "Octavia is not installed here: its own check() loop was not measured."
    return "Octavia is installed, but measuring its check() loop is not implemented yet."


def _print_report(
    report: dict[str, Any], results: dict[str, Result], evaluated: list[dict[str, Any]]
) -> None:
    m = report["machine"]
    s = report["settings"]
    print(
        f"amphora_heartbeat {m['amphora_heartbeat']} bench: {m['nproc']} CPUs ({m['cpu']}), "
        f"Python {m['python']}, load average {m['loadavg']}"
    )
    print(
        f"{s['rounds']} interleaved rounds; {s['amphorae']} amphorae, standard packet "
        f"({s['packet_bytes']} bytes hex/zlib); "
        f"{s['in_memory_ops_per_run']:,} packets per in-memory run"
    )
    print()
    print(_format_table(results))
    print()
    for name, runs in report["senders"].items():
        parts = []
        for run in runs:
            if "sent" not in run:
                parts.append("?")
                continue
            text = f"{run['rate']:,.0f}/s"
            if "lost" in run:
                text += f" lost {run['lost']}"
            parts.append(text)
        print(f"sender {name:<16} {'; '.join(parts)}")
    mem = report["memory"]
    print(
        f"memory: {mem['packets']:,} packets through {mem['path']}: RSS "
        f"{mem['rss_before_bytes'] / 2**20:.1f} -> {mem['rss_after_bytes'] / 2**20:.1f} MiB "
        f"({mem['growth_bytes_per_packet']:.3f} bytes/packet) at {mem['rate_per_s']:,.0f}/s"
    )
    print(report["octavia"])
    print()
    print("targets (ratios of medians):")
    print(_format_targets(evaluated))
    if "profile" in report:
        print()
        print(report["profile"])
    print(f"took {report['seconds']} s")  # fmt: skip


def _manager(argv: list[str]) -> int:
    try:
        module = importlib.import_module("amphora_heartbeat.bench_manager")
    except ModuleNotFoundError as exc:
        if exc.name != "amphora_heartbeat.bench_manager":
            raise
        print(
            "the health manager benchmark (amphora_heartbeat.bench_manager) is not part of this "
            "installation yet",
            file=sys.stderr,
        )
        return 2
    return int(module.main(argv))


if __name__ == "__main__":
    sys.exit(main())
