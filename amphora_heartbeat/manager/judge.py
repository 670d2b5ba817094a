"""Judging a batch: heartbeats and stored views in, one tick's write out.

Pure apart from the clock passed in: each heartbeat is judged in arrival order by
:func:`~amphora_heartbeat.rules.derive` against its load balancer's view as the
heartbeats before it left it, and judged at its receive time, so waiting in a
backlog never makes it late.  So a batch gives what judging its heartbeats one
by one would, and only what changed is written.

What a key holder cannot make the manager write:

* statistics rows for listeners that are not its load balancer's (counted
  ``stats_unknown_listener``);
* the statistics deltas of a sequence number already counted (the replay guard
  of :mod:`.replay`, counted ``stats_replayed``);
* with ``check_source``, anything at all for an amphora whose ``lb_network_ip``
  is not the heartbeat's source address (counted ``source_mismatch``).
"""

from __future__ import annotations

import collections
import functools
import ipaddress
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from ..models import Heartbeat, ListenerStats
from ..rules import LoadBalancerView, derive
from ..stats import fold
from ..store import StatsUpsert, StoredView, TickWrite
from .replay import SeqState, admit

__all__ = ["VIEW_CACHE_SIZE", "Entry", "Judgement", "ViewCache", "items", "judge", "same_address"]

#: A received heartbeat, the address it came from (None: not known), and its size
#: in items (see :func:`items`).
Entry = tuple[Heartbeat, str | None, int]


def items(heartbeat: Heartbeat) -> int:
    """Return the size of ``heartbeat`` in items: its members, four per pool and listener, eight.

    What a parsed heartbeat holds in memory grows with this count: about
    130 bytes per item at most (a member's id and its dict slot; a pool or a
    listener is about four members' worth).  The backlog is bounded in items.
    """
    pools = heartbeat.pools
    members = sum(map(len, map(_members, pools.values())))
    return members + 4 * (len(pools) + len(heartbeat.listeners)) + 8


_members = operator.attrgetter("members")

#: Views kept between ticks (by load balancer id); all are forgotten when this
#: many.  A kept view of the benchmarks' load balancer (2 listeners, 2 pools of 4
#: members) holds about 4.5 KB (the stored mapping it was built from and the
#: rules' view); building one costs about 8.5 µs, comparing about 0.4 µs.  So the
#: cache stays under about 90 MB whatever the fleet's size; a fleet larger than it
#: rebuilds every view (the cache only saves CPU, it never changes a result).
VIEW_CACHE_SIZE = 20_000


class ViewCache:
    """The rules' views built in earlier ticks, reused while the database says the same."""

    def __init__(self, size: int = VIEW_CACHE_SIZE) -> None:
        """Keep at most ``size`` views (all are forgotten when it is reached)."""
        self.size = size
        self._views: dict[str, tuple[Mapping[str, Any], frozenset[str], LoadBalancerView]] = {}

    def view(self, sv: StoredView) -> LoadBalancerView:
        """Return the rules' view of ``sv``, reusing the last one built if nothing changed."""
        cached = self._views.get(sv.load_balancer_id)
        # Comparing two small mappings costs a fraction of building and
        # validating a view, and most load balancers do not change between ticks;
        # a store that reuses its parsed views (store.reuse) hands the same object.
        if (
            cached is not None
            and (cached[0] is sv.view or cached[0] == sv.view)
            and cached[1] == sv.udp_listeners_down
        ):
            return cached[2]
        view = LoadBalancerView.from_dict(sv.view, udp_listeners_down=sv.udp_listeners_down)
        if len(self._views) >= self.size:
            self._views.clear()
        self._views[sv.load_balancer_id] = (sv.view, sv.udp_listeners_down, view)
        return view


@functools.lru_cache(maxsize=65_536)
def _address(text: str) -> str:
    """Return ``text`` as one canonical address string (IPv4-mapped IPv6 as IPv4)."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def same_address(source: str, expected: str) -> bool:
    """Tell whether ``source`` is the address ``expected``; ``::ffff:a.b.c.d`` is ``a.b.c.d``."""
    return source == expected or _address(source) == _address(expected)


def _boot(heartbeat: Heartbeat) -> int:
    """Return the agent's boot time the heartbeat carries (seconds), 0 if it carries none."""
    return heartbeat.boot or 0


@attrs.frozen
class Judgement:
    """What judging a batch decided: the write, and counts by outcome."""

    write: TickWrite
    #: ``heartbeats_recorded``, ``unknown_amphora``, ``not_recorded.<reason>``, ``status_changes``.
    counts: Mapping[str, int]


@attrs.define
class _Changes:
    load_balancers: dict[str, str] = attrs.Factory(dict)
    listeners: dict[str, str] = attrs.Factory(dict)
    pools: dict[str, str] = attrs.Factory(dict)
    members: dict[str, str] = attrs.Factory(dict)

    def __len__(self) -> int:
        return len(self.load_balancers) + len(self.listeners) + len(self.pools) + len(self.members)

    def add(self, before: LoadBalancerView, after: LoadBalancerView) -> None:
        """Add every status that differs between two views of one load balancer."""
        if after.id is not None and after.operating_status != before.operating_status:
            self.load_balancers[after.id] = after.operating_status
        for lid, lv in after.listeners.items():
            if lv.operating_status != before.listeners[lid].operating_status:
                self.listeners[lid] = lv.operating_status
        for pid, pv in after.pools.items():
            old = before.pools[pid]
            if pv.operating_status != old.operating_status:
                self.pools[pid] = pv.operating_status
            for mid, mv in pv.members.items():
                if mv.operating_status != old.members[mid].operating_status:
                    self.members[mid] = mv.operating_status


