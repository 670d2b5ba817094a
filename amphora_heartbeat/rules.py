"""Octavia's operating-status rules, as a pure function of a heartbeat and a view.

:func:`derive` takes one parsed :class:`~amphora_heartbeat.models.Heartbeat` and
the controller's current :class:`LoadBalancerView` of the amphora's load balancer,
and returns a :class:`HealthUpdate`: whether to record the heartbeat
(``amphora_health.last_update``) and the operating-status changes Octavia's health
manager would write for the load balancer, its listeners, pools and members.

Nothing here touches a database, a socket or a clock: ``now`` is an argument.
The rules follow ``spec/rules.md`` step by step, in its order, so that the same
inputs give the same statuses as Octavia's own health manager.  The module logs
(at WARNING) only statuses an amphora should never send, as Octavia does, but
rate-limited: one line per kind (listener, pool, member status) per 10 seconds
of ``now``, then how many were left out (:mod:`amphora_heartbeat.logs`), where
Octavia logs one line per listener, pool and member of every heartbeat.  The
outcome's :attr:`HealthUpdate.reason` already tells the caller why a heartbeat
was not recorded, so that is logged at DEBUG only.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import attrs

from .logs import RateLimitedLogger
from .models import Heartbeat, MemberKind, PoolReport

__all__ = [
    "DEGRADED",
    "DRAINING",
    "ERROR",
    "LISTENER_COUNT_MISMATCH",
    "NO_MONITOR",
    "OFFLINE",
    "ONLINE",
    "REASONS",
    "TOO_LATE",
    "UNKNOWN_AMPHORA",
    "HealthUpdate",
    "ListenerView",
    "LoadBalancerView",
    "MemberView",
    "PoolView",
    "derive",
]

_LOG = logging.getLogger("amphora_heartbeat.rules")
# Unknown statuses come from the network, once per listener, pool or member of
# every heartbeat: one line per kind per window, timed by derive()'s ``now``.
_STATUS_WARNINGS = RateLimitedLogger(_LOG, interval=10.0)

#: Operating statuses the rules write (Octavia's lookup values).
ONLINE = "ONLINE"
OFFLINE = "OFFLINE"
DEGRADED = "DEGRADED"
ERROR = "ERROR"
DRAINING = "DRAINING"
NO_MONITOR = "NO_MONITOR"

#: The reported listener count differs from the expected one (health not recorded).
LISTENER_COUNT_MISMATCH = "listener_count_mismatch"
#: The heartbeat waited ``heartbeat_interval`` seconds or more before being judged.
TOO_LATE = "too_late"
#: The view is empty: the amphora belongs to no live load balancer.
UNKNOWN_AMPHORA = "unknown_amphora"
#: Every reason a heartbeat is not recorded, as stable counter names.
REASONS = (LISTENER_COUNT_MISMATCH, TOO_LATE, UNKNOWN_AMPHORA)

# Member kinds, bound once: enum attribute lookups and hashing cost on the hot path.
_UP = MemberKind.UP
_DOWN = MemberKind.DOWN
_DRAIN = MemberKind.DRAIN
_MAINT = MemberKind.MAINT
_NO_CHECK = MemberKind.NO_CHECK
_RESTARTING = MemberKind.RESTARTING


# --- the view ------------------------------------------------------------------------


def _flag(value: Any, path: str) -> bool:
    # Octavia passes listener ``enabled`` straight from the row: 0/1 on some engines.
    if value is True or value is False:
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    raise TypeError(f"{path}: expected a boolean (or 0/1), got {value!r:.40}")


def _status(value: Any, path: str) -> str:
    if type(value) is not str:
        raise TypeError(f"{path}: expected a status string, got {value!r:.40}")
    return value


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{path}: expected a mapping, got {type(value).__name__}")
    return value


def _ids(ids: Iterable[str]) -> frozenset[str]:
    if isinstance(ids, str):
        raise TypeError("udp_listeners_down: expected a collection of ids, not one string")
    return frozenset(ids)


def _get(mapping: Mapping[str, Any], key: str, path: str) -> Any:
    try:
        return mapping[key]
    except KeyError:
        raise ValueError(f"{path}.{key}: missing from the view") from None


@attrs.frozen
class MemberView:
    """The controller's current record of one member."""

    #: Current operating status (any string; compared case-insensitively).
    operating_status: str


