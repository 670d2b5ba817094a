"""Builders for heartbeats, envelopes and simulated fleets, for tests and load generators.

Use them in your own unit tests of payload handling::

    from amphora_heartbeat.testing import build_heartbeat, build_envelope

    hb = build_heartbeat(version=3, listeners=2, members=4, member_status="DOWN")
    datagram = build_envelope(hb, key="secret")

Everything is deterministic for a given ``seed``: ids, counters and the shape of
a fleet come from :class:`random.Random` seeded by the caller.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping
from typing import Any

import attrs

from .envelope import Codec, Digest, wrap_envelope
from .models import Heartbeat, ListenerStats

__all__ = [
    "AmphoraSpec",
    "ListenerSpec",
    "PoolSpec",
    "build_envelope",
    "build_heartbeat",
    "build_message",
    "make_fleet",
    "random_id",
    "random_stats",
    "standard_fleet_messages",
]


def random_id(rng: random.Random) -> str:
    """Return a random UUID4 string drawn from ``rng``."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@attrs.frozen
class PoolSpec:
    """A simulated pool and the ids of its members."""

    pool_id: str
    members: tuple[str, ...]


@attrs.frozen
class ListenerSpec:
    """A simulated listener, its protocol and the pools it serves (the first is the default)."""

    listener_id: str
    protocol: str
    pools: tuple[PoolSpec, ...]


