"""The heartbeat model tree: every version, every shape, every malformed case, round trips."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amphora_heartbeat import (
    Heartbeat,
    Limits,
    ListenerReport,
    ListenerStats,
    MemberKind,
    MemberStatus,
    PoolReport,
)
from amphora_heartbeat.errors import BadIdError, MalformedError
from amphora_heartbeat.testing import build_heartbeat, build_message

STATS = {"tx": 1, "rx": 2, "conns": 3, "totconns": 4, "ereq": 5}


def message(version: int, *, versioned: bool | None = None) -> dict[str, Any]:
    """Return a small canonical message: listener l1 with pool p1 (members m1, m2)."""
    if versioned is None:
        versioned = version != 0
    pool = {"status": "UP", "members": {"m1": "UP", "m2": "DOWN"}}
    listener: dict[str, Any] = {"status": "OPEN", "stats": dict(STATS)}
    msg: dict[str, Any] = {"id": "amp", "seq": 7}
    if versioned:
        msg["ver"] = version
    if version < 2:
        listener["pools"] = {"p1": pool}
        msg["listeners"] = {"l1": listener}
    else:
        msg["listeners"] = {"l1": listener}
        msg["pools"] = {"p1:l1": pool}
    return msg


# --- versions --------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_each_version_parses_to_the_same_tree(version: int) -> None:
    """Versions 0-3 give the same normalised tree: listener, pool, members, counters."""
    hb = Heartbeat.from_dict(message(version), recv_time=12.5)
    assert hb.amphora_id == "amp"
    assert hb.seq == 7
    assert hb.version == version
    assert hb.versioned is (version != 0)
    assert hb.recv_time == 12.5
    assert list(hb.listeners) == ["l1"]
    listener = hb.listeners["l1"]
    assert listener == ListenerReport(
        listener_id="l1",
        status="OPEN",
        stats=ListenerStats(2, 1, 3, 4, 5),
        pools={"p1": hb.pools["p1"]},
    )
    pool = hb.pools["p1"]
    assert (pool.pool_id, pool.listener_id, pool.status) == ("p1", "l1", "UP")
    assert pool.members == {
        "m1": MemberStatus("UP", MemberKind.UP),
        "m2": MemberStatus("DOWN", MemberKind.DOWN),
    }
    assert hb.stats_are_deltas is (version >= 3)


@pytest.mark.parametrize("version", [4, 5, 1000])
def test_versions_above_3_parse_with_version_3_rules(version: int) -> None:
    """A future version needs top-level pools and carries deltas, like version 3."""
    msg = message(3)
    msg["ver"] = version
    hb = Heartbeat.from_dict(msg)
    assert hb.version == version
    assert hb.versioned
    assert hb.stats_are_deltas
    assert hb.pools["p1"].listener_id == "l1"
    del msg["pools"]
    with pytest.raises(MalformedError, match=r"^pools: missing"):
        Heartbeat.from_dict(msg)


def test_explicit_ver_0_is_versioned() -> None:
    """ "ver": 0 is version 0 but versioned: the pre-versioning rule looks for the key."""
    hb = Heartbeat.from_dict(message(0, versioned=True))
    assert hb.version == 0
    assert hb.versioned
    assert not Heartbeat.from_dict(message(0)).versioned


def test_seq_defaults_to_zero() -> None:
    """A message without seq has seq 0."""
    msg = message(3)
    del msg["seq"]
    assert Heartbeat.from_dict(msg).seq == 0


def test_missing_totconns_and_ereq_count_as_zero() -> None:
    """Octavia's older example omits totconns and ereq: they are 0."""
    msg = message(0)
    msg["listeners"]["l1"]["stats"] = {"rx": 10, "tx": 20, "conns": 3}
    stats = Heartbeat.from_dict(msg).listeners["l1"].stats
    assert stats == ListenerStats(bytes_in=10, bytes_out=20, active_connections=3)
    assert (stats.total_connections, stats.request_errors) == (0, 0)


def test_unknown_keys_are_ignored() -> None:
    """Extra keys anywhere in the message are ignored, not rejected."""
    msg = message(3)
    msg["extra"] = {"anything": [1, 2]}
    msg["listeners"]["l1"]["extra"] = None
    msg["listeners"]["l1"]["stats"]["extra"] = "x"
    msg["pools"]["p1:l1"]["extra"] = 5
    assert Heartbeat.from_dict(msg) == Heartbeat.from_dict(message(3))


def test_any_string_status_is_kept_raw() -> None:
    """Unknown listener, pool and member statuses are kept as sent; only the rules judge them."""
    msg = message(3)
    msg["listeners"]["l1"]["status"] = "WEIRD"
    msg["pools"]["p1:l1"]["status"] = ""
    msg["pools"]["p1:l1"]["members"]["m1"] = "something else"
    hb = Heartbeat.from_dict(msg)
    assert hb.listeners["l1"].status == "WEIRD"
    assert hb.pools["p1"].status == ""
    assert hb.pools["p1"].members["m1"] == MemberStatus("something else", MemberKind.UNKNOWN)


# --- pools -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 1])
def test_nested_pools_belong_to_their_listener(version: int) -> None:
    """In versions 0/1 a pool belongs to the listener it is nested in, whatever its key says."""
    msg = message(version)
    msg["listeners"]["l2"] = {
        "status": "OPEN",
        "stats": dict(STATS),
        "pools": {"p2:elsewhere": {"status": "DOWN", "members": {}}},
    }
    hb = Heartbeat.from_dict(msg)
    assert hb.pools["p2"].listener_id == "l2"
    assert hb.pools["p2"].key == "p2:elsewhere"
    assert list(hb.listeners["l2"].pools) == ["p2"]
    assert list(hb.listeners["l1"].pools) == ["p1"]
    assert set(hb.pools) == {"p1", "p2"}


@pytest.mark.parametrize("version", [0, 1])
def test_nested_listener_without_pools(version: int) -> None:
    """A v0/v1 listener without a pools key (or with pools: {}) has no pools."""
    msg = message(version)
    del msg["listeners"]["l1"]["pools"]
    msg["listeners"]["l2"] = {"status": "OPEN", "stats": dict(STATS), "pools": {}}
    hb = Heartbeat.from_dict(msg)
    assert hb.pools == {}
    assert hb.listeners["l1"].pools == {}
    assert hb.listeners["l2"].pools == {}


@pytest.mark.parametrize("version", [0, 1])
def test_top_level_pools_are_ignored_before_version_2(version: int) -> None:
    """A top-level pools object in a v0/v1 message is an unknown key, not pools."""
    msg = message(version)
    msg["pools"] = {"px:l1": {"status": "UP", "members": {}}}
    assert set(Heartbeat.from_dict(msg).pools) == {"p1"}