def _member_views(raw: Any, path: str) -> dict[str, MemberView]:
    members: dict[str, MemberView] = {}
    for mid, entry in _mapping(raw, path).items():
        if not isinstance(entry, Mapping):
            _mapping(entry, f"{path}.{mid}")
        status = _get(entry, "operating_status", f"{path}.{mid}")
        if type(status) is not str:
            _status(status, f"{path}.{mid}.operating_status")
        view = _MEMBER_VIEWS.get(status)
        if view is None:
            view = MemberView(status)
            if len(_MEMBER_VIEWS) < _MEMBER_VIEWS_SIZE:
                _MEMBER_VIEWS[status] = view
        members[mid] = view
    return members


# A fleet has millions of members and a handful of statuses: share one frozen view
# per status string.  Bounded, so odd strings cannot grow it without limit.
_MEMBER_VIEWS_SIZE = 64
_MEMBER_VIEWS: dict[str, MemberView] = {}


@attrs.frozen(kw_only=True)
class PoolView:
    """The controller's current record of one pool and its members."""

    operating_status: str
    #: Member id to its view.
    members: Mapping[str, MemberView] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class ListenerView:
    """The controller's current record of one listener."""

    operating_status: str
    #: ``"HTTP"``, ``"TCP"``, ``"UDP"``, ...; only ``"UDP"`` matters to the rules.
    protocol: str
    enabled: bool


