"""The heartbeat model tree: what one amphora reports, parsed from every message version.

:meth:`Heartbeat.from_dict` validates a decoded message in one pass and builds an
immutable, normalised tree: the same shape whatever the message version (0, 1, 2
or 3), pools flattened and keyed by pool id, members always a mapping.
:meth:`Heartbeat.to_dict` writes the tree back in its version's wire shape.
The parsing itself lives in the internal module ``amphora_heartbeat.parse``.

Statuses are kept as the raw strings the amphora sent; any string is valid
here, and :mod:`amphora_heartbeat.rules` decides what each one means.  Ids are
not: an amphora, listener, pool or member id must be 1 to
:attr:`Limits.max_id_length` (36) visible ASCII characters, ``!`` to ``~``, or
the message is refused as ``bad_id``
(:class:`~amphora_heartbeat.errors.BadIdError`), so that no id a database
cannot hold, or a log line cannot show as it is, gets past parsing.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

from .errors import MalformedError

__all__ = [
    "Heartbeat",
    "Limits",
    "ListenerReport",
    "ListenerStats",
    "MemberKind",
    "MemberStatus",
    "PoolReport",
]


@attrs.frozen(kw_only=True)
class Limits:
    """Bounds on one heartbeat's contents; a message beyond any is refused.

    Beyond a count it is ``malformed``; an id beyond its length is ``bad_id``.

    The defaults are far above what a real load balancer reports (Octavia puts
    no bound at all; its datagrams are at most 64 KiB compressed) and low enough
    that one message cannot make a receiver build millions of objects.
    """

    #: Most listeners in one heartbeat.
    max_listeners: int = 1024
    #: Most pools in one heartbeat (all listeners together).
    max_pools: int = 2048
    #: Most members in one pool.
    max_members: int = 8192
    #: Longest amphora, listener, pool or member id, in characters (a pool key
    #: ``"<pool_id>:<listener_id>"`` holds two).  Octavia's id columns are
    #: ``VARCHAR(36)``, a UUID's text form: a longer id could never be stored.
    max_id_length: int = 36


_DEFAULT_LIMITS = Limits()


@attrs.frozen
class ListenerStats:
    """Traffic counters of one listener, with Octavia's column names.

    In version 3 messages every counter but ``active_connections`` is a delta
    since the previous heartbeat; in older versions all are absolute.
    """

    #: Bytes received (the wire's ``rx``).
    bytes_in: int = 0
    #: Bytes sent (``tx``).
    bytes_out: int = 0
    #: Connections open now (``conns``); always absolute.
    active_connections: int = 0
    #: Connections accepted (``totconns``).
    total_connections: int = 0
    #: Request errors (``ereq``).
    request_errors: int = 0

    def __add__(self, other: ListenerStats) -> ListenerStats:
        """Return the field-by-field sum of two sets of counters."""
        if not isinstance(other, ListenerStats):
            return NotImplemented
        return ListenerStats(
            self.bytes_in + other.bytes_in,
            self.bytes_out + other.bytes_out,
            self.active_connections + other.active_connections,
            self.total_connections + other.total_connections,
            self.request_errors + other.request_errors,
        )

    def to_wire(self) -> dict[str, int]:
        """Return the counters under their wire names (``tx``, ``rx``, ...)."""
        return {
            "tx": self.bytes_out,
            "rx": self.bytes_in,
            "conns": self.active_connections,
            "totconns": self.total_connections,
            "ereq": self.request_errors,
        }


class MemberKind(enum.Enum):
    """What a member status string means, whatever its exact spelling."""

    UP = "UP"
    DOWN = "DOWN"
    DRAIN = "DRAIN"
    MAINT = "MAINT"
    NO_CHECK = "no check"
    RESTARTING = "RESTARTING"
    UNKNOWN = "UNKNOWN"


def _member_kind(raw: str) -> MemberKind:
    # Transitional HAProxy states such as "UP 1/3" or "DOWN 2/3" count by prefix.
    if raw.startswith("UP"):
        return MemberKind.UP
    if raw.startswith("DOWN"):
        return MemberKind.DOWN
    if raw == "DRAIN":
        return MemberKind.DRAIN
    if raw == "MAINT":
        return MemberKind.MAINT
    if raw == "no check":
        return MemberKind.NO_CHECK
    if raw == "RESTARTING":
        return MemberKind.RESTARTING
    return MemberKind.UNKNOWN


@attrs.frozen
class MemberStatus:
    """One member's reported status: the raw string and what it means."""

    #: The string the amphora sent, e.g. ``"UP"``, ``"DOWN 2/3"``, ``"no check"``.
    raw: str
    #: Its meaning; :attr:`MemberKind.UNKNOWN` for strings Octavia does not know.
    kind: MemberKind

    @classmethod
    def parse(cls, raw: str) -> MemberStatus:
        """Return the status for ``raw`` (shared instances for common strings)."""
        status = _MEMBER_CACHE.get(raw)
        if status is None:
            status = cls(raw, _member_kind(raw))
            if len(_MEMBER_CACHE) < _MEMBER_CACHE_SIZE:
                _MEMBER_CACHE[raw] = status
        return status


# Member status strings repeat endlessly; sharing instances saves an object per
# member.  Bounded so hostile messages cannot grow it without limit.
_MEMBER_CACHE_SIZE = 256
_MEMBER_CACHE: dict[str, MemberStatus] = {}


