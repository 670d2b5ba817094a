"""The builders users call in their own tests: valid, deterministic, shaped as asked."""

from __future__ import annotations

import random
import uuid

import pytest

from amphora_heartbeat import Codec, Digest, Heartbeat, ListenerStats, MemberKind, Unwrapper
from amphora_heartbeat.testing import (
    AmphoraSpec,
    build_envelope,
    build_heartbeat,
    build_message,
    make_fleet,
    random_id,
    random_stats,
    standard_fleet_messages,
)


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_build_heartbeat_of_each_version(version: int) -> None:
    """build_heartbeat makes a valid heartbeat of the asked version and size."""
    hb = build_heartbeat(version=version, listeners=2, pools=3, members=4, seq=5, recv_time=1.5)
    assert isinstance(hb, Heartbeat)
    assert hb.version == version
    assert hb.versioned is (version != 0)
    assert hb.seq == 5
    assert hb.recv_time == 1.5
    assert len(hb.listeners) == 2
    assert len(hb.pools) == 3
    assert all(len(p.members) == 4 for p in hb.pools.values())
    assert all(p.listener_id in hb.listeners for p in hb.pools.values())
    assert hb.stats_are_deltas is (version >= 3)


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_build_message_shape_per_version(version: int) -> None:
    """Messages put pools in listeners before version 2 and at the top level from it."""
    msg = build_message(version=version)
    assert ("ver" in msg) is (version != 0)
    assert ("pools" in msg) is (version >= 2)
    for listener in msg["listeners"].values():
        assert ("pools" in listener) is (version < 2)
        assert set(listener["stats"]) == {"tx", "rx", "conns", "totconns", "ereq"}


def test_build_message_statuses() -> None:
    """The status arguments reach every listener, pool and member."""
    hb = build_heartbeat(
        listeners=2,
        members=3,
        listener_status="FULL",
        pool_status="DOWN",
        member_status="DOWN 2/3",
    )
    assert {lst.status for lst in hb.listeners.values()} == {"FULL"}
    assert {p.status for p in hb.pools.values()} == {"DOWN"}
    kinds = {m.kind for p in hb.pools.values() for m in p.members.values()}
    assert kinds == {MemberKind.DOWN}


def test_build_message_defaults_one_pool_per_listener() -> None:
    """Without pools=, each listener gets one pool."""
    hb = build_heartbeat(listeners=3)
    assert len(hb.pools) == 3
    assert all(len(lst.pools) == 1 for lst in hb.listeners.values())


def test_counters_are_deltas_for_version_3_and_absolute_before() -> None:
    """Version 3 counters look like small deltas; older versions like large totals."""
    v3 = build_heartbeat(version=3, listeners=4, seed=3)
    v2 = build_heartbeat(version=2, listeners=4, seed=3)
    assert max(lst.stats.bytes_in for lst in v3.listeners.values()) < 100_000
    assert max(lst.stats.bytes_in for lst in v2.listeners.values()) > 100_000


def test_builders_are_deterministic_by_seed() -> None:
    """The same seed gives the same message; another seed gives other ids."""
    assert build_message(seed=7) == build_message(seed=7)
    assert build_message(seed=7)["id"] != build_message(seed=8)["id"]
    assert make_fleet(5, seed=1) == make_fleet(5, seed=1)
    assert make_fleet(5, seed=1) != make_fleet(5, seed=2)
    assert standard_fleet_messages(3, seed=4) == standard_fleet_messages(3, seed=4)
    assert build_envelope(seed=2) == build_envelope(seed=2)


@pytest.mark.parametrize(
    ("listeners", "pools", "members"), [(2, 2, 4), (1, 3, 0), (3, 2, 1), (0, 0, 0), (2, 0, 5)]
)
def test_make_fleet_shapes(listeners: int, pools: int, members: int) -> None:
    """Each amphora has the asked listeners, pools spread over them in turn, and members."""
    fleet = make_fleet(4, seed=0, listeners=listeners, pools=pools, members=members)
    assert len(fleet) == 4
    for amphora in fleet:
        assert isinstance(amphora, AmphoraSpec)
        assert len(amphora.listeners) == listeners
        assert len(amphora.pools) == (pools if listeners else 0)
        if listeners:
            per_listener = [len(lst.pools) for lst in amphora.listeners]
            assert max(per_listener) - min(per_listener) <= 1
        assert all(len(p.members) == members for p in amphora.pools)
    every_id = [
        i
        for a in fleet
        for i in (
            a.amphora_id,
            a.load_balancer_id,
            *(lst.listener_id for lst in a.listeners),
            *(p.pool_id for p in a.pools),
            *(m for p in a.pools for m in p.members),
        )
    ]
    assert len(set(every_id)) == len(every_id)


def test_make_fleet_refuses_negative_sizes() -> None:
    """Negative fleet sizes are a ValueError."""
    with pytest.raises(ValueError, match="negative"):
        make_fleet(-1)
    with pytest.raises(ValueError, match="negative"):
        make_fleet(1, members=-1)