@attrs.frozen(kw_only=True)
class LoadBalancerView:
    """The controller's current view of the load balancer an amphora serves.

    Build it with :meth:`from_dict` from the mapping Octavia's
    ``get_lb_for_health_update`` query returns (``spec/rules.md``).  A view whose
    :attr:`id` is None is the empty view: the amphora is unknown.
    """

    #: The load balancer's id, or None for the empty view (unknown amphora).
    id: str | None = None
    enabled: bool = False
    provisioning_status: str = ""
    operating_status: str = ""
    #: Listener id to its view, in the controller's order.
    listeners: Mapping[str, ListenerView] = attrs.field(factory=dict)
    #: Pool id to its view (every pool of the load balancer, attached or not).
    pools: Mapping[str, PoolView] = attrs.field(factory=dict)
    #: Ids of UDP listeners whose default pool is missing, has no members or no
    #: enabled member: the extra input of the pre-versioning rule.
    udp_listeners_down: frozenset[str] = attrs.field(factory=frozenset, converter=_ids)

    @property
    def known(self) -> bool:
        """Whether the amphora belongs to a live load balancer (the view is not empty)."""
        return self.id is not None

    @classmethod
    def from_dict(
        cls, mapping: Mapping[str, Any], *, udp_listeners_down: Collection[str] = ()
    ) -> LoadBalancerView:
        """Build the view from the spec's mapping (an empty mapping: unknown amphora).

        Booleans may be given as 0/1.  ``listeners`` and ``pools`` may be absent
        (none), as may a pool's ``members``.

        :raises TypeError: a value of the wrong type.
        :raises ValueError: a required key is missing.
        """
        _mapping(mapping, "view")
        if not mapping:
            return cls(udp_listeners_down=_ids(udp_listeners_down))
        lb_id = _get(mapping, "id", "view")
        if type(lb_id) is not str:
            raise TypeError(f"view.id: expected a string, got {lb_id!r:.40}")
        listeners: dict[str, ListenerView] = {}
        for lid, raw_listener in _mapping(mapping.get("listeners", {}), "view.listeners").items():
            path = f"view.listeners.{lid}"
            raw = _mapping(raw_listener, path)
            listeners[lid] = ListenerView(
                operating_status=_status(_get(raw, "operating_status", path), path),
                protocol=_status(_get(raw, "protocol", path), path + ".protocol"),
                enabled=_flag(_get(raw, "enabled", path), path + ".enabled"),
            )
        pools: dict[str, PoolView] = {}
        for pid, raw_pool in _mapping(mapping.get("pools", {}), "view.pools").items():
            path = f"view.pools.{pid}"
            raw = _mapping(raw_pool, path)
            members = _member_views(raw.get("members", {}), path + ".members")
            pools[pid] = PoolView(
                operating_status=_status(
                    _get(raw, "operating_status", path), path + ".operating_status"
                ),
                members=members,
            )
        return cls(
            id=lb_id,
            enabled=_flag(_get(mapping, "enabled", "view"), "view.enabled"),
            provisioning_status=_status(
                _get(mapping, "provisioning_status", "view"), "view.provisioning_status"
            ),
            operating_status=_status(
                _get(mapping, "operating_status", "view"), "view.operating_status"
            ),
            listeners=listeners,
            pools=pools,
            udp_listeners_down=_ids(udp_listeners_down),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the view as the spec's mapping (``{}`` for the empty view)."""
        if self.id is None:
            return {}
        out: dict[str, Any] = {
            "id": self.id,
            "enabled": self.enabled,
            "provisioning_status": self.provisioning_status,
            "operating_status": self.operating_status,
        }
        if self.listeners:
            out["listeners"] = {
                lid: {
                    "operating_status": lv.operating_status,
                    "protocol": lv.protocol,
                    "enabled": lv.enabled,
                }
                for lid, lv in self.listeners.items()
            }
        if self.pools:
            out["pools"] = {
                pid: {
                    "operating_status": pv.operating_status,
                    "members": {
                        mid: {"operating_status": mv.operating_status}
                        for mid, mv in pv.members.items()
                    },
                }
                for pid, pv in self.pools.items()
            }
        return out

    def apply(self, update: HealthUpdate) -> LoadBalancerView:
        """Return this view with ``update``'s status changes written into it.

        What a controller's database holds after it stores the update; ids the
        view does not have are ignored.
        """
        if self.id is None:
            return self
        listeners = self.listeners
        if update.listeners:
            listeners = {
                lid: attrs.evolve(lv, operating_status=update.listeners[lid])
                if lid in update.listeners
                else lv
                for lid, lv in listeners.items()
            }
        pools = self.pools
        if update.pools or update.members:
            pools = {pid: _apply_pool(pv, pid, update) for pid, pv in pools.items()}
        return attrs.evolve(
            self,
            operating_status=update.loadbalancer.get(self.id, self.operating_status),
            listeners=listeners,
            pools=pools,
        )


def _apply_pool(pv: PoolView, pid: str, update: HealthUpdate) -> PoolView:
    changes = update.members
    members = pv.members
    if changes:
        members = {
            mid: MemberView(changes[mid]) if mid in changes else mv for mid, mv in members.items()
        }
    return PoolView(operating_status=update.pools.get(pid, pv.operating_status), members=members)


# --- the outcome ---------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class HealthUpdate:
    """What one heartbeat changes: health to record and operating statuses to write.

    Each mapping holds only statuses that differ (case-insensitively) from the
    view's; an empty mapping means nothing to write.
    """

    #: The heartbeat's amphora.
    amphora_id: str
    #: Whether to set the amphora's ``last_update`` to the heartbeat's receive time.
    record_heartbeat: bool
    #: Why not, when not: one of :data:`REASONS`; None exactly when recorded.
    reason: str | None = None
    #: Load balancer id to its new operating status (at most one entry).
    loadbalancer: Mapping[str, str] = attrs.field(factory=dict)
    #: Listener id to new operating status.
    listeners: Mapping[str, str] = attrs.field(factory=dict)
    #: Pool id to new operating status.
    pools: Mapping[str, str] = attrs.field(factory=dict)
    #: Member id to new operating status.
    members: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def changed(self) -> bool:
        """Whether any operating status changes."""
        return bool(self.loadbalancer or self.listeners or self.pools or self.members)

    def to_dict(self) -> dict[str, Any]:
        """Return the outcome as plain data (ids to status strings)."""
        return {
            "record_heartbeat": self.record_heartbeat,
            "reason": self.reason,
            "loadbalancer": dict(self.loadbalancer),
            "listeners": dict(self.listeners),
            "pools": dict(self.pools),
            "members": dict(self.members),
        }


# --- the rules -----------------------------------------------------------------------


def _differs(current: str, new: str) -> bool:
    # Octavia compares lower-cased: a current "online" is not rewritten as "ONLINE".
    return current != new and current.lower() != new.lower()


def _expected_listeners(heartbeat: Heartbeat, view: LoadBalancerView) -> int | None:
    """Return how many listeners the amphora should report, or None if not checked."""
    if "PENDING" in view.provisioning_status or not view.enabled:
        return None
    listeners = view.listeners
    expected = 0
    for lv in listeners.values():
        if lv.enabled:
            expected += 1
    down = view.udp_listeners_down
    if down and not heartbeat.versioned:
        # Pre-versioning agents send no UDP listener until its default pool has an
        # enabled member; Octavia subtracts such listeners even when disabled.
        expected -= sum(1 for lid in down if lid in listeners and listeners[lid].protocol == "UDP")
    return expected


def derive(
    heartbeat: Heartbeat,
    view: LoadBalancerView,
    *,
    now: float,
    heartbeat_interval: float = 10,
) -> HealthUpdate:
    """Judge one heartbeat against the controller's view, as Octavia's health manager does.

    :param heartbeat: the parsed heartbeat; its ``recv_time`` (seconds since the
        epoch) is when it arrived, or None to count it as received at ``now``.
    :param view: the current view of the amphora's load balancer.
    :param now: the time of judging, in seconds since the epoch.
    :param heartbeat_interval: seconds; a heartbeat judged this long or longer
        after it arrived is too late: no health recorded, no status changed.
    :return: whether to record the heartbeat, why not, and the status changes.
    """
    amphora_id = heartbeat.amphora_id
    lb_id = view.id
    if lb_id is None:
        _LOG.debug("amphora %s belongs to no live load balancer", amphora_id)
        return HealthUpdate(amphora_id=amphora_id, record_heartbeat=False, reason=UNKNOWN_AMPHORA)

    # Step 1: record the heartbeat?
    reported = heartbeat.listeners
    expected = _expected_listeners(heartbeat, view)
    reason: str | None = None
    if expected is None or len(reported) == expected:
        recv_time = heartbeat.recv_time
        delay = 0.0 if recv_time is None else now - recv_time
        if delay >= heartbeat_interval:
            _LOG.debug("amphora %s heartbeat judged %.3fs after receipt", amphora_id, delay)
            return HealthUpdate(amphora_id=amphora_id, record_heartbeat=False, reason=TOO_LATE)
    else:
        _LOG.debug(
            "amphora %s reports %d listeners, %d expected", amphora_id, len(reported), expected
        )
        reason = LISTENER_COUNT_MISMATCH

    # Step 2: operating statuses, in the spec's order.
    judge = _StatusPass(ONLINE if view.enabled else OFFLINE, now)
    active = view.provisioning_status == "ACTIVE"
    nested = heartbeat.version < 2
    view_pools = view.pools
    listener_changes: dict[str, str] = {}

    for lid, lv in view.listeners.items():
        report = reported.get(lid)
        new: str | None
        if report is None:
            new = ERROR if lv.enabled and active else OFFLINE
        else:
            status = report.status
            if status == "OPEN":
                new = ONLINE
            elif status == "FULL":
                new = DEGRADED
                if judge.lb_status == ONLINE:
                    judge.lb_status = DEGRADED
            else:
                new = None
                _STATUS_WARNINGS.warning(
                    "listener_status", "listener %s reported status %.64r", lid, status, now=now
                )
        if new is not None and _differs(lv.operating_status, new):
            listener_changes[lid] = new
        if report is not None and nested:
            # Versions 0/1 nest pools in listeners; a pool is judged once, by the
            # first listener that reports it.
            judge.pools(view_pools, report.pools)

    if not nested:
        judge.pools(view_pools, heartbeat.pools)

    pool_changes = judge.pool_changes
    for pid, current in judge.maybe_offline.items():
        if pid not in judge.processed and _differs(current, OFFLINE):
            pool_changes[pid] = OFFLINE

    lb_status = judge.lb_status
    lb_changes = {lb_id: lb_status} if _differs(view.operating_status, lb_status) else {}
    return HealthUpdate(
        amphora_id=amphora_id,
        record_heartbeat=reason is None,
        reason=reason,
        loadbalancer=lb_changes,
        listeners=listener_changes,
        pools=pool_changes,
        members=judge.member_changes,
    )


class _StatusPass:
    """The mutable state of one pass over a view's pools (private to :func:`derive`)."""

    __slots__ = (
        "lb_status",
        "maybe_offline",
        "member_changes",
        "now",
        "pool_changes",
        "processed",
    )

    def __init__(self, lb_status: str, now: float) -> None:
        self.lb_status = lb_status
        self.now = now
        self.processed: set[str] = set()
        self.maybe_offline: dict[str, str] = {}
        self.pool_changes: dict[str, str] = {}
        self.member_changes: dict[str, str] = {}

    def pools(self, view_pools: Mapping[str, PoolView], reported: Mapping[str, PoolReport]) -> None:
        """Judge every view pool not yet judged against ``reported``."""
        processed = self.processed
        for pid, pv in view_pools.items():
            if pid in processed:
                continue
            report = reported.get(pid)
            if report is None:
                # Another listener may still report it (versions 0/1); decided at the end.
                self.maybe_offline[pid] = pv.operating_status
            else:
                processed.add(pid)
                self.pool(pid, pv, report)

    def pool(self, pid: str, pv: PoolView, report: PoolReport) -> None:
        """Judge one reported pool and the view's members of it."""
        status = report.status
        pool_status: str | None
        if status == "UP":
            pool_status = ONLINE
        elif status == "DOWN":
            pool_status = ERROR
            self.lb_status = ERROR
        else:
            pool_status = None
            _STATUS_WARNINGS.warning(
                "pool_status", "pool %s reported status %.64r", pid, status, now=self.now
            )

        members = report.members
        member_changes = self.member_changes
        for mid, mv in pv.members.items():
            current = mv.operating_status
            reported_member = members.get(mid)
            if reported_member is None:
                # Exact comparison, as Octavia's: only an unmonitored member keeps its status.
                if current == NO_MONITOR:
                    continue
                new = OFFLINE
            else:
                kind = reported_member.kind
                if kind is _UP:  # "UP" and transitional "UP 1/3"
                    new = ONLINE
                elif kind is _DOWN:  # "DOWN" and transitional "DOWN 2/3"
                    new = ERROR
                    if pool_status == ONLINE:
                        pool_status = DEGRADED
                        if self.lb_status == ONLINE:
                            self.lb_status = DEGRADED
                elif kind is _DRAIN:
                    new = DRAINING
                elif kind is _MAINT:
                    new = OFFLINE
                elif kind is _NO_CHECK:
                    new = NO_MONITOR
                elif kind is _RESTARTING:
                    continue  # keepalived restarting: keep the status until it knows
                else:
                    _STATUS_WARNINGS.warning(
                        "member_status",
                        "member %s reported status %.64r",
                        mid,
                        reported_member.raw,
                        now=self.now,
                    )
                    continue
            if current != new and current.lower() != new.lower():
                member_changes[mid] = new

        if pool_status is not None and _differs(pv.operating_status, pool_status):
            self.pool_changes[pid] = pool_status