@attrs.frozen(kw_only=True)
class PoolReport:
    """One pool as reported: its status and each member's status."""

    #: The pool id (the key up to its last ``:``).
    pool_id: str
    #: The listener the pool is reported for, or None when the key names none.
    listener_id: str | None
    #: ``"UP"``/``"DOWN"`` as sent, or None when the pool entry has no status.
    status: str | None
    #: Member id to reported status.
    members: Mapping[str, MemberStatus]
    #: The key the pool had on the wire (``"<pool_id>:<listener_id>"`` or bare).
    key: str = attrs.field(eq=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Return the pool entry in wire shape (members as a mapping)."""
        entry: dict[str, Any] = {}
        if self.status is not None:
            entry["status"] = self.status
        entry["members"] = {mid: m.raw for mid, m in self.members.items()}
        return entry


@attrs.frozen(kw_only=True)
class ListenerReport:
    """One listener as reported: status, traffic counters and its pools."""

    listener_id: str
    #: ``"OPEN"`` or ``"FULL"`` from a healthy amphora; any string is kept.
    status: str
    stats: ListenerStats
    #: The pools reported for this listener, keyed by pool id.
    pools: Mapping[str, PoolReport]


@attrs.frozen(kw_only=True)
class Heartbeat:
    """One heartbeat: which amphora, which message, and what it reports.

    Build it with :meth:`from_dict`; equality ignores :attr:`recv_time`.
    """

    #: The amphora's id (the message's ``id``).
    amphora_id: str
    #: Sequence number, counting from 0 at the agent's start.
    seq: int = 0
    #: When the sending agent started, in whole seconds since the epoch: the
    #: optional ``boot`` key that this library's sender adds, so that a replay
    #: guard can tell a restart from a replay (see
    #: :func:`~amphora_heartbeat.tracker.judge_replay`).  None when the message
    #: has no ``boot``, as Octavia's own agents' messages never do; Octavia's
    #: receiver ignores the key.
    boot: int | None = None
    #: The message version (``ver``); 0 when the key is absent.
    version: int = 0
    #: Whether the message had a ``ver`` key at all (the pre-versioning rule needs it).
    versioned: bool = False
    #: Reported listeners, keyed by listener id.
    listeners: Mapping[str, ListenerReport] = attrs.field(factory=dict)
    #: Every reported pool, keyed by pool id (the last entry wins for a shared id).
    pools: Mapping[str, PoolReport] = attrs.field(factory=dict)
    #: When the heartbeat was received, in seconds since the epoch, if known.
    recv_time: float | None = attrs.field(default=None, eq=False)

    @property
    def stats_are_deltas(self) -> bool:
        """Whether the counters are deltas (version 3 and later) rather than absolutes."""
        return self.version >= 3

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        *,
        recv_time: float | None = None,
        limits: Limits = _DEFAULT_LIMITS,
    ) -> Heartbeat:
        """Validate a decoded message of any version and build its tree.

        :param d: the message, as :func:`~amphora_heartbeat.envelope.unwrap_envelope`
            returns it.
        :param recv_time: when it was received (seconds since the epoch).
        :param limits: bounds on its contents.
        :raises MalformedError: a wrong type, a missing field or a value over a
            limit, naming the path of what is wrong;
            :class:`~amphora_heartbeat.errors.BadIdError`, its subclass, for an id
            no database could hold.  Nothing else, whatever ``d`` holds (of
            Python's own types: huge integers, deep nesting, keys that are not
            strings, values JSON cannot express).
        """
        if type(d) is dict and cls is Heartbeat:
            try:
                heartbeat = parse_fast(d, recv_time, limits)
            except (KeyError, TypeError, BytesWarning):
                # A key current agents always send is missing, a member status
                # is new, or something is not the type it should be (a bytes key
                # meets a str one only under ``python -bb``): the careful path judges.
                heartbeat = None
            if heartbeat is not None:
                return heartbeat
        if not isinstance(d, Mapping):
            raise MalformedError("", f"a message must be an object, not {type(d).__name__}")
        return parse_careful(cls, d, recv_time, limits)

    def with_recv_time(self, recv_time: float | None) -> Heartbeat:
        """Return this heartbeat stamped with another receive time."""
        return attrs.evolve(self, recv_time=recv_time)

    def to_dict(self) -> dict[str, Any]:
        """Return the message in its own version's wire shape.

        Members come out as mappings and every listener carries all five
        counters; ``boot`` only when the message had it; ``recv_time`` is not
        part of the message.
        """
        message: dict[str, Any] = {"id": self.amphora_id, "seq": self.seq}
        if self.boot is not None:
            message["boot"] = self.boot
        if self.versioned:
            message["ver"] = self.version
        nested = self.version < 2
        listeners: dict[str, Any] = {}
        for lid, listener in self.listeners.items():
            entry: dict[str, Any] = {"status": listener.status, "stats": listener.stats.to_wire()}
            if nested:
                entry["pools"] = {p.key: p.to_dict() for p in listener.pools.values()}
            listeners[lid] = entry
        message["listeners"] = listeners
        if not nested:
            message["pools"] = {p.key: p.to_dict() for p in self.pools.values()}
        return message


# The parsers build the classes above, so they are imported once those exist (the
# package imports this module before amphora_heartbeat.parse).  As module globals they
# cost from_dict no more than functions defined here would.
from .parse import parse_careful, parse_fast  # noqa: E402