@pytest.mark.parametrize("version", [2, 3])
def test_top_level_pools_belong_to_the_listener_in_their_key(version: int) -> None:
    """From version 2 a pool belongs to the listener named after the last ':' of its key."""
    msg = message(version)
    msg["listeners"]["l2"] = {"status": "OPEN", "stats": dict(STATS)}
    msg["pools"]["p2:l2"] = {"status": "UP", "members": {}}
    msg["pools"]["a:b:l2"] = {"status": "UP", "members": {}}
    hb = Heartbeat.from_dict(msg)
    assert hb.pools["p2"].listener_id == "l2"
    assert hb.pools["a:b"].listener_id == "l2"
    assert list(hb.listeners["l2"].pools) == ["p2", "a:b"]
    assert list(hb.listeners["l1"].pools) == ["p1"]


@pytest.mark.parametrize("key", ["p9", "p9:"])
def test_bare_pool_key_has_no_listener(key: str) -> None:
    """A bare key (or one with an empty suffix) is a pool with no listener, kept in pools."""
    msg = message(3)
    msg["pools"][key] = {"status": "UP", "members": {"m": "UP"}}
    hb = Heartbeat.from_dict(msg)
    pool = hb.pools["p9"]
    assert pool.listener_id is None
    assert pool.key == key
    assert all("p9" not in lst.pools for lst in hb.listeners.values())


def test_pool_of_an_absent_listener_stays_in_pools() -> None:
    """A pool naming a listener the message does not report is kept, never rejected."""
    msg = message(3)
    msg["pools"]["p5:gone"] = {"status": "DOWN", "members": {"m": "DOWN"}}
    hb = Heartbeat.from_dict(msg)
    assert hb.pools["p5"].listener_id == "gone"
    assert "gone" not in hb.listeners
    assert "p5" not in hb.listeners["l1"].pools


def test_duplicate_pool_ids_last_wins_top_level() -> None:
    """Two top-level keys for one pool id: the last entry wins, and only its listener owns it."""
    msg = message(3)
    msg["listeners"]["l2"] = {"status": "OPEN", "stats": dict(STATS)}
    msg["pools"]["p1:l2"] = {"status": "DOWN", "members": {"m9": "UP"}}
    hb = Heartbeat.from_dict(msg)
    assert hb.pools["p1"].listener_id == "l2"
    assert hb.pools["p1"].status == "DOWN"
    assert "p1" not in hb.listeners["l1"].pools
    assert hb.listeners["l2"].pools["p1"] is hb.pools["p1"]
    assert list(hb.to_dict()["pools"]) == ["p1:l2"]


def test_duplicate_pool_ids_last_wins_nested() -> None:
    """In v0/v1 a pool under two listeners is owned by each; the flat view keeps the last."""
    msg = message(1)
    msg["listeners"]["l2"] = {
        "status": "OPEN",
        "stats": dict(STATS),
        "pools": {"p1": {"status": "DOWN", "members": {}}},
    }
    hb = Heartbeat.from_dict(msg)
    assert hb.pools["p1"].listener_id == "l2"
    assert hb.listeners["l1"].pools["p1"].status == "UP"
    assert hb.listeners["l2"].pools["p1"].status == "DOWN"


def test_pool_without_status_has_status_none() -> None:
    """A pool entry without status (Octavia's older example) has status None."""
    msg = message(0)
    del msg["listeners"]["l1"]["pools"]["p1"]["status"]
    hb = Heartbeat.from_dict(msg)
    assert hb.pools["p1"].status is None
    assert "status" not in hb.to_dict()["listeners"]["l1"]["pools"]["p1"]


def test_list_of_one_key_objects_member_form() -> None:
    """Members as a list of one-key objects normalise to a mapping (later duplicates win)."""
    msg = message(0)
    msg["listeners"]["l1"]["pools"]["p1"]["members"] = [
        {"m1": "DOWN"},
        {"m2": "UP"},
        {},
        {"m1": "DRAIN", "m3": "MAINT"},
    ]
    members = Heartbeat.from_dict(msg).pools["p1"].members
    assert {k: v.raw for k, v in members.items()} == {"m1": "DRAIN", "m2": "UP", "m3": "MAINT"}


@pytest.mark.parametrize("empty", [[], {}])
def test_empty_members(empty: Any) -> None:
    """ "members": [] and "members": {} are a pool with no members."""
    msg = message(3)
    msg["pools"]["p1:l1"]["members"] = empty
    hb = Heartbeat.from_dict(msg)
    assert hb.pools["p1"].members == {}
    assert hb.to_dict()["pools"]["p1:l1"]["members"] == {}


# --- member kinds ----------------------------------------------------------------------

KINDS = [
    ("UP", MemberKind.UP),
    ("UP 1/3", MemberKind.UP),
    ("UP 2/3", MemberKind.UP),
    ("DOWN", MemberKind.DOWN),
    ("DOWN 2/3", MemberKind.DOWN),
    ("DOWN 1/2", MemberKind.DOWN),
    ("DRAIN", MemberKind.DRAIN),
    ("MAINT", MemberKind.MAINT),
    ("no check", MemberKind.NO_CHECK),
    ("RESTARTING", MemberKind.RESTARTING),
    ("NO CHECK", MemberKind.UNKNOWN),
    ("up", MemberKind.UNKNOWN),
    ("maint", MemberKind.UNKNOWN),
    ("DRAINING", MemberKind.UNKNOWN),
    ("", MemberKind.UNKNOWN),
    ("ONLINE", MemberKind.UNKNOWN),
]


@pytest.mark.parametrize(("raw", "kind"), KINDS)
def test_member_kind_from_string(raw: str, kind: MemberKind) -> None:
    """Each member status string maps to its kind; transitional ones by prefix."""
    status = MemberStatus.parse(raw)
    assert status.raw == raw
    assert status.kind is kind
    msg = message(3)
    msg["pools"]["p1:l1"]["members"] = {"m": raw}
    assert Heartbeat.from_dict(msg).pools["p1"].members["m"] == MemberStatus(raw, kind)


def test_every_member_kind_is_reachable() -> None:
    """Every MemberKind is produced by some string."""
    assert {kind for _, kind in KINDS} == set(MemberKind)


def test_member_status_cache_is_bounded() -> None:
    """Parsing many distinct strings does not grow the shared cache without limit."""
    from amphora_heartbeat import models

    for i in range(2000):
        assert MemberStatus.parse(f"odd {i}").kind is MemberKind.UNKNOWN
    assert len(models._MEMBER_CACHE) <= models._MEMBER_CACHE_SIZE
    assert MemberStatus.parse("UP") is MemberStatus.parse("UP")