def test_amphora_message_overrides() -> None:
    """AmphoraSpec.message applies per-id statuses and counters and parses back."""
    amphora = make_fleet(1, seed=3)[0]
    lid = amphora.listeners[0].listener_id
    pool = amphora.pools[0]
    member = pool.members[0]
    stats = ListenerStats(1, 2, 3, 4, 5)
    msg = amphora.message(
        seq=9,
        version=2,
        stats={lid: stats},
        listener_status={lid: "FULL"},
        pool_status={pool.pool_id: "DOWN"},
        member_status={member: "MAINT"},
    )
    hb = Heartbeat.from_dict(msg)
    assert hb.seq == 9
    assert hb.listeners[lid].status == "FULL"
    assert hb.listeners[lid].stats == stats
    assert hb.pools[pool.pool_id].status == "DOWN"
    assert hb.pools[pool.pool_id].members[member].kind is MemberKind.MAINT
    other = amphora.listeners[1].listener_id
    assert hb.listeners[other].status == "OPEN"
    assert hb.listeners[other].stats == ListenerStats()


def test_view_shape() -> None:
    """view() is the rules' flat mapping: lb fields, listeners and pools, all ONLINE."""
    amphora = make_fleet(1, seed=0, listeners=2, pools=3, members=2)[0]
    view = amphora.view()
    assert view["id"] == amphora.load_balancer_id
    assert view["enabled"] is True
    assert view["provisioning_status"] == "ACTIVE"
    assert view["operating_status"] == "ONLINE"
    assert set(view["listeners"]) == {lst.listener_id for lst in amphora.listeners}
    for entry in view["listeners"].values():
        assert entry == {"operating_status": "ONLINE", "protocol": "HTTP", "enabled": True}
    assert set(view["pools"]) == {p.pool_id for p in amphora.pools}
    for pool in amphora.pools:
        entry = view["pools"][pool.pool_id]
        assert entry["operating_status"] == "ONLINE"
        assert entry["members"] == {m: {"operating_status": "ONLINE"} for m in pool.members}
    custom = amphora.view(enabled=False, provisioning_status="PENDING_UPDATE", operating_status="X")
    assert (custom["enabled"], custom["provisioning_status"], custom["operating_status"]) == (
        False,
        "PENDING_UPDATE",
        "X",
    )


def test_view_leaves_out_empty_listeners_and_pools() -> None:
    """A load balancer without listeners or pools has no such keys in its view."""
    assert set(make_fleet(1, listeners=0)[0].view()) == {
        "id",
        "enabled",
        "provisioning_status",
        "operating_status",
    }
    view = make_fleet(1, listeners=1, pools=0, protocol="UDP")[0].view()
    assert "pools" not in view
    assert next(iter(view["listeners"].values()))["protocol"] == "UDP"


def test_standard_fleet_messages_are_the_standard_packet() -> None:
    """standard_fleet_messages gives version-3 messages of 2 listeners, 2 pools, 4 members."""
    messages = standard_fleet_messages(10, seed=1)
    assert len(messages) == 10
    assert len({m["id"] for m in messages}) == 10
    for msg in messages:
        hb = Heartbeat.from_dict(msg)
        assert hb.version == 3
        assert len(hb.listeners) == 2
        assert len(hb.pools) == 2
        assert all(len(p.members) == 4 for p in hb.pools.values())
    assert Heartbeat.from_dict(standard_fleet_messages(1, version=1)[0]).version == 1


@pytest.mark.parametrize("codec", list(Codec))
@pytest.mark.parametrize("digest", list(Digest))
def test_build_envelope(codec: Codec, digest: Digest) -> None:
    """build_envelope signs a built message, a given message or a Heartbeat."""
    env = build_envelope(key="k", codec=codec, digest=digest, version=2, listeners=2)
    got = Unwrapper("k").inspect(env)
    assert (got.codec, got.digest) == (codec, digest)
    assert got.message == build_message(version=2, listeners=2)
    hb = build_heartbeat()
    assert Unwrapper("k").unwrap(build_envelope(hb, "k", codec=codec)) == hb.to_dict()
    assert Unwrapper("insecure").unwrap(build_envelope({"id": "x"})) == {"id": "x"}


def test_random_id_and_stats() -> None:
    """random_id gives UUID4 strings and random_stats plausible counters, both from the rng."""
    rng = random.Random(0)
    text = random_id(rng)
    assert uuid.UUID(text).version == 4
    assert random_id(random.Random(0)) == text
    delta = random_stats(random.Random(1), deltas=True)
    absolute = random_stats(random.Random(1), deltas=False)
    assert isinstance(delta, ListenerStats)
    assert 0 <= delta.bytes_in < 100_000
    assert 0 <= absolute.bytes_in < 100_000_000_000
    assert 0 <= delta.active_connections < 1000