@attrs.define
class _Tally:
    """The state of judging one batch, heartbeat by heartbeat."""

    views: ViewCache
    heartbeat_interval: float
    check_source: bool = False
    counts: collections.Counter[str] = attrs.Factory(collections.Counter)
    original: dict[str, LoadBalancerView] = attrs.Factory(dict)
    current: dict[str, LoadBalancerView] = attrs.Factory(dict)
    health: dict[str, float] = attrs.Factory(dict)
    reallocated: set[str] = attrs.Factory(set)
    rows: dict[tuple[str, str], ListenerStats] = attrs.Factory(dict)
    replaced: set[tuple[str, str]] = attrs.Factory(set)
    seqs: dict[str, tuple[SeqState | None, SeqState]] = attrs.Factory(dict)

    def add(self, heartbeat: Heartbeat, source: str | None, sv: StoredView) -> None:
        """Judge one heartbeat of a known amphora against its load balancer's current view."""
        if (
            self.check_source
            and sv.lb_network_ip
            and not (source is not None and same_address(source, sv.lb_network_ip))
        ):
            self.counts["source_mismatch"] += 1
            return
        lb_id = sv.load_balancer_id
        view = self.current.get(lb_id)
        if view is None:
            view = self.original[lb_id] = self.current[lb_id] = self.views.view(sv)
        recv_time: float = heartbeat.recv_time  # type: ignore[assignment]
        update = derive(heartbeat, view, now=recv_time, heartbeat_interval=self.heartbeat_interval)
        if update.changed:
            self.current[lb_id] = view.apply(update)
        if update.record_heartbeat:
            self._record(heartbeat.amphora_id, recv_time, sv)
        else:
            self.counts["not_recorded." + str(update.reason)] += 1
        if heartbeat.listeners:
            self._fold(heartbeat, sv, view)  # updates change statuses, not listeners

    def _fold(self, heartbeat: Heartbeat, sv: StoredView, view: LoadBalancerView) -> None:
        """Fold the heartbeat's statistics of the load balancer's own listeners, once per seq."""
        deltas = heartbeat.stats_are_deltas
        if deltas and not self._admit(heartbeat, sv):
            self.counts["stats_replayed"] += 1
            return
        known = view.listeners
        for key, row in fold(self.rows, heartbeat).items():
            if key[0] not in known:
                self.counts["stats_unknown_listener"] += 1
                continue
            self.rows[key] = row
            if not deltas:
                self.replaced.add(key)

    def _admit(self, heartbeat: Heartbeat, sv: StoredView) -> bool:
        amphora_id = heartbeat.amphora_id
        seen = self.seqs.get(amphora_id)
        old = sv.seq if seen is None else seen[0]
        ok, new = admit(sv.seq if seen is None else seen[1], heartbeat.seq, _boot(heartbeat))
        if ok:
            self.seqs[amphora_id] = (old, new)
        return ok

    def _record(self, amphora_id: str, recv_time: float, sv: StoredView) -> None:
        self.counts["heartbeats_recorded"] += 1
        if recv_time > self.health.get(amphora_id, float("-inf")):
            self.health[amphora_id] = recv_time
        if sv.amphora_status == "FAILOVER_STOPPED":
            self.reallocated.add(amphora_id)

    def write(self, now: float) -> TickWrite:
        """Return the tick's write: changed statuses, health rows, statistics."""
        changes = _Changes()
        for lb_id, view in self.current.items():
            before = self.original[lb_id]
            if view is not before:
                changes.add(before, view)
        self.counts["status_changes"] += len(changes)
        return TickWrite(
            now=now,
            health=self.health,
            load_balancers=changes.load_balancers,
            listeners=changes.listeners,
            pools=changes.pools,
            members=changes.members,
            stats=[
                StatsUpsert(k[0], k[1], s, add=k not in self.replaced) for k, s in self.rows.items()
            ],
            reallocated=self.reallocated,
            seqs=self.seqs,
        )


def judge(
    batch: Sequence[Entry],
    stored: Mapping[str, StoredView],
    views: ViewCache,
    *,
    heartbeat_interval: float,
    clock: Callable[[], float],
    check_source: bool = False,
) -> Judgement:
    """Judge a tick's heartbeats (with their sources) in arrival order against ``stored``.

    A heartbeat of an amphora missing from ``stored`` (unknown, or deleted)
    writes nothing; with ``check_source``, nor does one whose source is not its
    amphora's ``lb_network_ip`` (when that is set).  ``clock()`` gives the
    written rows' ``updated_at``.
    """
    tally = _Tally(views, heartbeat_interval, check_source)
    for heartbeat, source, _ in batch:
        sv = stored.get(heartbeat.amphora_id)
        if sv is None:
            tally.counts["unknown_amphora"] += 1
        else:
            tally.add(heartbeat, source, sv)
    write = tally.write(clock())
    return Judgement(write, tally.counts)