def test_remembered_ids_are_bounded_in_count_and_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path's sets of checked ids never outgrow their bound nor keep long strings."""
    from amphora_heartbeat import parse

    monkeypatch.setattr(parse, "_KNOWN", {})
    monkeypatch.setattr(parse, "_KNOWN_IDS_SIZE", 16)
    for i in range(100):
        msg = message(3)
        msg["pools"]["p1:l1"]["members"] = {f"m{i}-{j}": "UP" for j in range(7)}
        Heartbeat.from_dict(msg)
        known = parse._KNOWN[36]
        assert len(known.ids) + len(known.keys) <= 16
    long_id = "x" * (parse._KNOWN_ID_LENGTH + 1)
    limits = Limits(max_id_length=200)
    assert Heartbeat.from_dict(dict(message(3), id=long_id), limits=limits).amphora_id == long_id
    assert long_id not in parse._KNOWN[200].ids
    for max_id in range(40, 50):  # many Limits in use: a few sets at most
        Heartbeat.from_dict(message(3), limits=Limits(max_id_length=max_id))
    assert len(parse._KNOWN) <= 4
    # A bad id is never remembered, so it is refused every time.
    for _ in range(2):
        with pytest.raises(BadIdError):
            Heartbeat.from_dict(dict(message(3), id="amp\x00"))
    for known in parse._KNOWN.values():
        assert all(_visible_ascii_only(i) and len(i) <= known.max_id for i in known.ids)


def test_an_id_checked_under_a_longer_limit_is_still_refused_under_a_shorter_one() -> None:
    """What the fast path remembers is per max_id_length: 40 characters pass 40, not 36."""
    forty = "y" * 40
    msg = dict(message(3), id=forty)
    assert Heartbeat.from_dict(msg, limits=Limits(max_id_length=40)).amphora_id == forty
    with pytest.raises(BadIdError):
        Heartbeat.from_dict(msg)
    msg = message(3)
    msg["pools"] = {"p" * 20 + ":" + "l" * 20: {"members": {}}}
    Heartbeat.from_dict(msg, limits=Limits(max_id_length=20))
    with pytest.raises(BadIdError):
        Heartbeat.from_dict(msg, limits=Limits(max_id_length=19))


def _visible_ascii_only(text: str) -> bool:
    return bool(text) and all("!" <= c <= "~" for c in text)


# --- malformed -------------------------------------------------------------------------

Mutator = Callable[[dict[str, Any]], None]


def _set(path: tuple[Any, ...], value: Any) -> Mutator:
    def mutate(msg: dict[str, Any]) -> None:
        target = msg
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return mutate


def _del(path: tuple[Any, ...]) -> Mutator:
    def mutate(msg: dict[str, Any]) -> None:
        target = msg
        for part in path[:-1]:
            target = target[part]
        del target[path[-1]]

    return mutate


L1 = ("listeners", "l1")
P3 = ("pools", "p1:l1")
P0 = ("listeners", "l1", "pools", "p1")

MALFORMED: list[tuple[str, int, Mutator, str]] = [
    ("id-missing", 3, _del(("id",)), "id"),
    ("id-int", 3, _set(("id",), 5), "id"),
    ("id-null", 0, _set(("id",), None), "id"),
    ("id-list", 1, _set(("id",), ["amp"]), "id"),
    ("seq-negative", 3, _set(("seq",), -1), "seq"),
    ("seq-bool", 3, _set(("seq",), True), "seq"),
    ("seq-float", 3, _set(("seq",), 1.0), "seq"),
    ("seq-string", 0, _set(("seq",), "1"), "seq"),
    ("seq-null", 3, _set(("seq",), None), "seq"),
    ("seq-too-big", 3, _set(("seq",), 1 << 63), "seq"),
    ("ver-negative", 3, _set(("ver",), -1), "ver"),
    ("ver-bool", 3, _set(("ver",), True), "ver"),
    ("ver-float", 3, _set(("ver",), 3.0), "ver"),
    ("ver-string", 3, _set(("ver",), "3"), "ver"),
    ("ver-null", 1, _set(("ver",), None), "ver"),
    ("listeners-missing", 3, _del(("listeners",)), "listeners"),
    ("listeners-list", 3, _set(("listeners",), []), "listeners"),
    ("listeners-null", 0, _set(("listeners",), None), "listeners"),
    ("listener-list", 3, _set(L1, []), "listeners.l1"),
    ("listener-string", 0, _set(L1, "OPEN"), "listeners.l1"),
    ("listener-status-int", 3, _set((*L1, "status"), 1), "listeners.l1.status"),
    ("listener-status-missing", 3, _del((*L1, "status")), "listeners.l1.status"),
    ("stats-missing", 3, _del((*L1, "stats")), "listeners.l1.stats"),
    ("stats-list", 3, _set((*L1, "stats"), [1, 2, 3]), "listeners.l1.stats"),
    ("stats-null", 0, _set((*L1, "stats"), None), "listeners.l1.stats"),
    ("rx-missing", 3, _del((*L1, "stats", "rx")), "listeners.l1.stats.rx"),
    ("tx-missing", 3, _del((*L1, "stats", "tx")), "listeners.l1.stats.tx"),
    ("conns-missing", 0, _del((*L1, "stats", "conns")), "listeners.l1.stats.conns"),
    ("v2-pools-missing", 2, _del(("pools",)), "pools"),
    ("v3-pools-missing", 3, _del(("pools",)), "pools"),
    ("pools-list", 3, _set(("pools",), []), "pools"),
    ("pools-null", 2, _set(("pools",), None), "pools"),
    ("nested-pools-list", 0, _set((*L1, "pools"), [{"p1": {}}]), "listeners.l1.pools"),
    ("nested-pools-string", 1, _set((*L1, "pools"), "p1"), "listeners.l1.pools"),
    ("pool-list", 3, _set(P3, []), "pools.p1:l1"),
    ("pool-string", 0, _set(P0, "UP"), "listeners.l1.pools.p1"),
    ("pool-status-int", 3, _set((*P3, "status"), 1), "pools.p1:l1.status"),
    ("pool-status-list", 1, _set((*P0, "status"), ["UP"]), "listeners.l1.pools.p1.status"),
    ("members-missing", 3, _del((*P3, "members")), "pools.p1:l1.members"),
    ("members-string", 3, _set((*P3, "members"), "m1"), "pools.p1:l1.members"),
    ("members-null", 0, _set((*P0, "members"), None), "listeners.l1.pools.p1.members"),
    ("members-int", 3, _set((*P3, "members"), 3), "pools.p1:l1.members"),
    ("member-list-item", 3, _set((*P3, "members"), [{"m": "UP"}, "m2"]), "pools.p1:l1.members[1]"),
    ("member-status-int", 3, _set((*P3, "members", "m1"), 1), "pools.p1:l1.members.m1"),
    (
        "member-status-null",
        1,
        _set((*P0, "members", "m2"), None),
        "listeners.l1.pools.p1.members.m2",
    ),
    (
        "member-list-status-int",
        3,
        _set((*P3, "members"), [{"m7": True}]),
        "pools.p1:l1.members.m7",
    ),
]
for counter in ("rx", "tx", "conns", "totconns", "ereq"):
    for label, bad in [
        ("negative", -1),
        ("float", 1.5),
        ("bool", True),
        ("string", "1"),
        ("null", None),
    ]:
        MALFORMED.append(
            (
                f"{counter}-{label}",
                3,
                _set((*L1, "stats", counter), bad),
                f"listeners.l1.stats.{counter}",
            )
        )
