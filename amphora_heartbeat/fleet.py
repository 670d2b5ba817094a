"""Simulate a fleet of amphorae sending heartbeats: a load generator for any controller.

:func:`run_fleet` sends realistic heartbeats (version 3 by default) from ``N``
simulated amphorae at a steady rate, each amphora sending to one controller at a
time in round robin order as Octavia's amphora agent does, with some members
flapping between ``UP`` and ``DOWN`` and a fraction of the amphorae falling
silent.  It works against any controller that speaks the Octavia wire format, a
real Octavia health manager included, and it is the benchmark's sender.

Two ways to make packets, chosen by the rate:

* **fresh** (rates up to :data:`FRESH_MAX_RATE` per second): every heartbeat is
  built and signed when it is sent, so ``seq`` strictly increases.
* **pre-built** (higher rates, or ``prebuilt=True``): each amphora gets a ring of
  ``variants`` signed packets with consecutive ``seq`` values made before the
  clock starts, and the sender only cycles through them; ``seq`` wraps back by
  ``variants`` after each turn (as if the agent restarted).  Sending then costs
  one ``sendto`` per packet, so the sender is not the bottleneck of a
  receiver benchmark.  Unless told, :func:`plan_variants` chooses ``variants``
  so that a large fleet's packets fit :data:`PREBUILD_BUDGET`, and no more are
  built than the run sends.

The fleet's ids come from :func:`amphora_heartbeat.testing.make_fleet` with the
same ``seed`` and sizes, so a controller's test can build matching views.

This is an I/O module: it reads the monotonic clock and opens sockets.
"""

from __future__ import annotations

import math
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from .envelope import Codec, Digest, KeyRing, wrap_envelope
from .models import ListenerStats
from .sender import parse_address
from .testing import AmphoraSpec, make_fleet

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_VARIANTS",
    "FRESH_MAX_RATE",
    "PREBUILD_BUDGET",
    "Fleet",
    "FleetProgress",
    "FleetSummary",
    "plan_variants",
    "run_fleet",
]

#: Seconds between two heartbeats of one amphora when neither rate nor interval
#: is given (Octavia's ``heartbeat_interval`` default).
DEFAULT_INTERVAL = 10.0
#: Most pre-built packets per amphora (consecutive ``seq`` values) that
#: :func:`plan_variants` chooses in pre-built mode.
DEFAULT_VARIANTS = 8
#: Most pre-built packets in all that :func:`plan_variants` chooses.  A standard
#: packet (hex/zlib) takes about 620 bytes in memory and 50-75 µs to build here,
#: so this bounds the rings to about 240 MiB and their building to 20-30 s;
#: 100,000 amphorae get 4 packets each.
PREBUILD_BUDGET = 400_000
#: Highest rate, in packets per second, at which packets are built at send time
#: by default.  Building and signing one standard packet costs 30-70 µs here
#: (zlib at level 9 is most of it), so this keeps the sender's own work under a
#: tenth of a core.
FRESH_MAX_RATE = 1000.0
#: A member that flaps is ``DOWN`` for this many heartbeats, then ``UP`` as long.
FLAP_PERIOD = 2

# Pacing: sleep only when this far ahead of schedule (seconds).  Shorter sleeps
# overshoot on a busy machine; sending a few packets early within a millisecond
# keeps the average rate exact.
_MIN_SLEEP = 0.001
# Longest single sleep, so that a stop request is seen quickly (seconds).
_MAX_SLEEP = 0.1
# At unbounded rate, look at the clock once per this many packets.
_CHECK_EVERY = 256


