"""Parse a decoded heartbeat message into its model tree (the machinery behind ``from_dict``).

Internal: call :meth:`Heartbeat.from_dict <amphora_heartbeat.models.Heartbeat.from_dict>`,
which tries :func:`parse_fast` and falls back to :func:`parse_careful`.

One explicit validation pass builds the tree as it goes; the classes carry no
validators, so a heartbeat costs only its object constructions.  Whatever a
caller passes (values JSON cannot hold, huge integers, deep nesting, keys that
are not strings), only MalformedError comes out: every message below describes
a value with _show, never with its repr.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import BadIdError, MalformedError
from .models import (
    _MEMBER_CACHE,
    Heartbeat,
    Limits,
    ListenerReport,
    ListenerStats,
    MemberStatus,
    PoolReport,
)

__all__ = ["parse_careful", "parse_fast"]


# Column limits of the tables heartbeat counters end up in: BIGINT counters and a
# 32-bit active_connections.  A value beyond them could never be stored.
_MAX_COUNTER = (1 << 63) - 1
_MAX_CONNS = (1 << 31) - 1
# Both are all-ones masks (2**n - 1), which the fast path's single OR test relies on.
# seq, ver and boot are stored as BIGINT too.
_MAX_SEQ = (1 << 63) - 1


def _show(value: Any) -> str:
    """Describe a value briefly and safely: no whole repr of something huge or deep."""
    kind = type(value)
    if kind is int:
        bits = value.bit_length()
        return repr(value) if bits <= 64 else f"an integer of {bits} bits"
    if kind is str:
        return repr(value[:40]) + ("..." if len(value) > 40 else "")
    if value is None or kind is bool or kind is float:
        return repr(value)
    return f"a {kind.__name__}"


def _key(key: Any) -> str:
    """Return a key as a path segment: a string cut to 64 characters, else its type."""
    return key[:64] if isinstance(key, str) else f"<{type(key).__name__}>"


def _count(value: Any, path: str, maximum: int) -> int:
    if type(value) is not int or value < 0 or value > maximum:
        raise MalformedError(
            path, f"expected a non-negative integer up to {maximum}, got {_show(value)}"
        )
    return value


# --- ids ---------------------------------------------------------------------------
# An id is 1 to max_id_length visible ASCII characters, "!" to "~": what a UUID's
# text form is made of (Octavia's ids are UUIDs in VARCHAR(36) columns), and
# nothing a database refuses (PostgreSQL: U+0000; any UTF-8 column: lone
# surrogates; MySQL's 3-byte utf8: characters beyond U+FFFF), nothing that forges
# or garbles a log line (control characters, bidirectional overrides), and no
# space (MySQL compares VARCHARs ignoring trailing spaces: "amp-1 " would name
# amp-1's row).


def _visible_ascii(value: str) -> bool:
    return value.isascii() and value.isprintable() and " " not in value


def _bad_char(value: str) -> str:
    for i, char in enumerate(value):
        if not "!" <= char <= "~":
            return f"U+{ord(char):04X} at {i}"
    return "nothing"  # pragma: no cover - only called for ids that have one


def _check_id(value: Any, path: str, limits: Limits, what: str = "id") -> str:
    """Return ``value`` if it is a valid id, else raise naming ``path``."""
    # A str subclass passes, as it does the fast path's set lookup.
    if not isinstance(value, str):
        raise MalformedError(path, f"expected an {what} string, got {_show(value)}")
    maximum = limits.max_id_length
    if not 0 < len(value) <= maximum:
        raise BadIdError(path, f"{what} must be 1 to {maximum} characters, got {len(value)}")
    if not _visible_ascii(value):
        raise BadIdError(path, f"{what} must be visible ASCII (! to ~), got {_bad_char(value)}")
    return value


# Ids repeat: an amphora reports the same listener, pool and member ids in every
# heartbeat.  Checking an id's characters costs about 5 ns a character, 2 us for
# a standard heartbeat's 13 ids; the fast path remembers the ids and pool keys
# that passed instead, per max_id_length, so that one set lookup (whose hash a
# dict key already carries) checks length and characters at once.  Bounded in
# count and length (a pool key holds two ids: 73 characters), and emptied when
# full, so hostile messages cost re-checks, never memory: at most about 6 MiB per
# max_id_length in use, and 4 of those.
_KNOWN_IDS_SIZE = 1 << 15
_KNOWN_ID_LENGTH = 80


class _Known:
    """The ids and pool keys the fast path found valid under one ``max_id_length``."""

    __slots__ = ("ids", "keys", "max_id")

    def __init__(self, max_id: int) -> None:
        self.max_id = max_id
        self.ids: set[str] = set()
        self.keys: set[str] = set()

    def admit_id(self, value: Any) -> bool:
        """Return whether ``value`` is a valid id; remember it if so."""
        if type(value) is not str or not 0 < len(value) <= self.max_id:
            return False
        if not _visible_ascii(value):
            return False
        self._remember(self.ids, value)
        return True

    def admit_key(self, key: Any) -> bool:
        """Return whether ``key`` is a valid pool key (each id in it valid); remember it if so."""
        if type(key) is not str or not _visible_ascii(key):
            return False
        pool_id, sep, suffix = key.rpartition(":")
        if not sep:
            pool_id = key
        if not 0 < len(pool_id) <= self.max_id or len(suffix) > self.max_id:
            return False
        self._remember(self.keys, key)
        return True

    def _remember(self, known: set[str], value: str) -> None:
        if len(value) <= _KNOWN_ID_LENGTH:
            if len(self.ids) + len(self.keys) >= _KNOWN_IDS_SIZE:
                self.ids.clear()
                self.keys.clear()
            known.add(value)


# One _Known per max_id_length in use (a few at most: they are made afresh beyond 4).
_KNOWN: dict[int, _Known] = {}


def _known(max_id: int) -> _Known:
    known = _KNOWN.get(max_id)
    if known is None:
        if len(_KNOWN) >= 4:
            _KNOWN.clear()
        known = _KNOWN[max_id] = _Known(max_id)
    return known


def _split_pool_key(key: str, path: str, limits: Limits) -> tuple[str, str | None]:
    """Return the pool id and listener id of a pool key, each checked as an id."""
    pool_id, sep, suffix = key.rpartition(":")
    if not sep:
        pool_id = key
    _check_id(pool_id, path, limits, "pool id")
    if suffix and sep:
        _check_id(suffix, path, limits, "listener id")
        return pool_id, suffix
    return pool_id, None


def _stats(raw: Any, path: str) -> ListenerStats:
    if type(raw) is not dict:
        raise MalformedError(path, "expected an object of counters")
    try:
        rx = raw["rx"]
        tx = raw["tx"]
        conns = raw["conns"]
    except KeyError as exc:
        raise MalformedError(f"{path}.{exc.args[0]}", "missing counter") from None
    # Octavia's older documentation example omits totconns and ereq: they count as 0.
    totconns = raw.get("totconns", 0)
    ereq = raw.get("ereq", 0)
    return ListenerStats(
        _count(rx, path + ".rx", _MAX_COUNTER),
        _count(tx, path + ".tx", _MAX_COUNTER),
        _count(conns, path + ".conns", _MAX_CONNS),
        _count(totconns, path + ".totconns", _MAX_COUNTER),
        _count(ereq, path + ".ereq", _MAX_COUNTER),
    )


def _members(raw: Any, path: str, limits: Limits) -> dict[str, MemberStatus]:
    if type(raw) is dict:
        items = raw.items()
    elif type(raw) is list:
        # The list-of-one-key-objects form of Octavia's older documentation.
        merged: dict[Any, Any] = {}
        for i, item in enumerate(raw):
            if type(item) is not dict:
                raise MalformedError(f"{path}[{i}]", "expected an object of member statuses")
            merged.update(item)
            if len(merged) > limits.max_members:
                break
        items = merged.items()
    else:
        raise MalformedError(path, "expected an object (or a list of objects) of member statuses")
    if len(items) > limits.max_members:
        raise MalformedError(path, f"more than {limits.max_members} members")
    parse = MemberStatus.parse
    members = {}
    for mid, status in items:
        member_path = f"{path}.{_key(mid)}"
        _check_id(mid, member_path, limits, "member id")
        if type(status) is not str:
            raise MalformedError(member_path, "expected a status string")
        members[mid] = parse(status)
    return members


def _pool(key: Any, raw: Any, listener_id: str | None, path: str, limits: Limits) -> PoolReport:
    if not isinstance(key, str):
        raise MalformedError(path, f"expected a pool key string, got {_show(key)}")
    pool_id, suffix = _split_pool_key(key, path, limits)
    if type(raw) is not dict:
        raise MalformedError(path, "expected a pool object")
    status = raw.get("status")
    if status is not None and type(status) is not str:
        raise MalformedError(path + ".status", "expected a status string")
    if "members" not in raw:
        raise MalformedError(path + ".members", "missing")
    return PoolReport(
        pool_id=pool_id,
        listener_id=suffix if listener_id is None else listener_id,
        status=status,
        members=_members(raw["members"], path + ".members", limits),
        key=key,
    )


def _pools_object(raw: Any, path: str, limits: Limits) -> dict[Any, Any]:
    if type(raw) is not dict:
        raise MalformedError(path, "expected an object of pools")
    if len(raw) > limits.max_pools:
        raise MalformedError(path, f"more than {limits.max_pools} pools")
    return raw


def parse_careful(
    cls: type[Heartbeat], d: Mapping[str, Any], recv_time: float | None, limits: Limits
) -> Heartbeat:
    """Validate any message of any version and build a ``cls``; raise naming what is wrong.

    :raises MalformedError: as :meth:`Heartbeat.from_dict
        <amphora_heartbeat.models.Heartbeat.from_dict>` documents (``BadIdError`` for an id).
    """
    amphora_id = d.get("id")
    if amphora_id is None:
        raise MalformedError("id", "expected an amphora id string, got None")
    amphora_id = _check_id(amphora_id, "id", limits, "amphora id")
    seq = _count(d.get("seq", 0), "seq", _MAX_SEQ)
    boot = _count(d["boot"], "boot", _MAX_SEQ) if "boot" in d else None
    versioned = "ver" in d
    version = _count(d["ver"], "ver", _MAX_SEQ) if versioned else 0
    raw_listeners = d.get("listeners")
    if type(raw_listeners) is not dict:
        raise MalformedError("listeners", "expected an object of listeners")
    if len(raw_listeners) > limits.max_listeners:
        raise MalformedError("listeners", f"more than {limits.max_listeners} listeners")

    nested = version < 2
    pools: dict[str, PoolReport] = {}
    listeners: dict[str, ListenerReport] = {}
    owned: dict[str, dict[str, PoolReport]] = {}
    total_pools = 0
    for lid, raw in raw_listeners.items():
        path = "listeners." + _key(lid)
        _check_id(lid, path, limits, "listener id")
        if type(raw) is not dict:
            raise MalformedError(path, "expected a listener object")
        status = raw.get("status")
        if type(status) is not str:
            raise MalformedError(path + ".status", "expected a status string")
        if "stats" not in raw:
            raise MalformedError(path + ".stats", "missing")
        stats = _stats(raw["stats"], path + ".stats")
        own: dict[str, PoolReport] = {}
        owned[lid] = own
        if nested:
            raw_pools = raw.get("pools")
            if raw_pools is not None:
                raw_pools = _pools_object(raw_pools, path + ".pools", limits)
                total_pools += len(raw_pools)
                if total_pools > limits.max_pools:
                    raise MalformedError(path + ".pools", f"more than {limits.max_pools} pools")
                for key, praw in raw_pools.items():
                    pool = _pool(key, praw, lid, f"{path}.pools.{_key(key):.80}", limits)
                    own[pool.pool_id] = pool
                    pools[pool.pool_id] = pool
        listeners[lid] = ListenerReport(listener_id=lid, status=status, stats=stats, pools=own)

    if not nested:
        if "pools" not in d:
            raise MalformedError(
                "pools", f"missing (required from version 2 on, got version {version})"
            )
        raw_pools = _pools_object(d["pools"], "pools", limits)
        for key, praw in raw_pools.items():
            pool = _pool(key, praw, None, f"pools.{_key(key):.80}", limits)
            pools.pop(pool.pool_id, None)  # the last entry wins, at its own position
            pools[pool.pool_id] = pool
        for pool in pools.values():
            if pool.listener_id is not None and pool.listener_id in owned:
                owned[pool.listener_id][pool.pool_id] = pool

    return cls(
        amphora_id=amphora_id,
        seq=seq,
        boot=boot,
        version=version,
        versioned=versioned,
        listeners=listeners,
        pools=pools,
        recv_time=recv_time,
    )


# --- the fast path -------------------------------------------------------------------
# What current amphorae send (version 2 or later, members as an object, no pool
# id twice) is validated by parse_fast in one tight pass that builds the
# tree as it goes, with no error paths prepared and objects made directly through
# their slots (each class's own __init__ costs about a third more).  At the first
# thing it does not expect it returns None (or a missing key or an uncached
# member status raises KeyError or TypeError), and parse_careful then judges the
# message from the start: it accepts exactly the same messages, builds an equal
# tree, and names the path of whatever is wrong.

_new = object.__new__


def _slot_setters(cls: type, *names: str) -> tuple[Any, ...]:
    return tuple(cls.__dict__[name].__set__ for name in names)


_STATS_SET = _slot_setters(
    ListenerStats,
    "bytes_in",
    "bytes_out",
    "active_connections",
    "total_connections",
    "request_errors",
)
_LISTENER_SET = _slot_setters(ListenerReport, "listener_id", "status", "stats", "pools")
_POOL_SET = _slot_setters(PoolReport, "pool_id", "listener_id", "status", "members", "key")
_HEARTBEAT_SET = _slot_setters(
    Heartbeat,
    "amphora_id",
    "seq",
    "boot",
    "version",
    "versioned",
    "listeners",
    "pools",
    "recv_time",
)
_NO_BOOT = object()


def parse_fast(d: dict[str, Any], recv_time: float | None, limits: Limits) -> Heartbeat | None:
    """Build the heartbeat of a message in the current agents' shape, or return None.

    Also raises ``KeyError``, ``TypeError`` (or ``BytesWarning``) for what it
    does not expect: whatever it refuses, :func:`parse_careful` judges.
    """
    # Subscripts rather than .get(): cheaper, and a KeyError ends the fast path.
    amphora_id = d["id"]
    seq = d.get("seq", 0)
    boot = d.get("boot", _NO_BOOT)
    version = d["ver"]
    raw_listeners = d["listeners"]
    raw_pools = d["pools"]
    max_id = limits.max_id_length
    # An id or pool key found in its set passed every check before; one that is
    # not is checked (and remembered) by admit_id or admit_key.
    known = _KNOWN.get(max_id) or _known(max_id)
    ids = known.ids
    keys = known.keys
    admit_id = known.admit_id
    if boot is _NO_BOOT:
        boot = None
    elif type(boot) is not int or not 0 <= boot <= _MAX_SEQ:
        return None
    if (
        type(amphora_id) is not str
        or (amphora_id not in ids and not admit_id(amphora_id))
        or type(seq) is not int
        or not 0 <= seq <= _MAX_SEQ
        or type(version) is not int
        or not 2 <= version <= _MAX_SEQ
        or type(raw_listeners) is not dict
        or len(raw_listeners) > limits.max_listeners
        or type(raw_pools) is not dict
        or len(raw_pools) > limits.max_pools
    ):
        return None
    set_in, set_out, set_conns, set_total, set_errors = _STATS_SET
    set_lid, set_lstatus, set_stats, set_lpools = _LISTENER_SET
    listeners: dict[str, ListenerReport] = {}
    owned: dict[str, dict[str, PoolReport]] = {}
    for lid, raw in raw_listeners.items():
        if type(raw) is not dict:
            return None
        status = raw["status"]
        counters = raw["stats"]
        if (
            type(status) is not str
            or type(counters) is not dict
            or (lid not in ids and not admit_id(lid))
        ):
            return None
        rx = counters["rx"]
        tx = counters["tx"]
        conns = counters["conns"]
        totconns = counters["totconns"]
        ereq = counters["ereq"]
        if (
            type(rx) is not int
            or type(tx) is not int
            or type(conns) is not int
            or type(totconns) is not int
            or type(ereq) is not int
            # Both bounds are all-ones masks: the OR of non-negative ints is
            # within one exactly when each is, and negative when any is.
            or not 0 <= rx | tx | totconns | ereq <= _MAX_COUNTER
            or not 0 <= conns <= _MAX_CONNS
        ):
            return None
        stats = _new(ListenerStats)
        set_in(stats, rx)
        set_out(stats, tx)
        set_conns(stats, conns)
        set_total(stats, totconns)
        set_errors(stats, ereq)
        own: dict[str, PoolReport] = {}
        owned[lid] = own
        report = _new(ListenerReport)
        set_lid(report, lid)
        set_lstatus(report, status)
        set_stats(report, stats)
        set_lpools(report, own)
        listeners[lid] = report

    set_pid, set_plid, set_pstatus, set_members, set_key = _POOL_SET
    max_members = limits.max_members
    statuses = _MEMBER_CACHE
    pools: dict[str, PoolReport] = {}
    for key, raw in raw_pools.items():
        if type(raw) is not dict:
            return None
        status = raw["status"]
        raw_members = raw["members"]
        if (
            (status is not None and type(status) is not str)
            or type(raw_members) is not dict
            or len(raw_members) > max_members
            or (key not in keys and not known.admit_key(key))
        ):
            return None
        pool_id, sep, suffix = key.rpartition(":")
        if not sep:
            pool_id = key
        if pool_id in pools:
            return None  # the careful path keeps the last entry, at its position
        members: dict[str, MemberStatus] = {}
        for mid, raw_status in raw_members.items():
            if (
                (mid not in ids and not admit_id(mid))
                # Only strings are looked up: hashing a deep tuple could exhaust the stack.
                or type(raw_status) is not str
            ):
                return None
            # A status never seen is a KeyError, and the careful path parses it.
            members[mid] = statuses[raw_status]
        listener_id = suffix if sep and suffix else None
        pool = _new(PoolReport)
        set_pid(pool, pool_id)
        set_plid(pool, listener_id)
        set_pstatus(pool, status)
        set_members(pool, members)
        set_key(pool, key)
        pools[pool_id] = pool
        if listener_id is not None:
            own_pools = owned.get(listener_id)
            if own_pools is not None:
                own_pools[pool_id] = pool

    heartbeat = _new(Heartbeat)
    (
        set_id,
        set_seq,
        set_boot,
        set_version,
        set_versioned,
        set_listeners,
        set_pools,
        set_recv,
    ) = _HEARTBEAT_SET
    set_id(heartbeat, amphora_id)
    set_seq(heartbeat, seq)
    set_boot(heartbeat, boot)
    set_version(heartbeat, version)
    set_versioned(heartbeat, True)
    set_listeners(heartbeat, listeners)
    set_pools(heartbeat, pools)
    set_recv(heartbeat, recv_time)
    return heartbeat