MALFORMED += [
    ("rx-over-bigint", 3, _set((*L1, "stats", "rx"), 1 << 63), "listeners.l1.stats.rx"),
    ("tx-over-bigint", 2, _set((*L1, "stats", "tx"), 1 << 63), "listeners.l1.stats.tx"),
    (
        "totconns-over-bigint",
        1,
        _set((*L1, "stats", "totconns"), 1 << 63),
        "listeners.l1.stats.totconns",
    ),
    ("ereq-over-bigint", 0, _set((*L1, "stats", "ereq"), 1 << 64), "listeners.l1.stats.ereq"),
    ("conns-over-int32", 3, _set((*L1, "stats", "conns"), 1 << 31), "listeners.l1.stats.conns"),
]


@pytest.mark.parametrize(
    ("version", "mutate", "path"),
    [(v, m, p) for _, v, m, p in MALFORMED],
    ids=[name for name, *_ in MALFORMED],
)
def test_malformed(version: int, mutate: Mutator, path: str) -> None:
    """Each malformed message is refused with MalformedError naming the path of what is wrong."""
    msg = message(version)
    mutate(msg)
    with pytest.raises(MalformedError) as info:
        Heartbeat.from_dict(msg)
    assert info.value.reason == "malformed"
    assert info.value.path == path
    assert str(info.value).startswith(path + ": ")


# Ids: 1 to 36 visible ASCII characters, in every place and every version.
BAD_IDS = [
    pytest.param("", id="empty"),
    pytest.param("a" * 37, id="37-chars"),
    pytest.param("amp\x00", id="nul"),
    pytest.param("amp\n2024-01-01 forged line", id="newline"),
    pytest.param("amp\x1b[31m", id="escape"),
    pytest.param("amp\x7f", id="del"),
    pytest.param("amp\x85", id="c1"),
    pytest.param("amp\ud800", id="lone-surrogate"),
    pytest.param("amp 1", id="space"),
    pytest.param("amp-1 ", id="trailing-space"),
    pytest.param("ampé", id="latin"),
    pytest.param("амфора", id="cyrillic"),
    pytest.param("amp\u202e", id="bidi-override"),
    pytest.param("amp\U0001f600", id="astral"),
]


def _put_id(msg: dict[str, Any], place: str, bad: str) -> None:
    """Put ``bad`` in one id place of a message made by message()."""
    nested = "pools" in msg["listeners"]["l1"]
    pools = msg["listeners"]["l1"]["pools"] if nested else msg["pools"]
    key = next(iter(pools))
    if place == "amphora":
        msg["id"] = bad
    elif place == "listener":
        msg["listeners"] = {bad: msg["listeners"]["l1"]}
    elif place == "pool":
        pools[bad + key[key.find(":") :] if ":" in key else bad] = pools.pop(key)
    elif place == "pool-listener":
        pools[key.split(":")[0] + ":" + bad] = pools.pop(key)
    elif place == "member":
        pools[key]["members"] = {bad: "UP"}
    else:  # member-list: the older documentation's list form
        pools[key]["members"] = [{"m1": "UP"}, {bad: "DOWN"}]


PLACES = ["amphora", "listener", "pool", "pool-listener", "member", "member-list"]


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_bad_ids_are_refused_everywhere(version: int, place: str, bad: str) -> None:
    """An id no database could hold is bad_id wherever it stands, in every message version."""
    msg = message(version)
    _put_id(msg, place, bad)
    if place == "pool-listener" and not bad:
        # "p1:" is a bare pool key (no listener), as in Octavia: not an empty id.
        assert Heartbeat.from_dict(msg).pools["p1"].listener_id in {None, "l1"}
        return
    with pytest.raises(BadIdError) as info:
        Heartbeat.from_dict(msg)
    assert isinstance(info.value, MalformedError)
    assert info.value.reason == "bad_id"
    text = str(info.value)
    assert text.isprintable()
    text.encode("utf-8")
    assert "must be" in text


@pytest.mark.parametrize("good", ["a", "a" * 36, "!#$%&'()*+,-./~", "AMP_1", "a:b"])
@pytest.mark.parametrize("place", ["amphora", "listener", "member", "member-list"])
def test_visible_ascii_ids_up_to_36_characters_are_fine(place: str, good: str) -> None:
    """Any 1 to 36 visible ASCII characters make an id, on both parsing paths."""
    msg = message(3)
    _put_id(msg, place, good)
    hb = Heartbeat.from_dict(msg)
    assert hb == _careful(msg)
    assert good in {hb.amphora_id, *hb.listeners, *hb.pools["p1"].members}


def test_pool_key_parts_are_each_an_id() -> None:
    """A pool key holds two ids: 36 characters each are fine, 37 in either part is not."""
    for key, ok in [
        ("p" * 36 + ":" + "l" * 36, True),
        ("p" * 37 + ":l1", False),
        ("p1:" + "l" * 37, False),
        ("p" * 36 + ":", True),
        (":l1", False),
        (":", False),
        ("a:b:c", True),
    ]:
        msg = message(3)
        msg["pools"] = {key: {"status": "UP", "members": {}}}
        if ok:
            assert Heartbeat.from_dict(msg) == _careful(msg)
        else:
            with pytest.raises(BadIdError):
                Heartbeat.from_dict(msg)
    hb = Heartbeat.from_dict(dict(message(3), pools={"a:b:c": {"members": {}}}))
    assert hb.pools["a:b"].listener_id == "c"


def test_the_golden_vectors_ids_are_all_valid(vectors: list[Any]) -> None:
    """Octavia's own messages (UUID ids, 73-character pool keys) all pass the id rule."""
    for vector in vectors:
        hb = Heartbeat.from_dict(vector.message)
        assert len(hb.amphora_id) == 36
        assert all(len(pool.pool_id) == 36 for pool in hb.pools.values())


def test_counters_at_their_limits_are_accepted() -> None:
    """The largest storable counters (BIGINT, 32-bit conns) and seq are accepted."""
    msg = message(3)
    msg["seq"] = (1 << 63) - 1
    msg["listeners"]["l1"]["stats"] = {
        "rx": (1 << 63) - 1,
        "tx": (1 << 63) - 1,
        "conns": (1 << 31) - 1,
        "totconns": 0,
        "ereq": (1 << 63) - 1,
    }
    hb = Heartbeat.from_dict(msg)
    assert hb.listeners["l1"].stats.active_connections == (1 << 31) - 1
    assert hb.seq == (1 << 63) - 1


@pytest.mark.parametrize("not_a_message", [[], "x", None, 3])
def test_non_mapping_message_is_malformed(not_a_message: Any) -> None:
    """from_dict of something that is not a mapping is malformed, not an AttributeError."""
    with pytest.raises(MalformedError):
        Heartbeat.from_dict(not_a_message)


def test_malformed_path_is_truncated_for_long_ids() -> None:
    """Paths in messages stay short even when an id is huge (the limit check comes after)."""
    msg = message(3)
    msg["listeners"] = {"L" * 10_000: {"status": 1}}
    with pytest.raises(MalformedError) as info:
        Heartbeat.from_dict(msg)
    assert len(str(info.value)) < 200


