"""Use the public API as a caller would; checked by ``mypy --strict`` in .ci/run, not run.

A line that must NOT type-check carries ``# type: ignore[code]``: with mypy's
``warn_unused_ignores`` (part of --strict) the check fails if such a line starts passing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from typing_extensions import assert_type

import amphora_heartbeat
from amphora_heartbeat import (
    Codec,
    Digest,
    HealthTracker,
    HealthUpdate,
    Heartbeat,
    HeartbeatError,
    Limits,
    ListenerReport,
    ListenerStats,
    LoadBalancerView,
    MemberKind,
    MemberStatus,
    PoolReport,
    UDPStatusGetter,
    UDPStatusSender,
    Unwrapper,
    aio,
    derive,
    get_hmac,
    unwrap_envelope,
    wrap_envelope,
)
from amphora_heartbeat.aio import DEFAULT_MAX_QUEUED_BYTES, estimated_size
from amphora_heartbeat.envelope import DEFAULT_MAX_DECOMPRESSED, Unwrapped
from amphora_heartbeat.errors import REASONS, BadIdError, MalformedError
from amphora_heartbeat.fleet import PREBUILD_BUDGET, plan_variants
from amphora_heartbeat.getter import normalize_host
from amphora_heartbeat.logs import RateLimitedLogger
from amphora_heartbeat.manager import (
    FailoverCommand,
    KeyRotation,
    ManagerConfig,
    load_config,
    read_files,
)
from amphora_heartbeat.stats import fold
from amphora_heartbeat.testing import (
    AmphoraSpec,
    build_envelope,
    build_heartbeat,
    build_message,
    make_fleet,
)
from amphora_heartbeat.tracker import (
    REPLAY_REASONS,
    FailoverDecision,
    ReplayState,
    ReplayVerdict,
    SeqGuard,
    judge_replay,
)

assert_type(amphora_heartbeat.__version__, str)

# --- envelope ------------------------------------------------------------------------
message: dict[str, Any] = {"id": "amp-1", "seq": 1, "ver": 3, "listeners": {}, "pools": {}}
datagram = wrap_envelope(message, "key", codec=Codec.ZSTD, digest=Digest.RAW)
assert_type(datagram, bytes)
assert_type(wrap_envelope(message, b"raw-key"), bytes)
assert_type(unwrap_envelope(datagram, "key"), dict[str, Any])
assert_type(unwrap_envelope(datagram, ["new", b"old"], max_decompressed=4096), dict[str, Any])
assert_type(get_hmac(b"payload", "key", digest=Digest.HEX), bytes)

unwrapper = Unwrapper(("new", "old"), max_decompressed=DEFAULT_MAX_DECOMPRESSED)
assert_type(unwrapper.unwrap(datagram), dict[str, Any])
found = unwrapper.inspect(datagram)
assert_type(found, Unwrapped)
assert_type(found.codec, Codec)
assert_type(found.digest, Digest)
assert_type(found.key_index, int)

wrap_envelope(42, "key")  # type: ignore[arg-type]
wrap_envelope(message, 42)  # type: ignore[arg-type]
wrap_envelope(message, "key", codec="zstd")  # type: ignore[arg-type]
unwrap_envelope("text", "key")  # type: ignore[arg-type]

# --- models --------------------------------------------------------------------------
heartbeat = Heartbeat.from_dict(message, recv_time=1.5, limits=Limits(max_members=16))
assert_type(heartbeat.amphora_id, str)
assert_type(heartbeat.seq, int)
assert_type(heartbeat.boot, int | None)
assert_type(heartbeat.version, int)
assert_type(heartbeat.versioned, bool)
assert_type(heartbeat.recv_time, float | None)
assert_type(heartbeat.stats_are_deltas, bool)
assert_type(heartbeat.listeners, Mapping[str, ListenerReport])
assert_type(heartbeat.pools, Mapping[str, PoolReport])
assert_type(heartbeat.to_dict(), dict[str, Any])
assert_type(heartbeat.with_recv_time(2.0), Heartbeat)
assert_type(wrap_envelope(heartbeat, "key"), bytes)

for listener in heartbeat.listeners.values():
    assert_type(listener.status, str)
    assert_type(listener.stats, ListenerStats)
    assert_type(listener.stats.bytes_in + listener.stats.bytes_out, int)
    assert_type(listener.stats + ListenerStats(), ListenerStats)
    assert_type(listener.stats.to_wire(), dict[str, int])
for pool in heartbeat.pools.values():
    assert_type(pool.status, str | None)
    assert_type(pool.listener_id, str | None)
    for member in pool.members.values():
        assert_type(member, MemberStatus)
        assert_type(member.kind, MemberKind)
        assert_type(member.raw, str)

heartbeat.seq = 2  # type: ignore[misc]
Heartbeat.from_dict(message, recv_time="now")  # type: ignore[arg-type]

# --- errors --------------------------------------------------------------------------
try:
    unwrap_envelope(datagram, "key")
except BadIdError as exc:
    assert_type(exc.path, str)
except MalformedError as exc:
    assert_type(exc.path, str)
except HeartbeatError as exc:
    assert_type(exc.reason, str)
    assert_type(exc.message, str)
assert_type(REASONS, tuple[str, ...])

# --- testing -------------------------------------------------------------------------
fleet = make_fleet(3, seed=1, listeners=2, pools=2, members=4)
assert_type(fleet, list[AmphoraSpec])
assert_type(fleet[0].message(seq=1, member_status={"m": "DOWN"}), dict[str, Any])
assert_type(fleet[0].view(), dict[str, Any])
assert_type(build_message(version=2), dict[str, Any])
assert_type(build_heartbeat(version=0, recv_time=1.0), Heartbeat)
assert_type(build_envelope(key="k", codec=Codec.ZSTD), bytes)
assert_type(plan_variants(100_000, rate=2000.0, duration=30.0, budget=PREBUILD_BUDGET), int)
plan_variants(10, 2000.0)  # type: ignore[call-arg]

# --- receiving, sending, judging -----------------------------------------------------


def on_health(heartbeat: Heartbeat, srcaddr: str) -> None:
    """Take a heartbeat, as a handler does."""


getter = UDPStatusGetter(
    ["k1", b"k2"], "127.0.0.1", 0, timeout=0.5, rcvbuf=1 << 20, health_handler=on_health
)
assert_type(getter.address, tuple[str, int])
assert_type(getter.check(), Heartbeat | None)
assert_type(getter.dorecv(), tuple[Heartbeat, str])
assert_type(getter.handle_datagram(datagram, ("127.0.0.1", 1), now=0.0), Heartbeat)
assert_type(getter.counters, Mapping[str, int])
assert_type(getter.fileno(), int)
getter.update("new-key", port=0)
UDPStatusGetter(42)  # type: ignore[arg-type]

sender = UDPStatusSender("k", ["127.0.0.1:5555", "[::1]:5555"], codec=Codec.ZSTD)
assert_type(sender.boot, int | None)
assert_type(sender.next_heartbeat(heartbeat), dict[str, Any])
UDPStatusSender("k", ["127.0.0.1:5555"], boot=1_700_000_000)
UDPStatusSender("k", ["127.0.0.1:5555"], boot=None)
UDPStatusSender("k", ["127.0.0.1:5555"], boot="later")  # type: ignore[arg-type]
assert_type(sender.dosend(message), bool)
assert_type(normalize_host("::ffff:127.0.0.1"), str)
assert_type(sender.dosend(heartbeat), bool)
assert_type(sender.counters, Mapping[str, int])

view = LoadBalancerView.from_dict({}, udp_listeners_down=["lst-1"])
update = derive(heartbeat, view, now=1.0, heartbeat_interval=10)
assert_type(update, HealthUpdate)
assert_type(update.record_heartbeat, bool)
assert_type(update.reason, str | None)
assert_type(update.members, Mapping[str, str])
assert_type(view.apply(update), LoadBalancerView)
derive(heartbeat, view)  # type: ignore[call-arg]
assert_type(fold({}, heartbeat), dict[tuple[str, str], ListenerStats])

tracker = HealthTracker(heartbeat_timeout=60, failover_threshold=5, started=0.0)
tracker.record("amp-1", 1.0)
assert_type(tracker.stale(100.0), FailoverDecision)
assert_type(tracker.stale(100.0).failover, tuple[str, ...])
assert_type(tracker.next_deadline(), float | None)
assert_type(SeqGuard().check("amp-1", 1), bool)
assert_type(SeqGuard(window=5).check("amp-1", 1, 1_700_000_000), bool)
verdict = judge_replay(ReplayState(seq=1, boot=None), heartbeat, window=3)
assert_type(verdict, ReplayVerdict)
assert_type(verdict.accepted, bool)
assert_type(verdict.reason, str)
assert_type(verdict.state, ReplayState)
assert_type(SeqGuard().judge("amp-1", heartbeat), ReplayVerdict)
assert_type(SeqGuard().state("amp-1"), ReplayState | None)
assert_type(REPLAY_REASONS, tuple[str, str, str, str])
judge_replay(None, 3)  # type: ignore[arg-type]

limited = RateLimitedLogger(logging.getLogger("controller"), interval=10.0, burst=1)
assert_type(limited.warning("member_status", "member %s reported %r", "m1", "X", now=1.0), bool)
assert_type(limited.flush(now=20.0), int)
assert_type(limited.suppressed, Mapping[str, int])

config = load_config(["/etc/octavia/octavia.conf"], {"heartbeat_timeout": 30.0})
assert_type(config, ManagerConfig)
assert_type(config.failover_threshold, int | None)
assert_type(config.differences(ManagerConfig()), list[str])
assert_type(read_files(["octavia.conf"]), dict[str, Any])
command = FailoverCommand("openstack loadbalancer amphora failover {amphora_id}", timeout=60)
assert_type(command.argv_for("amp-1", "lb-1"), list[str])
rotation = KeyRotation("old")
rotation.rotate("new", now=1.0, keep_for=60.0)
assert_type(rotation.expire(61.0), bool)
assert_type(rotation.next_expiry, float | None)


async def serve_briefly() -> None:
    """Run the asyncio server, as a caller's coroutine does."""
    async with aio.serve(
        "k", "127.0.0.1", 0, health_handler=on_health, max_queued_bytes=DEFAULT_MAX_QUEUED_BYTES
    ) as server:
        assert_type(server.address, tuple[str, int])
        assert_type(server.queued_bytes, int)
        assert_type(estimated_size(heartbeat), int)
        assert_type(server.counters, Mapping[str, int])
        await server.update("k2")
