"""The receive-path cases: floors, Octavia's algorithm, this library, memory and profile.

Each case measures one way of turning packets into messages (or heartbeats) on
this machine; :func:`run_rounds` interleaves them so that a noisy neighbour
affects every case alike.
"""

from __future__ import annotations

import cProfile
import gc
import hmac
import io
import json
import math
import multiprocessing
import pstats
import socket
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ..envelope import Codec, Digest, Unwrapper, wrap_envelope
from ..fleet import Fleet
from ..getter import UDPStatusGetter
from ..models import Heartbeat
from ..rules import LoadBalancerView, derive
from .common import Case, Clock, Result, Timing, rss_bytes

__all__ = [
    "AMPHORAE",
    "KEY",
    "Packets",
    "SocketSettings",
    "baseline_unwrap",
    "derive_case",
    "floor_step",
    "lean_floor_step",
    "measure_memory",
    "memory_cases",
    "profile",
    "rings",
    "run_rounds",
    "socket_cases",
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
    clock = Clock()
    for _ in range(passes):
        for packet in packets:
            step(packet)
    return clock.timing(passes * len(packets))


def memory_cases(packets: Packets, passes: int) -> list[Case]:
    """Return the in-memory cases: floors, Octavia's algorithm, unwrap and parse."""
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
        clock = Clock()
        for _ in range(passes):
            for message in messages:
                from_dict(message, recv_time=1.0)
        return clock.timing(passes * len(messages))

    cases.append(Case("from_dict", "Heartbeat.from_dict alone (decoded dicts)", from_dict_only))
    cases.append(derive_case(packets, passes))
    return cases


def derive_case(packets: Packets, passes: int) -> Case:
    """Return the case judging each heartbeat with :func:`~amphora_heartbeat.rules.derive`."""
    views = [LoadBalancerView.from_dict(spec.view()) for spec in packets.fleet.specs]
    unwrapper = Unwrapper(KEY)
    hex_zlib = packets.by_encoding[Codec.ZLIB, Digest.HEX]

    def run() -> Timing:
        # Fresh heartbeats each pass, so that anything built lazily on first
        # access is paid for here, as a controller would pay it.
        heartbeats = [Heartbeat.from_dict(unwrapper.unwrap(p), recv_time=1.0) for p in hex_zlib]
        pairs = list(zip(heartbeats, views, strict=True))
        clock = Clock()
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
    clock = Clock()
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


def socket_cases(
    packets: Packets, rings: dict[Codec, list[list[bytes]]], settings: SocketSettings
) -> tuple[list[Case], dict[str, list[dict[str, Any]]]]:
    """Return the cases behind a loopback socket, and the senders' reports by case."""
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


def rings(fleet: Fleet, codec: Codec, variants: int) -> list[list[bytes]]:
    """Return each amphora's ring of ``variants`` pre-built packets in ``codec``."""
    return Fleet(len(fleet.specs), KEY, codec=codec).build(variants)