# --- limits ----------------------------------------------------------------------------


def _msg_with(
    listeners: int = 1, pools: int = 1, members: int = 1, version: int = 3
) -> dict[str, Any]:
    return build_message(version=version, listeners=listeners, pools=pools, members=members)


def test_default_limits_are_safe_and_generous() -> None:
    """Default limits sit far above real heartbeats and well below a flood of objects."""
    limits = Limits()
    assert limits.max_listeners >= 100
    assert limits.max_pools >= 100
    assert limits.max_members >= 1000
    assert limits.max_id_length == 36  # Octavia's VARCHAR(36) id columns


@pytest.mark.parametrize("version", [1, 3])
def test_max_listeners(version: int) -> None:
    """More listeners than the limit is malformed; exactly the limit is fine."""
    limits = Limits(max_listeners=3)
    Heartbeat.from_dict(_msg_with(listeners=3, pools=0, version=version), limits=limits)
    with pytest.raises(MalformedError, match="more than 3 listeners") as info:
        Heartbeat.from_dict(_msg_with(listeners=4, pools=0, version=version), limits=limits)
    assert info.value.path == "listeners"


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_max_pools_counts_all_listeners_together(version: int) -> None:
    """The pool limit counts pools over all listeners, nested or top level."""
    limits = Limits(max_pools=4)
    Heartbeat.from_dict(_msg_with(listeners=2, pools=4, version=version), limits=limits)
    with pytest.raises(MalformedError, match="more than 4 pools"):
        Heartbeat.from_dict(_msg_with(listeners=2, pools=5, version=version), limits=limits)


@pytest.mark.parametrize("form", ["dict", "list"])
def test_max_members(form: str) -> None:
    """More members in one pool than the limit is malformed, in both member forms."""
    limits = Limits(max_members=5)
    for count, ok in ((5, True), (6, False), (50, False)):
        msg = message(3)
        members = {f"m{i}": "UP" for i in range(count)}
        msg["pools"]["p1:l1"]["members"] = (
            members if form == "dict" else [{k: v} for k, v in members.items()]
        )
        if ok:
            Heartbeat.from_dict(msg, limits=limits)
        else:
            with pytest.raises(MalformedError, match="more than 5 members") as info:
                Heartbeat.from_dict(msg, limits=limits)
            assert info.value.path == "pools.p1:l1.members"


ID_LIMIT_CASES = [
    ("amphora", lambda m, s: m.update(id=s), "id"),
    ("listener", lambda m, s: m.update(listeners={s: m["listeners"]["l1"]}), "listeners."),
    ("pool-key", lambda m, s: m.update(pools={s: m["pools"]["p1:l1"]}), "pools."),
    ("member", lambda m, s: m["pools"]["p1:l1"].update(members={s: "UP"}), "pools.p1:l1.members."),
]


@pytest.mark.parametrize(
    ("put", "path"), [(p, q) for _, p, q in ID_LIMIT_CASES], ids=[n for n, *_ in ID_LIMIT_CASES]
)
def test_max_id_length(put: Callable[[dict[str, Any], str], None], path: str) -> None:
    """An id longer than the limit is bad_id; one at the limit is fine."""
    limits = Limits(max_id_length=40)
    msg = message(3)
    put(msg, "x" * 40)
    Heartbeat.from_dict(msg, limits=limits)
    msg = message(3)
    put(msg, "x" * 41)
    with pytest.raises(BadIdError, match="must be 1 to 40 characters, got 41") as info:
        Heartbeat.from_dict(msg, limits=limits)
    assert info.value.path.startswith(path)


# --- boot: the optional key this library's sender adds ---------------------------------


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_boot_is_parsed_and_written_back_in_every_version(version: int) -> None:
    """boot parses to Heartbeat.boot and to_dict writes it back exactly; both paths agree."""
    msg = dict(message(version), boot=1_700_000_000)
    hb = Heartbeat.from_dict(msg)
    assert hb.boot == 1_700_000_000
    assert hb.to_dict() == msg
    assert hb == _careful(msg)
    assert hb != Heartbeat.from_dict(message(version))


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_absent_boot_stays_absent(version: int) -> None:
    """Without boot (every Octavia message), Heartbeat.boot is None and to_dict adds none."""
    hb = Heartbeat.from_dict(message(version))
    assert hb.boot is None
    assert "boot" not in hb.to_dict()


def test_golden_vectors_have_no_boot(vectors: list[Any]) -> None:
    """Octavia's own messages carry no boot."""
    assert all(Heartbeat.from_dict(v.message).boot is None for v in vectors)


@pytest.mark.parametrize(
    "bad",
    [-1, 1 << 63, 1.5, "1700000000", True, None, [1], 10**5000],
    ids=["negative", "2**63", "float", "string", "bool", "null", "list", "5000-digits"],
)
def test_boot_that_is_not_a_storable_count_is_malformed(bad: Any) -> None:
    """A boot that is not a non-negative BIGINT (null included) is malformed on both paths."""
    msg = dict(message(3), boot=bad)
    with pytest.raises(MalformedError) as info:
        Heartbeat.from_dict(msg)
    assert info.value.path == "boot"
    assert info.value.reason == "malformed"


def test_largest_boot_is_accepted() -> None:
    """A boot of 2**63 - 1 fits its column and parses."""
    assert Heartbeat.from_dict(dict(message(3), boot=(1 << 63) - 1)).boot == (1 << 63) - 1


# --- to_dict and equality --------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4])
def test_to_dict_returns_canonical_messages_unchanged(version: int) -> None:
    """A canonical message (dict members, all counters, no unknown keys) comes back unchanged."""
    for msg in (message(version), build_message(version=version, listeners=3, pools=4, members=3)):
        assert Heartbeat.from_dict(copy.deepcopy(msg)).to_dict() == msg
        # Same JSON text too: key order is kept, so re-wrapping gives equal bytes.
        assert json.dumps(Heartbeat.from_dict(msg).to_dict()) == json.dumps(msg)


def test_to_dict_writes_the_list_form_as_a_mapping() -> None:
    """The older list member form and missing counters come out canonical."""
    msg = message(0)
    msg["listeners"]["l1"]["stats"] = {"rx": 1, "tx": 2, "conns": 3}
    msg["listeners"]["l1"]["pools"]["p1"]["members"] = [{"m1": "UP"}, {"m2": "DOWN"}]
    out = Heartbeat.from_dict(msg).to_dict()
    assert out["listeners"]["l1"]["stats"] == {
        "tx": 2,
        "rx": 1,
        "conns": 3,
        "totconns": 0,
        "ereq": 0,
    }
    assert out["listeners"]["l1"]["pools"]["p1"]["members"] == {"m1": "UP", "m2": "DOWN"}


def test_to_dict_keeps_pools_without_a_listener() -> None:
    """Bare keys and pools of absent listeners are written back as they came."""
    msg = message(3)
    msg["pools"]["bare"] = {"status": "UP", "members": {}}
    msg["pools"]["p5:gone"] = {"members": {"m": "DOWN"}}
    assert Heartbeat.from_dict(msg).to_dict() == msg