def plan_variants(
    amphorae: int,
    *,
    rate: float | None = None,
    duration: float | None = None,
    count: int | None = None,
    budget: int = PREBUILD_BUDGET,
) -> int:
    """Return how many packets to pre-build per amphora for a run.

    At most :data:`DEFAULT_VARIANTS`; at most ``budget`` packets in all; no
    more than the run sends per amphora, spread evenly (``rate`` packets per
    second for ``duration`` seconds, or ``count`` packets, whichever is fewer;
    unbounded when neither bounds it), so that ``seq`` need not wrap; and at
    least 1.
    """
    if amphorae < 1:
        raise ValueError("a fleet needs at least one amphora")
    if budget < 1:
        raise ValueError("budget must be at least 1")
    variants = min(DEFAULT_VARIANTS, budget // amphorae)
    total = math.inf if count is None else count
    if rate is not None and duration is not None:
        total = min(total, rate * duration)
    if math.isfinite(total):
        variants = min(variants, math.ceil(total / amphorae))
    return max(variants, 1)


def _resolve(target: str) -> tuple[int, tuple[Any, ...]]:
    host, port = parse_address(target)
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    return family, sockaddr


@attrs.frozen
class FleetProgress:
    """Where a running fleet stands: what it has sent so far."""

    #: Packets sent.
    sent: int
    #: Sends that failed with an operating-system error (not retried).
    send_errors: int
    #: Seconds since the first packet.
    elapsed: float

    @property
    def rate(self) -> float:
        """Return the average send rate so far, in packets per second."""
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0


@attrs.frozen
class FleetSummary:
    """What a fleet run sent, how fast, and which amphorae went silent."""

    #: Packets sent.
    sent: int
    #: Sends that failed with an operating-system error.
    send_errors: int
    #: Seconds from the first packet to the end of the run.
    elapsed: float
    #: The rate asked for, in packets per second (``inf``: as fast as possible).
    target_rate: float
    #: Simulated amphorae.
    amphorae: int
    #: Ids of the amphorae that fell silent.
    silent_ids: tuple[str, ...]
    #: Packets sent to each target, in the order the targets were given.
    per_target: tuple[int, ...]
    #: Whether packets were pre-built (``seq`` wraps) rather than built at send time.
    prebuilt: bool
    #: Pre-built packets per amphora (0 when built at send time).
    variants: int
    #: Seconds spent building packets before the clock started.
    build_seconds: float
    #: Why the last failed send failed (the operating system's text), "" if none did.
    send_error: str = ""

    @property
    def rate(self) -> float:
        """Return the average send rate, in packets per second."""
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the summary as a JSON-ready mapping (``target_rate`` None when unbounded)."""
        out = attrs.asdict(self)
        out["silent_ids"] = list(self.silent_ids)
        out["per_target"] = list(self.per_target)
        out["rate"] = self.rate
        if math.isinf(self.target_rate):
            out["target_rate"] = None
        return out


class Fleet:
    """A simulated fleet: its amphorae, who flaps, who falls silent, and their packets.

    :param amphorae: number of amphorae (one load balancer each).
    :param key: the heartbeat key; with a key ring the first key signs.
    :param listeners: listeners per amphora.
    :param pools: pools per amphora, spread over its listeners.
    :param members: members per pool.
    :param codec: payload compression.
    :param digest: trailer form.
    :param message_version: message version 0-3 (version 3 carries delta counters).
    :param silent: fraction (0-1) of amphorae that fall silent.
    :param flapping: fraction (0-1) of amphorae with one member flapping.
    :param seed: seed of the ids (as :func:`~amphora_heartbeat.testing.make_fleet`)
        and of who flaps and who falls silent.
    """

    def __init__(
        self,
        amphorae: int,
        key: KeyRing,
        *,
        listeners: int = 2,
        pools: int = 2,
        members: int = 4,
        codec: Codec = Codec.ZLIB,
        digest: Digest = Digest.HEX,
        message_version: int = 3,
        silent: float = 0.0,
        flapping: float = 0.1,
        seed: int = 0,
    ) -> None:
        if amphorae < 1:
            raise ValueError("a fleet needs at least one amphora")
        if not 0 <= message_version <= 3:
            raise ValueError("message_version must be 0, 1, 2 or 3")
        if not 0.0 <= silent <= 1.0 or not 0.0 <= flapping <= 1.0:
            raise ValueError("silent and flapping are fractions between 0 and 1")
        self.key: str | bytes = key if isinstance(key, (str, bytes)) else key[0]
        self.codec = codec
        self.digest = digest
        self.message_version = message_version
        #: The simulated amphorae, as :func:`~amphora_heartbeat.testing.make_fleet` makes them.
        self.specs: list[AmphoraSpec] = make_fleet(
            amphorae, seed=seed, listeners=listeners, pools=pools, members=members
        )
        rng = random.Random(f"fleet:{seed}")
        silent_count = round(silent * amphorae)
        #: Indexes of the amphorae that fall silent.
        self.silent: frozenset[int] = frozenset(rng.sample(range(amphorae), silent_count))
        #: Amphora index to the id of its flapping member.
        self.flapping: dict[int, str] = {}
        for index, spec in enumerate(self.specs):
            member_ids = [m for p in spec.pools for m in p.members]
            if member_ids and rng.random() < flapping:
                self.flapping[index] = rng.choice(member_ids)

    def message(self, index: int, seq: int) -> dict[str, Any]:
        """Return the message amphora ``index`` sends with sequence number ``seq``."""
        spec = self.specs[index]
        deltas = self.message_version >= 3
        stats = {}
        for n, listener in enumerate(spec.listeners):
            # Cheap deterministic counters: small deltas, or absolutes that grow with seq.
            h = (index * 7919 + n * 104729 + seq * 31) % 65521
            step = 1000 + h
            stats[listener.listener_id] = ListenerStats(
                bytes_in=step * 40 if deltas else (index + 1) * 10**6 + seq * step * 40,
                bytes_out=step * 90 if deltas else (index + 1) * 10**6 + seq * step * 90,
                active_connections=h % 200,
                total_connections=step % 97 if deltas else seq * 97 + h % 97,
                request_errors=h % 3 if deltas else seq // 100,
            )
        member_status = {}
        flapper = self.flapping.get(index)
        if flapper is not None and (seq // FLAP_PERIOD) % 2:
            member_status[flapper] = "DOWN"
        return spec.message(
            seq=seq, version=self.message_version, stats=stats, member_status=member_status
        )

    def packet(self, index: int, seq: int) -> bytes:
        """Return the signed datagram amphora ``index`` sends with sequence number ``seq``."""
        return wrap_envelope(
            self.message(index, seq), self.key, codec=self.codec, digest=self.digest
        )

    def build(self, variants: int) -> list[list[bytes]]:
        """Return ``variants`` packets per amphora, with ``seq`` 0, 1, ... ``variants - 1``."""
        return [[self.packet(i, seq) for seq in range(variants)] for i in range(len(self.specs))]

    def run(
        self,
        targets: Sequence[str],
        *,
        interval: float | None = None,
        rate: float | None = None,
        duration: float | None = None,
        count: int | None = None,
        silent_after: float | None = None,
        prebuilt: bool | None = None,
        variants: int | None = None,
        rings: list[list[bytes]] | None = None,
        sources: int = 1,
        progress: Callable[[FleetProgress], None] | None = None,
        progress_interval: float = 1.0,
        stop: threading.Event | None = None,
        ready: Callable[[], object] | None = None,
    ) -> FleetSummary:
        """Send this fleet's heartbeats; the options are those of :func:`run_fleet`.

        :param rings: packets made earlier by :meth:`build` (one list per
            amphora), to reuse them across runs; implies pre-built mode.
        """
        if not targets:
            raise ValueError("need at least one target")
        if interval is not None and rate is not None:
            raise ValueError("give either interval or rate, not both")
        if interval is not None and interval <= 0:
            raise ValueError("interval must be positive")
        if rate is not None and not rate > 0:
            raise ValueError("rate must be positive")
        if variants is not None and variants < 1:
            raise ValueError("variants must be at least 1")
        if sources < 1:
            raise ValueError("sources must be at least 1")
        if rings is not None and len(rings) != len(self.specs):
            raise ValueError("rings must hold one list of packets per amphora")
        addresses = [_resolve(t) for t in targets]
        per_interval = DEFAULT_INTERVAL if interval is None and rate is None else interval
        first_rate = rate if rate is not None else len(self.specs) / (per_interval or 1.0)
        started = time.monotonic()
        if rings is None:
            if prebuilt is None:
                prebuilt = first_rate > FRESH_MAX_RATE
            if prebuilt:
                if variants is None:
                    amphorae = len(self.specs)
                    variants = plan_variants(
                        amphorae, rate=first_rate, duration=duration, count=count
                    )
                rings = self.build(variants)
            else:
                rings = []
        build_seconds = time.monotonic() - started
        sockets: dict[tuple[int, int], socket.socket] = {}
        try:
            for source in range(sources):
                for family, _ in addresses:
                    if (source, family) not in sockets:
                        sockets[source, family] = socket.socket(family, socket.SOCK_DGRAM)
            sender = _Sender(
                self,
                rings,
                [[(sockets[i, f].sendto, a) for f, a in addresses] for i in range(sources)],
                rate=rate,
                interval=per_interval,
                silent_after=silent_after,
                progress=progress,
                progress_interval=progress_interval,
                stop=stop,
            )
            if ready is not None:
                ready()
            sender.loop(duration=duration, count=count)
        finally:
            for sock in sockets.values():
                sock.close()
        return FleetSummary(
            sent=sender.sent,
            send_errors=sender.errors,
            elapsed=sender.elapsed,
            target_rate=first_rate,
            amphorae=len(self.specs),
            silent_ids=tuple(self.specs[i].amphora_id for i in sorted(self.silent)),
            per_target=tuple(sender.per_target),
            prebuilt=bool(rings),
            variants=len(rings[0]) if rings else 0,
            build_seconds=build_seconds,
            send_error=sender.error,
        )


def run_fleet(
    targets: Sequence[str],
    key: KeyRing,
    *,
    amphorae: int,
    listeners: int = 2,
    pools: int = 2,
    members: int = 4,
    interval: float | None = None,
    rate: float | None = None,
    duration: float | None = None,
    count: int | None = None,
    codec: Codec = Codec.ZLIB,
    digest: Digest = Digest.HEX,
    message_version: int = 3,
    silent: float = 0.0,
    silent_after: float | None = None,
    flapping: float = 0.1,
    seed: int = 0,
    prebuilt: bool | None = None,
    variants: int | None = None,
    sources: int = 1,
    progress: Callable[[FleetProgress], None] | None = None,
    progress_interval: float = 1.0,
    stop: threading.Event | None = None,
    ready: Callable[[], object] | None = None,
) -> FleetSummary:
    """Send heartbeats from a simulated fleet until the duration, count or stop is reached.

    :param targets: controllers as ``"ip:port"`` / ``"[ipv6]:port"``; each
        amphora sends each heartbeat to one of them, in round robin order.
    :param key: the heartbeat key (the first of a key ring signs).
    :param amphorae: number of simulated amphorae.
    :param interval: seconds between two heartbeats of one amphora (default
        :data:`DEFAULT_INTERVAL`); the fleet's rate is then amphorae / interval
        and drops as amphorae fall silent.
    :param rate: total packets per second instead (``math.inf``: as fast as
        possible); exclusive with ``interval``.
    :param duration: seconds to send for (None: until ``count`` or ``stop``).
    :param count: packets to send in all (None: no limit).
    :param silent: fraction of amphorae that fall silent.
    :param silent_after: seconds after which they fall silent (None: after the
        fleet's first round, so every amphora is heard once).
    :param flapping: fraction of amphorae with one member flapping ``UP``/``DOWN``.
    :param prebuilt: pre-build packets (True), build each at send time (False),
        or choose by the rate (None: pre-built above :data:`FRESH_MAX_RATE`).
    :param variants: pre-built packets per amphora (None: as
        :func:`plan_variants` plans them for this run).
    :param sources: sockets to send from; amphora ``i`` always sends from socket
        ``i % sources``, so a receiver that spreads datagrams by source port
        (``SO_REUSEPORT``) sees each amphora on one socket, as it sees real
        amphorae (each its own address).
    :param progress: called about every ``progress_interval`` seconds.
    :param stop: set it (from a signal handler or another thread) to end the run.
    :param ready: called once, with no argument, when the packets are built and
        the sockets open, just before the clock starts and the first packet goes
        out (so that a caller can start measuring then).
    :returns: what was sent.
    """
    fleet = Fleet(
        amphorae,
        key,
        listeners=listeners,
        pools=pools,
        members=members,
        codec=codec,
        digest=digest,
        message_version=message_version,
        silent=silent,
        flapping=flapping,
        seed=seed,
    )
    return fleet.run(
        targets,
        interval=interval,
        rate=rate,
        duration=duration,
        count=count,
        silent_after=silent_after,
        prebuilt=prebuilt,
        variants=variants,
        sources=sources,
        progress=progress,
        progress_interval=progress_interval,
        stop=stop,
        ready=ready,
    )


class _Sender:
    """The send loop of :func:`run_fleet`: pacing, round robin, silence, progress."""

    def __init__(
        self,
        fleet: Fleet,
        rings: list[list[bytes]],
        sends: list[list[tuple[Callable[[bytes, Any], int], Any]]],
        *,
        rate: float | None,
        interval: float | None,
        silent_after: float | None,
        progress: Callable[[FleetProgress], None] | None,
        progress_interval: float,
        stop: threading.Event | None,
    ) -> None:
        self.fleet = fleet
        self.rings = rings
        self.sends = sends
        self.rate = rate
        self.interval = interval
        self.silent_after = silent_after
        self.progress = progress
        self.progress_interval = progress_interval
        self.stop = stop
        n = len(fleet.specs)
        # Heartbeats sent per amphora: its next seq and, with the amphora's
        # index, which target it goes to (agents start at different points).
        self.counts = [0] * n
        self.sent = 0
        self.errors = 0
        self.error = ""
        self.per_target = [0] * len(sends[0])
        self.elapsed = 0.0
        self.done = False

    def _spacing(self, active: int) -> float:
        if self.rate is not None:
            return 0.0 if math.isinf(self.rate) else 1.0 / self.rate
        return (self.interval or DEFAULT_INTERVAL) / active

    def loop(self, *, duration: float | None, count: int | None) -> None:
        """Send until the duration or count is reached, the stop is set, or all are silent."""
        fleet = self.fleet
        everyone = list(range(len(fleet.specs)))
        speaking = [i for i in everyone if i not in fleet.silent]
        active = everyone
        start = time.monotonic()
        end = start + duration if duration is not None else math.inf
        silence_at = start + self.silent_after if self.silent_after is not None else None
        limit = count if count is not None else math.inf
        self.next_progress = start + self.progress_interval
        due = start
        first_round = True
        while not self.done and active and self.sent < limit:
            spacing = self._spacing(len(active))
            for index in active:
                if spacing:
                    # Packet n is due at start + n * spacing.
                    now = time.monotonic()
                    if due - now >= _MIN_SLEEP:
                        self._sleep(due - now, start, end)
                        now = time.monotonic()
                    self._check(now, start, end)
                    due += spacing
                elif not self.sent % _CHECK_EVERY:
                    self._check(time.monotonic(), start, end)
                if self.done or self.sent >= limit:
                    break
                self._send(index)
            now = time.monotonic()
            if now >= silence_at if silence_at is not None else first_round:
                active = speaking
            first_round = False
            if not spacing:
                due = now
        self.elapsed = time.monotonic() - start
        if self.progress is not None:
            self.progress(FleetProgress(self.sent, self.errors, self.elapsed))

    def _send(self, index: int) -> None:
        k = self.counts[index]
        self.counts[index] = k + 1
        if self.rings:
            ring = self.rings[index]
            packet = ring[k % len(ring)]
        else:
            packet = self.fleet.packet(index, k)
        # An amphora always sends from one socket of the pool (its source port).
        sends = self.sends[index % len(self.sends)]
        target = (index + k) % len(sends)
        send, address = sends[target]
        try:
            send(packet, address)
        except OSError as exc:
            # As the agent does: a failed send is counted and not retried.
            self.errors += 1
            self.error = exc.strerror or str(exc)
        else:
            self.per_target[target] += 1
        self.sent += 1

    def _check(self, now: float, start: float, end: float) -> None:
        if now >= end or (self.stop is not None and self.stop.is_set()):
            self.done = True
        if self.progress is not None and now >= self.next_progress:
            self.next_progress = now + self.progress_interval
            self.progress(FleetProgress(self.sent, self.errors, now - start))

    def _sleep(self, seconds: float, start: float, end: float) -> None:
        # Sleep in short steps so that a stop request, the end or a progress
        # report due (a slow fleet waits long between packets) is seen soon.
        until = min(time.monotonic() + seconds, end)
        while not self.done:
            now = time.monotonic()
            left = until - now
            if left <= 0:
                return
            self._check(now, start, end)
            if self.done:
                return
            time.sleep(min(left, _MAX_SLEEP))