@attrs.frozen
class AmphoraSpec:
    """A simulated amphora of one load balancer: the ids a heartbeat and a view share."""

    amphora_id: str
    load_balancer_id: str
    listeners: tuple[ListenerSpec, ...]

    @property
    def pools(self) -> tuple[PoolSpec, ...]:
        """Every pool of the load balancer."""
        return tuple(p for listener in self.listeners for p in listener.pools)

    def message(
        self,
        *,
        seq: int = 0,
        version: int = 3,
        stats: Mapping[str, ListenerStats] | None = None,
        listener_status: Mapping[str, str] | None = None,
        pool_status: Mapping[str, str] | None = None,
        member_status: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Return the heartbeat message this amphora would send.

        Statuses default to ``OPEN`` / ``UP`` / ``UP``; the mappings override them
        per listener, pool or member id.  ``stats`` gives counters per listener
        (zeros otherwise).  ``version`` 0 leaves out the ``ver`` key.
        """
        listener_status = listener_status or {}
        pool_status = pool_status or {}
        member_status = member_status or {}
        stats = stats or {}
        listeners: dict[str, Any] = {}
        pools: dict[str, Any] = {}
        for listener in self.listeners:
            entry: dict[str, Any] = {
                "status": listener_status.get(listener.listener_id, "OPEN"),
                "stats": stats.get(listener.listener_id, ListenerStats()).to_wire(),
            }
            own = {}
            for pool in listener.pools:
                own[f"{pool.pool_id}:{listener.listener_id}"] = {
                    "status": pool_status.get(pool.pool_id, "UP"),
                    "members": {m: member_status.get(m, "UP") for m in pool.members},
                }
            if version < 2:
                entry["pools"] = own
            else:
                pools.update(own)
            listeners[listener.listener_id] = entry
        message: dict[str, Any] = {"id": self.amphora_id, "seq": seq}
        if version:
            message["ver"] = version
        message["listeners"] = listeners
        if version >= 2:
            message["pools"] = pools
        return message

    def view(
        self,
        *,
        enabled: bool = True,
        provisioning_status: str = "ACTIVE",
        operating_status: str = "ONLINE",
    ) -> dict[str, Any]:
        """Return the controller's view of this load balancer, everything ``ONLINE``."""
        view: dict[str, Any] = {
            "id": self.load_balancer_id,
            "enabled": enabled,
            "provisioning_status": provisioning_status,
            "operating_status": operating_status,
        }
        if self.listeners:
            view["listeners"] = {
                lst.listener_id: {
                    "operating_status": "ONLINE",
                    "protocol": lst.protocol,
                    "enabled": True,
                }
                for lst in self.listeners
            }
        if self.pools:
            view["pools"] = {
                p.pool_id: {
                    "operating_status": "ONLINE",
                    "members": {m: {"operating_status": "ONLINE"} for m in p.members},
                }
                for p in self.pools
            }
        return view


def make_fleet(
    amphorae: int,
    *,
    seed: int = 0,
    listeners: int = 2,
    pools: int = 2,
    members: int = 4,
    protocol: str = "HTTP",
) -> list[AmphoraSpec]:
    """Return ``amphorae`` simulated amphorae, one load balancer each.

    Each has ``listeners`` listeners and ``pools`` pools (spread over the
    listeners in turn) of ``members`` members.  The standard packet of the
    benchmarks is ``listeners=2, pools=2, members=4``.
    """
    if min(amphorae, listeners, pools, members) < 0:
        raise ValueError("fleet sizes must not be negative")
    rng = random.Random(seed)
    fleet = []
    for _ in range(amphorae):
        amphora_id = random_id(rng)
        lb_id = random_id(rng)
        listener_ids = [random_id(rng) for _ in range(listeners)]
        owned: list[list[PoolSpec]] = [[] for _ in range(listeners)]
        for i in range(pools if listeners else 0):
            pool = PoolSpec(random_id(rng), tuple(random_id(rng) for _ in range(members)))
            owned[i % listeners].append(pool)
        fleet.append(
            AmphoraSpec(
                amphora_id,
                lb_id,
                tuple(
                    ListenerSpec(lid, protocol, tuple(own))
                    for lid, own in zip(listener_ids, owned, strict=True)
                ),
            )
        )
    return fleet


def random_stats(rng: random.Random, *, deltas: bool) -> ListenerStats:
    """Return plausible counters: small deltas, or large absolute values."""
    scale = 1_000 if deltas else 1_000_000_000
    return ListenerStats(
        bytes_in=rng.randrange(scale * 100),
        bytes_out=rng.randrange(scale * 100),
        active_connections=rng.randrange(1000),
        total_connections=rng.randrange(scale),
        request_errors=rng.randrange(50),
    )


def build_message(
    *,
    version: int = 3,
    seq: int = 0,
    listeners: int = 1,
    pools: int | None = None,
    members: int = 2,
    listener_status: str = "OPEN",
    pool_status: str = "UP",
    member_status: str = "UP",
    seed: int = 0,
) -> dict[str, Any]:
    """Return one heartbeat message of any version in a line.

    ``pools`` defaults to one per listener.  Every listener, pool and member gets
    the given status; counters are random (from ``seed``), deltas for version 3
    and later.
    """
    amphora = make_fleet(
        1,
        seed=seed,
        listeners=listeners,
        pools=listeners if pools is None else pools,
        members=members,
    )[0]
    rng = random.Random(seed + 1)
    return amphora.message(
        seq=seq,
        version=version,
        stats={
            lst.listener_id: random_stats(rng, deltas=version >= 3) for lst in amphora.listeners
        },
        listener_status={lst.listener_id: listener_status for lst in amphora.listeners},
        pool_status={p.pool_id: pool_status for p in amphora.pools},
        member_status={m: member_status for p in amphora.pools for m in p.members},
    )


def build_heartbeat(*, recv_time: float | None = None, **options: Any) -> Heartbeat:
    """Return :func:`build_message` parsed into a :class:`Heartbeat`."""
    return Heartbeat.from_dict(build_message(**options), recv_time=recv_time)


def build_envelope(
    message: Mapping[str, Any] | Heartbeat | None = None,
    key: str | bytes = "insecure",
    *,
    codec: Codec = Codec.ZLIB,
    digest: Digest = Digest.HEX,
    **options: Any,
) -> bytes:
    """Return a signed datagram for ``message`` (or for ``build_message(**options)``)."""
    if message is None:
        message = build_message(**options)
    return wrap_envelope(message, key, codec=codec, digest=digest)


def standard_fleet_messages(
    amphorae: int, *, seed: int = 0, version: int = 3
) -> list[dict[str, Any]]:
    """Return one standard-packet message (2 listeners, 2 pools, 4 members) per amphora."""
    rng = random.Random(seed)
    return [
        amphora.message(
            seq=rng.randrange(10_000),
            version=version,
            stats={
                lst.listener_id: random_stats(rng, deltas=version >= 3) for lst in amphora.listeners
            },
        )
        for amphora in make_fleet(amphorae, seed=seed)
    ]