def test_recv_time_is_not_part_of_equality_or_the_message() -> None:
    """Two heartbeats differing only in recv_time are equal; to_dict has no recv_time."""
    a = Heartbeat.from_dict(message(3), recv_time=1.0)
    b = Heartbeat.from_dict(message(3), recv_time=2.0)
    assert a == b
    assert a.with_recv_time(5.0).recv_time == 5.0
    assert a.with_recv_time(None).recv_time is None
    assert a.recv_time == 1.0
    assert "recv_time" not in a.to_dict()


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_round_trip_from_builders(version: int) -> None:
    """from_dict(h.to_dict(), recv_time=h.recv_time) == h for built heartbeats."""
    hb = build_heartbeat(version=version, listeners=3, pools=5, members=4, recv_time=9.0)
    again = Heartbeat.from_dict(hb.to_dict(), recv_time=hb.recv_time)
    assert again == hb
    assert again.recv_time == 9.0


def test_models_are_frozen() -> None:
    """Heartbeat and its parts cannot be reassigned."""
    hb = Heartbeat.from_dict(message(3))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        hb.seq = 1  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        hb.pools["p1"].status = "DOWN"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        hb.listeners["l1"].stats.bytes_in = 0  # type: ignore[misc]


def test_pool_key_is_not_part_of_equality() -> None:
    """Pools with the same id from keys that differ only in form compare equal."""
    a = PoolReport(pool_id="p", listener_id=None, status="UP", members={}, key="p")
    b = PoolReport(pool_id="p", listener_id=None, status="UP", members={}, key="p:")
    assert a == b


# --- ListenerStats ---------------------------------------------------------------------


def test_listener_stats_add_and_to_wire() -> None:
    """Stats add field by field and write back under the wire names."""
    a = ListenerStats(1, 2, 3, 4, 5)
    b = ListenerStats(10, 20, 30, 40, 50)
    assert a + b == ListenerStats(11, 22, 33, 44, 55)
    assert a.to_wire() == {"tx": 2, "rx": 1, "conns": 3, "totconns": 4, "ereq": 5}
    assert list(a.to_wire()) == ["tx", "rx", "conns", "totconns", "ereq"]
    assert ListenerStats() == ListenerStats(0, 0, 0, 0, 0)


def test_listener_stats_add_refuses_other_types() -> None:
    """Adding something that is not ListenerStats is a TypeError."""
    with pytest.raises(TypeError):
        ListenerStats() + 1  # type: ignore[operator]


# --- properties ------------------------------------------------------------------------

VISIBLE_ASCII = "".join(chr(c) for c in range(0x21, 0x7F))
ids = st.text(VISIBLE_ASCII, min_size=1, max_size=12)
statuses = st.sampled_from([s for s, _ in KINDS]) | st.text(max_size=8)
counters = st.integers(min_value=0, max_value=(1 << 31) - 1)


@st.composite
def canonical_messages(draw: st.DrawFn) -> dict[str, Any]:
    """Draw a message in its version's canonical shape, with unique pool ids."""
    version = draw(st.integers(0, 4))
    listener_ids = draw(st.lists(ids, max_size=4, unique=True))
    pool_ids = draw(st.lists(ids.filter(lambda s: ":" not in s), max_size=5, unique=True))
    msg: dict[str, Any] = {"id": draw(ids), "seq": draw(st.integers(0, 1 << 40))}
    if version or draw(st.booleans()):
        msg["ver"] = version
    listeners: dict[str, Any] = {}
    for lid in listener_ids:
        stats = dict(
            zip(
                ["tx", "rx", "conns", "totconns", "ereq"],
                draw(st.lists(counters, min_size=5, max_size=5)),
                strict=True,
            )
        )
        listeners[lid] = {"status": draw(statuses), "stats": stats}
        if version < 2:
            listeners[lid]["pools"] = {}
    pools: dict[str, Any] = {}
    for pid in pool_ids:
        entry: dict[str, Any] = {}
        if draw(st.booleans()):
            entry["status"] = draw(statuses)
        entry["members"] = draw(st.dictionaries(ids, statuses, max_size=4))
        owner = draw(st.sampled_from([None, *listener_ids]))
        if version < 2:
            if owner is not None:
                listeners[owner]["pools"][pid] = entry
        else:
            suffix = draw(st.sampled_from(["", ":", f":{owner}" if owner else ":absent"]))
            pools[pid + suffix] = entry
    msg["listeners"] = listeners
    if version >= 2:
        msg["pools"] = pools
    return msg


@settings(max_examples=150)
@given(canonical_messages(), st.none() | st.floats(0, 2e9))
def test_property_canonical_round_trip(msg: dict[str, Any], recv_time: float | None) -> None:
    """Canonical messages come back unchanged, and the model survives to_dict/from_dict."""
    hb = Heartbeat.from_dict(msg, recv_time=recv_time)
    assert hb.to_dict() == msg
    again = Heartbeat.from_dict(hb.to_dict(), recv_time=hb.recv_time)
    assert again == hb
    assert again.recv_time == hb.recv_time


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 65), max_value=1 << 65)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)


def wild(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the valid shape, now and then any JSON value in its place."""
    return st.integers(0, 9).flatmap(lambda n: json_values if n == 9 else strategy)


short_ids = st.text(min_size=1, max_size=6)
counter_values = st.integers(0, 19).flatmap(
    lambda n: st.integers(-2, 1 << 64) | json_scalars if n == 19 else st.integers(0, 1 << 31)
)
stats_objects = st.integers(0, 9).flatmap(
    lambda n: (
        st.dictionaries(st.sampled_from(["rx", "tx", "conns", "totconns", "ereq"]), json_scalars)
        if n == 9
        else st.fixed_dictionaries(
            dict.fromkeys(("rx", "tx", "conns"), counter_values),
            optional=dict.fromkeys(("totconns", "ereq"), counter_values),
        )
    )
)
members = wild(
    st.dictionaries(short_ids, wild(statuses), max_size=4)
    | st.lists(wild(st.dictionaries(short_ids, wild(statuses), max_size=2)), max_size=4)
)
pool_keys = short_ids | st.builds(
    lambda p, lid: f"{p}:{lid}", short_ids, short_ids | st.just("") | st.sampled_from(["l1", "l2"])
)
pool_objects = wild(
    st.fixed_dictionaries({"members": members}, optional={"status": wild(statuses)})
)
pools_objects = wild(st.dictionaries(pool_keys, pool_objects, max_size=4))


@st.composite
def near_valid_messages(draw: st.DrawFn) -> dict[str, Any]:
    """Draw a heartbeat-shaped message of any version with a few parts gone wrong."""
    version = draw(st.integers(0, 5))
    listener_ids = draw(st.lists(short_ids | st.sampled_from(["l1", "l2"]), max_size=3))
    listeners: dict[str, Any] = {}
    for lid in listener_ids:
        listener = {"status": draw(wild(statuses)), "stats": draw(wild(stats_objects))}
        if version < 2:
            listener["pools"] = draw(pools_objects)
        listeners[lid] = draw(wild(st.just(listener)))
    msg: dict[str, Any] = {"id": draw(wild(short_ids)), "listeners": draw(wild(st.just(listeners)))}
    if draw(st.booleans()):
        msg["seq"] = draw(wild(st.integers(0, 1 << 64)))
    if version or draw(st.booleans()):
        msg["ver"] = draw(wild(st.just(version)))
    if version >= 2 or draw(st.integers(0, 9)) == 0:
        msg["pools"] = draw(pools_objects)
    if draw(st.integers(0, 9)) == 0:
        msg["extra"] = draw(json_values)
    return msg


def _parse_or_reject(msg: dict[str, Any]) -> None:
    """Parse; a success must round-trip, a failure must be MalformedError."""
    try:
        hb = Heartbeat.from_dict(msg, limits=Limits(max_members=3, max_pools=3, max_id_length=10))
    except MalformedError:
        return
    assert Heartbeat.from_dict(hb.to_dict()) == hb


@settings(max_examples=300)
@given(near_valid_messages())
def test_property_near_valid_messages_parse_or_are_malformed(msg: dict[str, Any]) -> None:
    """Messages shaped almost like heartbeats parse (and round-trip) or raise MalformedError."""
    _parse_or_reject(msg)


@settings(max_examples=150)
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_property_arbitrary_json_objects_parse_or_are_malformed(msg: dict[str, Any]) -> None:
    """Any JSON object into from_dict raises only MalformedError, or parses."""
    _parse_or_reject(msg)


# --- any Python value ---------------------------------------------------------------
# from_dict is called by code, not only with what json.loads makes: whatever a
# caller passes, only MalformedError (or a heartbeat) comes out.


def _deep_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


DEEP = _deep_list(100_000)
ODD_VALUES = [
    pytest.param(10**5000, id="int-5000-digits"),
    pytest.param(-(10**5000), id="negative-5000-digits"),
    pytest.param(DEEP, id="list-100000-deep"),
    pytest.param(float("nan"), id="nan"),
    pytest.param(b"UP", id="bytes"),
    pytest.param({"UP"}, id="set"),
    pytest.param(("UP",), id="tuple"),
    pytest.param(1 + 2j, id="complex"),
    pytest.param("x" * 1_000_000, id="str-1e6"),
]


@pytest.mark.parametrize("odd", ODD_VALUES)
@pytest.mark.parametrize("version", [0, 3])
def test_any_value_anywhere_is_only_ever_malformed(version: int, odd: Any) -> None:
    """A value JSON cannot hold, put in any place of a message, is refused as MalformedError."""
    base = message(version)
    for path in _paths(base)[1:]:
        d = copy.deepcopy(base)
        target = d
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = odd
        # Some places take anything (a listener's unknown keys): no error is fine too.
        with contextlib.suppress(MalformedError):
            Heartbeat.from_dict(d)


def test_seq_with_5000_digits_is_malformed_not_value_error() -> None:
    """seq=10**5000 is malformed; describing it never hits int-to-str limits."""
    with pytest.raises(MalformedError, match=r"seq: .*got an integer of 16610 bits"):
        Heartbeat.from_dict(dict(message(3), seq=10**5000))


def test_a_100000_deep_list_is_malformed_not_recursion_error() -> None:
    """A deeply nested list as a counter is malformed; nothing recurses into it."""
    msg = message(3)
    msg["listeners"]["l1"]["stats"]["rx"] = DEEP
    with pytest.raises(MalformedError, match="got a list"):
        Heartbeat.from_dict(msg)


KEYS = [
    pytest.param(7, id="int"),
    pytest.param(10**5000, id="huge-int"),
    pytest.param(b"l1", id="bytes"),
    pytest.param(("l1",), id="tuple"),
    pytest.param(None, id="none"),
    pytest.param(2.5, id="float"),
    pytest.param(frozenset({"l1"}), id="frozenset"),
]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("place", ["listener", "pool", "member", "member-list", "top"])
@pytest.mark.parametrize("version", [0, 3])
def test_keys_that_are_not_strings_are_malformed(version: int, place: str, key: Any) -> None:
    """Int, bytes, tuple... keys where ids go are malformed, on both parsing paths."""
    msg: dict[Any, Any] = message(version)
    if place == "top":
        msg[key] = "extra"  # unknown top-level keys are ignored, whatever their type
        assert Heartbeat.from_dict(msg) == Heartbeat.from_dict(message(version))
        return
    nested = version < 2
    pools = msg["listeners"]["l1"]["pools"] if nested else msg["pools"]
    pool_key = next(iter(pools))
    if place == "listener":
        msg["listeners"][key] = msg["listeners"].pop("l1")
    elif place == "pool":
        pools[key] = pools.pop(pool_key)
    elif place == "member":
        pools[pool_key]["members"] = {key: "UP"}
    else:
        pools[pool_key]["members"] = [{key: "UP"}]
    with pytest.raises(MalformedError, match=r"expected an? [a-z ]+ string, got") as info:
        Heartbeat.from_dict(msg)
    assert info.value.reason == "malformed"
    assert len(str(info.value)) < 200


def test_status_of_a_str_subclass_is_refused_on_both_paths() -> None:
    """Only real strings are statuses: the fast path takes nothing the careful one refuses."""

    class Status(str):
        pass

    msg = message(3)
    msg["pools"]["p1:l1"]["members"] = {"m1": Status("UP")}
    with pytest.raises(MalformedError, match="expected a status string"):
        Heartbeat.from_dict(msg)


def test_ids_of_a_str_subclass_parse_alike_whatever_the_fast_path_remembers() -> None:
    """A str subclass is an id on both paths, whether or not an equal id was seen before."""

    class Id(str):
        pass

    for seen_before in (False, True):
        msg = message(3)
        fresh = f"member-never-seen-{seen_before:d}"
        if seen_before:
            Heartbeat.from_dict(dict(msg, id=fresh))  # the fast path now knows it
        msg["pools"]["p1:l1"]["members"] = {Id(fresh): "UP"}
        msg["listeners"] = {Id("l1"): msg["listeners"]["l1"]}
        hb = Heartbeat.from_dict(msg)
        assert hb == _careful(msg)
        assert fresh in hb.pools["p1"].members


PY_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([1 << 63, (1 << 63) - 1, -1])
    | st.integers(4300, 5000).map(lambda digits: 10**digits)  # beyond int-to-str limits
    | st.integers(4300, 5000).map(lambda digits: -(10**digits))
    | st.floats()
    | st.complex_numbers()
    | st.text()
    | st.text(VISIBLE_ASCII, min_size=1, max_size=40)
    | st.binary()
)
PY_HASHABLES = st.recursive(
    PY_SCALARS, lambda c: st.tuples(c, c) | st.frozensets(c, max_size=3), max_leaves=6
)
PY_VALUES = st.recursive(
    PY_HASHABLES,
    lambda children: (
        st.lists(children, max_size=3)
        | st.tuples(children)
        | st.dictionaries(PY_HASHABLES, children, max_size=3)
        | st.sets(PY_HASHABLES, max_size=3)
    ),
    max_leaves=20,
)


def _only_malformed(value: Any) -> None:
    try:
        hb = Heartbeat.from_dict(value)
    except MalformedError:
        return
    assert Heartbeat.from_dict(hb.to_dict()) == hb


@settings(max_examples=200)
@given(PY_VALUES)
def test_property_any_python_value_is_a_heartbeat_or_malformed(value: Any) -> None:
    """from_dict of any value built of Python's own types raises nothing but MalformedError."""
    _only_malformed(value)


@settings(max_examples=300)
@given(st.data())
def test_property_any_python_value_in_any_place_or_key(data: st.DataObject) -> None:
    """A standard message with one value or one key swapped for any Python value: same."""
    version = data.draw(st.sampled_from([0, 1, 3]))
    d = build_message(version=version, listeners=2, pools=2, members=2, seed=3)
    path = data.draw(st.sampled_from(_paths(d)[1:]))
    target = d
    for key in path[:-1]:
        target = target[key]
    if data.draw(st.booleans()):
        target[path[-1]] = data.draw(PY_VALUES)
    else:
        target[data.draw(PY_HASHABLES)] = target.pop(path[-1])
    _only_malformed(d)


# --- the fast path and the careful path agree -------------------------------------------
# from_dict validates what current amphorae send in one tight pass and hands
# anything else to the careful parser; both must accept the same messages,
# build equal trees and refuse with the same message.


def _careful(d: Any, limits: Limits | None = None, recv_time: float | None = None) -> Heartbeat:
    from amphora_heartbeat.parse import parse_careful

    return parse_careful(Heartbeat, d, recv_time, limits or Limits())


def _outcome(parse: Callable[[], Heartbeat]) -> Heartbeat | str:
    try:
        return parse()
    except MalformedError as exc:
        return f"malformed: {exc}"


def _assert_same_tree(fast: Heartbeat, careful: Heartbeat) -> None:
    assert fast == careful
    assert repr(fast) == repr(careful)
    assert fast.to_dict() == careful.to_dict()
    assert [p.key for p in fast.pools.values()] == [p.key for p in careful.pools.values()]
    for lid, listener in fast.listeners.items():
        assert list(listener.pools) == list(careful.listeners[lid].pools)
        for pid, pool in listener.pools.items():
            assert pool is fast.pools[pid]


@pytest.mark.parametrize("version", [2, 3, 7])
@pytest.mark.parametrize("members", [0, 1, 4])
def test_fast_path_builds_the_careful_tree(version: int, members: int) -> None:
    """Standard messages parse to the same tree, pool ownership and keys as the careful parser."""
    for seed in range(5):
        d = build_message(version=version, listeners=2, pools=3, members=members, seed=seed)
        d["pools"]["orphan"] = {"members": {"m": "DRAIN"}}  # bare key, no status
        d["pools"]["p9:unknown-listener"] = {"status": "DOWN", "members": {}}
        _assert_same_tree(Heartbeat.from_dict(d, recv_time=1.5), _careful(d, recv_time=1.5))
        assert Heartbeat.from_dict(d, recv_time=1.5).recv_time == 1.5


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: d["pools"].update({"p1:l2": d["pools"]["p1:l1"]}), id="shared-pool"),
        pytest.param(lambda d: d["pools"]["p1:l1"].update(members=[{"m9": "UP"}]), id="list"),
        pytest.param(lambda d: d.update(id="amp~!"), id="punctuated-id"),
        pytest.param(lambda d: d["listeners"]["l1"]["stats"].pop("ereq"), id="no-ereq"),
        pytest.param(lambda d: d["pools"]["p1:l1"]["members"].update(m1="weird"), id="status"),
        pytest.param(lambda d: d["pools"]["p1:l1"]["members"].update({"m:9": "UP"}), id="mid"),
    ],
)
def test_unusual_but_valid_messages_parse_alike(change: Callable[[dict[str, Any]], Any]) -> None:
    """Messages off the fast path's common shape still parse, to the careful parser's tree."""
    d = message(3)
    d["listeners"]["l2"] = {"status": "FULL", "stats": dict(STATS)}
    change(d)
    _assert_same_tree(Heartbeat.from_dict(d), _careful(d))


def test_mappings_and_subclasses_take_the_careful_path() -> None:
    """A Mapping that is not a dict, or a Heartbeat subclass, parses to an equal tree."""
    import types as pytypes

    class Sub(Heartbeat):
        pass

    d = message(3)
    assert Heartbeat.from_dict(pytypes.MappingProxyType(d)) == Heartbeat.from_dict(d)
    sub = Sub.from_dict(d)
    assert type(sub) is Sub
    assert sub.listeners == Heartbeat.from_dict(d).listeners


_JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-2, max_value=(1 << 64)),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            found += _paths(v, (*prefix, k))
    return found


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_fast_and_careful_paths_agree_on_mutated_messages(data: st.DataObject) -> None:
    """Any one leaf of a standard message replaced: both paths accept alike or refuse alike."""
    d = build_message(version=3, listeners=2, pools=2, members=2, seed=1)
    path = data.draw(st.sampled_from(_paths(d)[1:]))
    target = d
    for key in path[:-1]:
        target = target[key]
    if data.draw(st.booleans()):
        target[path[-1]] = data.draw(_JSON_LEAF)
    else:
        del target[path[-1]]
    limits = Limits(max_members=data.draw(st.integers(0, 3)), max_id_length=36)
    careful = _outcome(lambda: _careful(copy.deepcopy(d), limits))
    fast = _outcome(lambda: Heartbeat.from_dict(d, limits=limits))
    if isinstance(careful, str) or isinstance(fast, str):
        assert fast == careful
    else:
        _assert_same_tree(fast, careful)


@pytest.mark.parametrize("counter", ["rx", "tx", "totconns", "ereq", "conns"])
@pytest.mark.parametrize("value", [-1, 1 << 31, 1 << 63, -(1 << 70)])
def test_each_counter_is_bounded_on_the_fast_path(counter: str, value: int) -> None:
    """A negative or oversized counter anywhere is malformed, naming that counter."""
    from amphora_heartbeat import parse

    for bound in (parse._MAX_COUNTER, parse._MAX_CONNS):
        assert bound & (bound + 1) == 0  # all-ones masks, as the fast path's OR needs
    d = message(3)
    d["listeners"]["l1"]["stats"][counter] = value
    limit = parse._MAX_CONNS if counter == "conns" else parse._MAX_COUNTER
    if 0 <= value <= limit:
        assert Heartbeat.from_dict(d).listeners["l1"].stats == _careful(d).listeners["l1"].stats
    else:
        with pytest.raises(MalformedError, match=f"stats.{counter}"):
            Heartbeat.from_dict(d)
