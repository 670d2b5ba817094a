"""Octavia's status rules: one test per row of the spec's tables, then properties."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amphora_heartbeat import rules
from amphora_heartbeat.logs import RateLimitedLogger
from amphora_heartbeat.models import Heartbeat
from amphora_heartbeat.rules import (
    LISTENER_COUNT_MISMATCH,
    REASONS,
    TOO_LATE,
    UNKNOWN_AMPHORA,
    HealthUpdate,
    ListenerView,
    LoadBalancerView,
    MemberView,
    PoolView,
    derive,
)
from amphora_heartbeat.testing import AmphoraSpec, ListenerSpec, PoolSpec, make_fleet

NOW = 1_000_000.0

# One load balancer: listeners L1 (pools P1, P2) and L2 (pool P3); two members a pool.
SPEC = AmphoraSpec(
    "amp",
    "lb",
    (
        ListenerSpec("L1", "HTTP", (PoolSpec("P1", ("m1", "m2")), PoolSpec("P2", ("m3", "m4")))),
        ListenerSpec("L2", "HTTP", (PoolSpec("P3", ("m5", "m6")),)),
    ),
)


@pytest.fixture(autouse=True)
def fresh_status_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give each test its own window for the rules' rate-limited warnings."""
    fresh = RateLimitedLogger(rules._LOG, interval=rules._STATUS_WARNINGS.interval)
    monkeypatch.setattr(rules, "_STATUS_WARNINGS", fresh)


def heartbeat(spec: AmphoraSpec = SPEC, *, recv_time: float | None = NOW, **kw: Any) -> Heartbeat:
    """Return the spec's heartbeat (all healthy unless overridden) received at ``recv_time``."""
    return Heartbeat.from_dict(spec.message(**kw), recv_time=recv_time)


def judge(
    hb: Heartbeat | None = None,
    view: dict[str, Any] | None = None,
    *,
    now: float = NOW,
    udp_listeners_down: tuple[str, ...] = (),
) -> HealthUpdate:
    """Derive the update for ``hb`` (healthy by default) against ``view`` (all ONLINE)."""
    hb = heartbeat() if hb is None else hb
    view = SPEC.view() if view is None else view
    lbv = LoadBalancerView.from_dict(view, udp_listeners_down=udp_listeners_down)
    return derive(hb, lbv, now=now)


def view_with(**changes: Any) -> dict[str, Any]:
    """Return the all-ONLINE view with top-level keys replaced."""
    view = SPEC.view()
    view.update(changes)
    return view


def set_status(view: dict[str, Any], kind: str, ident: str, status: str) -> dict[str, Any]:
    """Set one listener, pool or member's current status in a view dict; return it."""
    if kind == "listener":
        view["listeners"][ident]["operating_status"] = status
    elif kind == "pool":
        view["pools"][ident]["operating_status"] = status
    else:
        for pool in view["pools"].values():
            if ident in pool["members"]:
                pool["members"][ident]["operating_status"] = status
    return view


# --- Step 1: should the heartbeat be recorded? ----------------------------------------


def test_count_matches_records_heartbeat() -> None:
    """A heartbeat reporting every enabled listener, on time, is recorded with no reason."""
    update = judge()
    assert update.record_heartbeat is True
    assert update.reason is None
    assert not update.changed


def test_expected_count_is_enabled_listeners_only() -> None:
    """A disabled listener is not expected: reporting only the enabled one is recorded."""
    view = SPEC.view()
    view["listeners"]["L2"]["enabled"] = False
    hb = Heartbeat.from_dict(
        {**SPEC.message(), "listeners": {"L1": SPEC.message()["listeners"]["L1"]}},
        recv_time=NOW,
    )
    update = judge(hb, view)
    assert update.record_heartbeat is True
    assert update.listeners == {"L2": "OFFLINE"}


def test_count_mismatch_is_not_recorded_but_statuses_update() -> None:
    """A listener-count mismatch records no health, yet the status rules still run."""
    hb = heartbeat(pool_status={"P1": "DOWN"})
    view = SPEC.view()
    view["listeners"]["L3"] = {"operating_status": "ONLINE", "protocol": "HTTP", "enabled": True}
    update = judge(hb, view)
    assert update.record_heartbeat is False
    assert update.reason == LISTENER_COUNT_MISMATCH
    assert update.listeners == {"L3": "ERROR"}
    assert update.pools == {"P1": "ERROR"}
    assert update.loadbalancer == {"lb": "ERROR"}


def test_count_mismatch_is_reported_without_judging_lateness() -> None:
    """A late heartbeat with a count mismatch reports the mismatch and still changes statuses."""
    hb = heartbeat(recv_time=NOW - 3600, member_status={"m1": "DOWN"})
    view = SPEC.view()
    del view["listeners"]["L2"]
    update = judge(hb, view)
    assert update.reason == LISTENER_COUNT_MISMATCH
    assert update.members == {"m1": "ERROR"}


@pytest.mark.parametrize("provisioning", ["PENDING_UPDATE", "PENDING_CREATE", "PENDING_DELETE"])
def test_pending_lb_skips_listener_count_check(provisioning: str) -> None:
    """A load balancer whose provisioning status contains PENDING records any listener count."""
    hb = Heartbeat.from_dict({"id": "amp", "ver": 3, "listeners": {}, "pools": {}}, recv_time=NOW)
    update = judge(hb, view_with(provisioning_status=provisioning))
    assert update.record_heartbeat is True
    assert update.reason is None


def test_disabled_lb_skips_listener_count_check() -> None:
    """A disabled load balancer records any listener count."""
    hb = Heartbeat.from_dict({"id": "amp", "ver": 3, "listeners": {}, "pools": {}}, recv_time=NOW)
    assert judge(hb, view_with(enabled=False)).record_heartbeat is True


def udp_spec() -> AmphoraSpec:
    """Return an amphora with one HTTP listener and one UDP listener (pool PU, no members)."""
    return AmphoraSpec(
        "amp",
        "lb",
        (
            ListenerSpec("L1", "HTTP", (PoolSpec("P1", ("m1",)),)),
            ListenerSpec("LU", "UDP", (PoolSpec("PU", ()),)),
        ),
    )


def without_listener(spec: AmphoraSpec, lid: str, version: int) -> Heartbeat:
    """Return the spec's healthy heartbeat with one listener left out."""
    message = spec.message(version=version)
    del message["listeners"][lid]
    return Heartbeat.from_dict(message, recv_time=NOW)


def test_unversioned_udp_listener_down_is_not_expected() -> None:
    """Without a ver key, a UDP listener whose default pool has no enabled member is subtracted."""
    spec = udp_spec()
    hb = without_listener(spec, "LU", version=0)
    assert hb.versioned is False
    update = derive(
        hb, LoadBalancerView.from_dict(spec.view(), udp_listeners_down=("LU",)), now=NOW
    )
    assert update.record_heartbeat is True


def test_unversioned_disabled_udp_listener_down_is_still_subtracted() -> None:
    """Octavia subtracts a down UDP listener even when disabled: the amphora is never recorded."""
    spec = udp_spec()
    view = spec.view()
    view["listeners"]["LU"]["enabled"] = False
    hb = without_listener(spec, "LU", version=0)
    update = derive(hb, LoadBalancerView.from_dict(view, udp_listeners_down=("LU",)), now=NOW)
    assert update.reason == LISTENER_COUNT_MISMATCH


def test_versioned_heartbeat_skips_udp_rule() -> None:
    """A heartbeat with a ver key (even 1) expects every enabled listener, UDP included."""
    spec = udp_spec()
    hb = without_listener(spec, "LU", version=1)
    update = derive(
        hb, LoadBalancerView.from_dict(spec.view(), udp_listeners_down=("LU",)), now=NOW
    )
    assert update.reason == LISTENER_COUNT_MISMATCH


def test_udp_rule_ignores_ids_of_non_udp_listeners() -> None:
    """Only view listeners whose protocol is UDP are subtracted by the pre-versioning rule."""
    spec = udp_spec()
    hb = without_listener(spec, "L1", version=0)
    update = derive(
        hb, LoadBalancerView.from_dict(spec.view(), udp_listeners_down=("L1",)), now=NOW
    )
    assert update.reason == LISTENER_COUNT_MISMATCH


def test_empty_view_is_unknown_amphora() -> None:
    """An empty view records nothing, changes nothing and says unknown_amphora."""
    update = judge(view={})
    assert update.to_dict() == {
        "record_heartbeat": False,
        "reason": UNKNOWN_AMPHORA,
        "loadbalancer": {},
        "listeners": {},
        "pools": {},
        "members": {},
    }


def test_too_late_records_nothing_and_changes_nothing() -> None:
    """A heartbeat judged heartbeat_interval seconds after receipt records and changes nothing."""
    hb = heartbeat(recv_time=NOW - 10, pool_status={"P1": "DOWN"})
    update = judge(hb)
    assert update.record_heartbeat is False
    assert update.reason == TOO_LATE
    assert not update.changed


def test_just_in_time_is_recorded() -> None:
    """A heartbeat judged just under heartbeat_interval after receipt is recorded."""
    assert judge(heartbeat(recv_time=NOW - 9.999)).record_heartbeat is True


def test_heartbeat_interval_is_configurable() -> None:
    """The too-late bound is the heartbeat_interval argument, in seconds."""
    hb = heartbeat(recv_time=NOW - 3)
    view = LoadBalancerView.from_dict(SPEC.view())
    assert derive(hb, view, now=NOW, heartbeat_interval=3).reason == TOO_LATE
    assert derive(hb, view, now=NOW, heartbeat_interval=4).reason is None


def test_missing_recv_time_counts_as_received_now() -> None:
    """A heartbeat without recv_time is judged as received at now, so never late."""
    assert judge(heartbeat(recv_time=None)).record_heartbeat is True


def test_reasons_are_stable_strings() -> None:
    """The reasons are the three stable counter names."""
    assert REASONS == ("listener_count_mismatch", "too_late", "unknown_amphora")


# --- Step 2: listeners ----------------------------------------------------------------


def drop_listener(spec: AmphoraSpec, lid: str, **kw: Any) -> Heartbeat:
    """Return a heartbeat that leaves listener ``lid`` out (pools stay reported)."""
    message = spec.message(**kw)
    del message["listeners"][lid]
    return Heartbeat.from_dict(message, recv_time=NOW)


def test_listener_not_reported_enabled_on_active_lb_is_error() -> None:
    """An enabled listener the amphora does not report, on an ACTIVE lb, becomes ERROR."""
    assert judge(drop_listener(SPEC, "L2")).listeners == {"L2": "ERROR"}


def test_listener_not_reported_on_disabled_active_lb_is_still_error() -> None:
    """The ERROR rule looks at the listener and provisioning, not at the lb's enabled flag."""
    update = judge(drop_listener(SPEC, "L2"), view_with(enabled=False))
    assert update.listeners == {"L2": "ERROR"}
    assert update.loadbalancer == {"lb": "OFFLINE"}


def test_listener_not_reported_disabled_is_offline() -> None:
    """A disabled listener the amphora does not report becomes OFFLINE."""
    view = SPEC.view()
    view["listeners"]["L2"]["enabled"] = 0
    assert judge(drop_listener(SPEC, "L2"), view).listeners == {"L2": "OFFLINE"}


def test_listener_not_reported_on_non_active_lb_is_offline() -> None:
    """An enabled listener not reported while the lb is not ACTIVE becomes OFFLINE."""
    view = view_with(provisioning_status="PENDING_UPDATE")
    assert judge(drop_listener(SPEC, "L2"), view).listeners == {"L2": "OFFLINE"}


def test_listener_open_is_online() -> None:
    """A listener reported OPEN becomes ONLINE."""
    view = set_status(SPEC.view(), "listener", "L1", "OFFLINE")
    assert judge(view=view).listeners == {"L1": "ONLINE"}


def test_listener_full_is_degraded_and_degrades_lb() -> None:
    """A listener reported FULL becomes DEGRADED, and an ONLINE lb DEGRADED."""
    update = judge(heartbeat(listener_status={"L1": "FULL"}))
    assert update.listeners == {"L1": "DEGRADED"}
    assert update.loadbalancer == {"lb": "DEGRADED"}


def test_listener_full_on_disabled_lb_keeps_lb_offline() -> None:
    """FULL degrades only an ONLINE lb: a disabled lb stays OFFLINE."""
    update = judge(heartbeat(listener_status={"L1": "FULL"}), view_with(enabled=False))
    assert update.loadbalancer == {"lb": "OFFLINE"}


def test_listener_unknown_status_is_unchanged_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A listener status other than OPEN or FULL leaves the listener unchanged, with a warning."""
    view = set_status(SPEC.view(), "listener", "L1", "OFFLINE")
    with caplog.at_level(logging.WARNING, logger="amphora_heartbeat"):
        update = judge(heartbeat(listener_status={"L1": "open"}), view)
    assert update.listeners == {}
    assert "L1" in caplog.text


# --- Step 2: pools --------------------------------------------------------------------


def drop_pool(spec: AmphoraSpec, pid: str, version: int = 3) -> Heartbeat:
    """Return a heartbeat that leaves pool ``pid`` out."""
    message = spec.message(version=version)
    if version >= 2:
        message["pools"] = {k: v for k, v in message["pools"].items() if not k.startswith(pid)}
    else:
        for entry in message["listeners"].values():
            entry["pools"] = {k: v for k, v in entry["pools"].items() if not k.startswith(pid)}
    return Heartbeat.from_dict(message, recv_time=NOW)


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_pool_not_reported_becomes_offline(version: int) -> None:
    """A view pool no listener reports is potentially offline, and finally OFFLINE."""
    update = judge(drop_pool(SPEC, "P2", version))
    assert update.pools == {"P2": "OFFLINE"}
    assert update.members == {}  # its members are not judged
    assert update.loadbalancer == {}


@pytest.mark.parametrize("current", ["OFFLINE", "offline"])
def test_pool_not_reported_already_offline_is_unchanged(current: str) -> None:
    """A potentially offline pool already OFFLINE (in any case) is not rewritten."""
    view = set_status(SPEC.view(), "pool", "P2", current)
    assert judge(drop_pool(SPEC, "P2"), view).pools == {}


def test_pool_up_is_online() -> None:
    """A pool reported UP becomes ONLINE."""
    view = set_status(SPEC.view(), "pool", "P1", "ERROR")
    assert judge(view=view).pools == {"P1": "ONLINE"}


def test_pool_down_is_error_and_lb_error() -> None:
    """A pool reported DOWN becomes ERROR, and so does the lb."""
    update = judge(heartbeat(pool_status={"P1": "DOWN"}))
    assert update.pools == {"P1": "ERROR"}
    assert update.loadbalancer == {"lb": "ERROR"}


def test_pool_down_sets_error_even_on_disabled_lb() -> None:
    """A DOWN pool makes even a disabled lb ERROR."""
    update = judge(heartbeat(pool_status={"P1": "DOWN"}), view_with(enabled=False))
    assert update.loadbalancer == {"lb": "ERROR"}


@pytest.mark.parametrize("status", ["up", "MAINT", None])
def test_pool_unknown_status_is_unchanged(status: str | None) -> None:
    """A pool status other than UP or DOWN (or none) leaves the pool unchanged."""
    message = SPEC.message()
    key = next(k for k in message["pools"] if k.startswith("P1"))
    if status is None:
        del message["pools"][key]["status"]
    else:
        message["pools"][key]["status"] = status
    view = set_status(SPEC.view(), "pool", "P1", "ERROR")
    update = judge(Heartbeat.from_dict(message, recv_time=NOW), view)
    assert "P1" not in update.pools


def test_pool_keys_are_normalised_before_the_last_colon() -> None:
    """Bare and ``pool:listener`` keys both name the pool before the last colon."""
    message = SPEC.message()
    message["pools"] = {
        "P1": {"status": "DOWN", "members": {"m1": "UP", "m2": "UP"}},
        "P2:x:L1": {"status": "UP", "members": {}},
        "P3:L2": {"status": "UP", "members": {"m5": "UP", "m6": "UP"}},
    }
    view = SPEC.view()
    view["pools"]["P2:x"] = view["pools"].pop("P2")
    update = judge(Heartbeat.from_dict(message, recv_time=NOW), view)
    assert update.pools == {"P1": "ERROR"}
    assert update.members == {"m3": "OFFLINE", "m4": "OFFLINE"}


@pytest.mark.parametrize("version", [0, 1])
def test_v1_pools_are_processed_once_across_listeners(version: int) -> None:
    """Versions 0/1: a pool judged under one listener is skipped under the next."""
    message = SPEC.message(version=version)
    # L2 also reports P1, as DOWN; L1 (first in the view) reported it UP.
    message["listeners"]["L2"]["pools"]["P1:L2"] = {"status": "DOWN", "members": {}}
    update = judge(Heartbeat.from_dict(message, recv_time=NOW))
    assert update.pools == {}
    assert update.loadbalancer == {}


@pytest.mark.parametrize("version", [0, 1])
def test_v1_pool_reported_by_a_later_listener_is_not_offline(version: int) -> None:
    """Versions 0/1: a pool missing from one listener but reported by another is judged."""
    message = SPEC.message(version=version)
    moved = message["listeners"]["L1"]["pools"].pop("P1:L1")
    message["listeners"]["L2"]["pools"]["P1:L2"] = {**moved, "status": "DOWN"}
    update = judge(Heartbeat.from_dict(message, recv_time=NOW))
    assert update.pools == {"P1": "ERROR"}


def test_v1_pools_unjudged_when_no_view_listener_is_reported() -> None:
    """Versions 0/1: pools are only judged under reported view listeners."""
    message = SPEC.message(version=1, pool_status={"P1": "DOWN"})
    message["listeners"] = {"other": message["listeners"]["L1"]}
    view = view_with(provisioning_status="PENDING_UPDATE")
    update = judge(Heartbeat.from_dict(message, recv_time=NOW), view)
    assert update.pools == {}
    assert update.listeners == {"L1": "OFFLINE", "L2": "OFFLINE"}


def test_v2_pools_come_from_the_top_level_once() -> None:
    """Versions 2+: view pools are judged once against the top-level pools."""
    message = SPEC.message(version=2, pool_status={"P3": "DOWN"})
    update = judge(Heartbeat.from_dict(message, recv_time=NOW))
    assert update.pools == {"P3": "ERROR"}


# --- Step 2: members ------------------------------------------------------------------


def drop_member(mid: str, **kw: Any) -> Heartbeat:
    """Return a heartbeat that leaves member ``mid`` out of its pool."""
    message = SPEC.message(**kw)
    for pool in message["pools"].values():
        pool["members"].pop(mid, None)
    return Heartbeat.from_dict(message, recv_time=NOW)


def test_member_not_reported_becomes_offline() -> None:
    """A view member its reported pool leaves out becomes OFFLINE."""
    assert judge(drop_member("m1")).members == {"m1": "OFFLINE"}


def test_member_not_reported_no_monitor_is_unchanged() -> None:
    """An unreported member whose current status is NO_MONITOR keeps it."""
    view = set_status(SPEC.view(), "member", "m1", "NO_MONITOR")
    assert judge(drop_member("m1"), view).members == {}


def test_member_not_reported_no_monitor_check_is_exact() -> None:
    """The NO_MONITOR exception compares exactly, as Octavia's: lower case is set OFFLINE."""
    view = set_status(SPEC.view(), "member", "m1", "no_monitor")
    assert judge(drop_member("m1"), view).members == {"m1": "OFFLINE"}


@pytest.mark.parametrize("status", ["UP", "UP 1/3", "UP 2/3"])
def test_member_reported_up_is_online(status: str) -> None:
    """A member reported UP, or in a transitional UP state, becomes ONLINE."""
    view = set_status(SPEC.view(), "member", "m1", "ERROR")
    update = judge(heartbeat(member_status={"m1": status}), view)
    assert update.members == {"m1": "ONLINE"}


@pytest.mark.parametrize("status", ["DOWN", "DOWN 1/2"])
def test_member_reported_down_sets_error_and_degrades_pool_and_lb(status: str) -> None:
    """A DOWN member becomes ERROR; its ONLINE pool and the ONLINE lb become DEGRADED."""
    update = judge(heartbeat(member_status={"m1": status}))
    assert update.members == {"m1": "ERROR"}
    assert update.pools == {"P1": "DEGRADED"}
    assert update.loadbalancer == {"lb": "DEGRADED"}


def test_member_down_in_down_pool_leaves_pool_and_lb_error() -> None:
    """ERROR beats DEGRADED: a DOWN member of a DOWN pool does not degrade either."""
    update = judge(heartbeat(pool_status={"P1": "DOWN"}, member_status={"m1": "DOWN"}))
    assert update.pools == {"P1": "ERROR"}
    assert update.loadbalancer == {"lb": "ERROR"}


def test_member_down_in_pool_of_unknown_status_degrades_nothing() -> None:
    """Only a pool judged ONLINE is degraded by a DOWN member, and only then the lb."""
    update = judge(heartbeat(pool_status={"P1": "weird"}, member_status={"m1": "DOWN"}))
    assert update.members == {"m1": "ERROR"}
    assert update.pools == {}
    assert update.loadbalancer == {}


def test_member_down_on_disabled_lb_keeps_lb_offline() -> None:
    """A DOWN member degrades the pool but not a disabled (OFFLINE) lb."""
    update = judge(heartbeat(member_status={"m1": "DOWN"}), view_with(enabled=False))
    assert update.pools == {"P1": "DEGRADED"}
    assert update.loadbalancer == {"lb": "OFFLINE"}


def test_member_drain_is_draining() -> None:
    """A member reported DRAIN becomes DRAINING."""
    assert judge(heartbeat(member_status={"m1": "DRAIN"})).members == {"m1": "DRAINING"}


def test_member_maint_is_offline() -> None:
    """A member reported MAINT becomes OFFLINE."""
    assert judge(heartbeat(member_status={"m1": "MAINT"})).members == {"m1": "OFFLINE"}


def test_member_no_check_is_no_monitor() -> None:
    """A member reported 'no check' becomes NO_MONITOR."""
    assert judge(heartbeat(member_status={"m1": "no check"})).members == {"m1": "NO_MONITOR"}


def test_member_restarting_is_unchanged() -> None:
    """A member reported RESTARTING keeps its current status, and logs nothing."""
    view = set_status(SPEC.view(), "member", "m1", "ERROR")
    assert judge(heartbeat(member_status={"m1": "RESTARTING"}), view).members == {}


@pytest.mark.parametrize("status", ["up", "NO CHECK", "", "drain"])
def test_member_unknown_status_is_unchanged_with_a_warning(
    status: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A member status Octavia does not know leaves the member unchanged, with a warning."""
    view = set_status(SPEC.view(), "member", "m1", "ERROR")
    with caplog.at_level(logging.WARNING, logger="amphora_heartbeat"):
        update = judge(heartbeat(member_status={"m1": status}), view)
    assert update.members == {}
    assert "m1" in caplog.text


def test_unknown_statuses_log_one_line_per_kind_per_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """500 heartbeats of unknown statuses log a line per kind per 10 s, then the counts."""
    every = {m: "weird" for p in SPEC.pools for m in p.members}
    hb = heartbeat(
        listener_status={"L1": "odd", "L2": "odd"},
        pool_status={p.pool_id: "??" for p in SPEC.pools},
        member_status=every,
        recv_time=None,  # judged as received at each now
    )
    with caplog.at_level(logging.WARNING, logger="amphora_heartbeat"):
        for i in range(500):
            judge(hb, now=NOW + i * 0.01)  # 5 seconds: one window
        first = len(caplog.records)
        judge(hb, now=NOW + 10.0)
    assert first == 3
    lines = [r.getMessage() for r in caplog.records[first:]]
    assert "999 more listener_status lines not logged (at most 1 per 10 s)" in lines
    assert "1499 more pool_status lines not logged (at most 1 per 10 s)" in lines
    assert "2999 more member_status lines not logged (at most 1 per 10 s)" in lines
    assert len(lines) == 6


def test_reported_ids_absent_from_the_view_are_ignored() -> None:
    """Listeners, pools and members reported but absent from the view change nothing."""
    message = SPEC.message(pool_status={"P1": "DOWN"})
    message["pools"]["ghost:L1"] = {"status": "DOWN", "members": {"gm": "DOWN"}}
    message["pools"]["P3:L2"]["members"]["stray"] = "DOWN"
    view = SPEC.view()
    del view["listeners"]["L2"]  # reported but unknown: a count mismatch, ignored
    del view["pools"]["P1"]
    update = judge(Heartbeat.from_dict(message, recv_time=NOW), view)
    assert update.reason == LISTENER_COUNT_MISMATCH
    assert update.listeners == update.pools == update.members == update.loadbalancer == {}


# --- Step 2: the load balancer and writing only differences --------------------------


def test_disabled_lb_is_offline() -> None:
    """A disabled load balancer's computed status is OFFLINE."""
    assert judge(view=view_with(enabled=False)).loadbalancer == {"lb": "OFFLINE"}


def test_enabled_lb_with_healthy_report_is_online() -> None:
    """An enabled lb whose amphora reports everything healthy becomes ONLINE."""
    assert judge(view=view_with(operating_status="ERROR")).loadbalancer == {"lb": "ONLINE"}


@pytest.mark.parametrize("version", [1, 3])
def test_degraded_never_overrides_error(version: int) -> None:
    """A DOWN pool's ERROR is kept whatever FULL listeners or DOWN members come after."""
    hb = heartbeat(
        version=version,
        listener_status={"L2": "FULL"},
        pool_status={"P1": "DOWN"},
        member_status={"m3": "DOWN", "m5": "DOWN"},
    )
    update = judge(hb)
    assert update.loadbalancer == {"lb": "ERROR"}
    assert update.pools == {"P1": "ERROR", "P2": "DEGRADED", "P3": "DEGRADED"}


def test_changes_compare_case_insensitively() -> None:
    """A current status equal but for case is not rewritten; any string is a current status."""
    view = view_with(operating_status="online")
    set_status(view, "listener", "L1", "Online")
    set_status(view, "pool", "P1", "oNLINE")
    set_status(view, "member", "m1", "online")
    set_status(view, "member", "m2", "SOMETHING-ELSE")
    update = judge(view=view)
    assert update.to_dict() == {
        "record_heartbeat": True,
        "reason": None,
        "loadbalancer": {},
        "listeners": {},
        "pools": {},
        "members": {"m2": "ONLINE"},
    }


# --- the view model ---------------------------------------------------------------------


def test_view_accepts_integer_booleans() -> None:
    """Booleans given as 0/1 (as some database rows hold them) build the same view."""
    view = SPEC.view()
    view["enabled"] = 1
    view["listeners"]["L1"]["enabled"] = 0
    lbv = LoadBalancerView.from_dict(view)
    assert lbv.enabled is True
    assert lbv.listeners["L1"].enabled is False


def test_view_round_trips_through_to_dict() -> None:
    """from_dict(view).to_dict() gives back the spec's mapping."""
    view = SPEC.view()
    assert LoadBalancerView.from_dict(view).to_dict() == view
    assert LoadBalancerView.from_dict({}).to_dict() == {}


def test_view_without_listeners_pools_or_members() -> None:
    """Absent listeners, pools and members mean none."""
    lbv = LoadBalancerView.from_dict(
        {
            "id": "lb",
            "enabled": True,
            "provisioning_status": "ACTIVE",
            "operating_status": "OFFLINE",
            "pools": {"P": {"operating_status": "ONLINE"}},
        }
    )
    assert lbv.listeners == {}
    assert lbv.pools == {"P": PoolView(operating_status="ONLINE", members={})}
    assert lbv.known


def test_empty_view_is_unknown() -> None:
    """The empty mapping builds the unknown view."""
    assert not LoadBalancerView.from_dict({}).known


@pytest.mark.parametrize(
    ("patch", "error"),
    [
        ({"enabled": "yes"}, TypeError),
        ({"enabled": 2}, TypeError),
        ({"operating_status": None}, TypeError),
        ({"id": 5}, TypeError),
        ({"listeners": []}, TypeError),
        ({"provisioning_status": ...}, ValueError),
    ],
)
def test_view_rejects_wrong_shapes(patch: dict[str, Any], error: type[Exception]) -> None:
    """A caller's wrongly shaped view raises TypeError or ValueError naming the key."""
    view = SPEC.view()
    for key, value in patch.items():
        if value is ...:
            del view[key]
        else:
            view[key] = value
    with pytest.raises(error, match="view"):
        LoadBalancerView.from_dict(view)


def test_view_rejects_a_string_as_udp_ids() -> None:
    """udp_listeners_down must be a collection of ids, not one id string."""
    with pytest.raises(TypeError):
        LoadBalancerView.from_dict(SPEC.view(), udp_listeners_down="LU")


def test_view_rejects_bad_nested_entries() -> None:
    """Missing or mistyped listener, pool and member fields are named in the error."""
    view = SPEC.view()
    del view["listeners"]["L1"]["protocol"]
    with pytest.raises(ValueError, match=r"listeners\.L1\.protocol"):
        LoadBalancerView.from_dict(view)
    view = SPEC.view()
    view["pools"]["P1"]["members"]["m1"] = {"operating_status": 3}
    with pytest.raises(TypeError, match=r"members\.m1"):
        LoadBalancerView.from_dict(view)


def test_apply_writes_changes_into_the_view() -> None:
    """view.apply(update) holds the statuses a controller stores; derive then finds nothing."""
    hb = heartbeat(pool_status={"P1": "DOWN"}, member_status={"m5": "DRAIN"}, recv_time=None)
    view = LoadBalancerView.from_dict(SPEC.view())
    update = derive(hb, view, now=NOW)
    after = view.apply(update)
    assert after.operating_status == "ERROR"
    assert after.pools["P1"].operating_status == "ERROR"
    assert after.pools["P3"].members["m5"] == MemberView("DRAINING")
    assert not derive(hb, after, now=NOW).changed
    assert LoadBalancerView.from_dict({}).apply(update) == LoadBalancerView()


def test_apply_listener_change() -> None:
    """apply() writes listener changes and keeps the other fields."""
    view = LoadBalancerView.from_dict(SPEC.view())
    update = HealthUpdate(amphora_id="amp", record_heartbeat=True, listeners={"L1": "ERROR"})
    assert view.apply(update).listeners["L1"] == ListenerView(
        operating_status="ERROR", protocol="HTTP", enabled=True
    )


# --- properties -------------------------------------------------------------------------

STATUSES = ["ONLINE", "OFFLINE", "DEGRADED", "ERROR", "DRAINING", "NO_MONITOR", "online", "x"]
FLEET = make_fleet(3, seed=7, listeners=2, pools=3, members=3)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Heartbeat, LoadBalancerView, float]:
    """Draw a heartbeat, a view of the same load balancer (perturbed) and a judging time."""
    spec = draw(st.sampled_from(FLEET))
    version = draw(st.integers(0, 3))
    statuses = st.sampled_from(["OPEN", "FULL", "?"])
    message = spec.message(
        version=version,
        listener_status={lst.listener_id: draw(statuses) for lst in spec.listeners},
        pool_status={p.pool_id: draw(st.sampled_from(["UP", "DOWN", "?"])) for p in spec.pools},
        member_status={
            m: draw(
                st.sampled_from(
                    ["UP", "DOWN", "UP 1/3", "DRAIN", "MAINT", "no check", "RESTARTING", "?"]
                )
            )
            for p in spec.pools
            for m in p.members
        },
    )
    # Drop some reported listeners and (for v2+) pools; add a stray listener sometimes.
    for lid in list(message["listeners"]):
        if draw(st.booleans()) and draw(st.booleans()):
            del message["listeners"][lid]
    if version >= 2:
        for key in list(message["pools"]):
            if draw(st.booleans()) and draw(st.booleans()):
                del message["pools"][key]
    view = spec.view(
        enabled=draw(st.booleans()),
        provisioning_status=draw(st.sampled_from(["ACTIVE", "PENDING_UPDATE", "ERROR"])),
        operating_status=draw(st.sampled_from(STATUSES)),
    )
    for lv in view.get("listeners", {}).values():
        lv["operating_status"] = draw(st.sampled_from(STATUSES))
        lv["enabled"] = draw(st.booleans())
    for pv in view.get("pools", {}).values():
        pv["operating_status"] = draw(st.sampled_from(STATUSES))
        for mv in pv["members"].values():
            mv["operating_status"] = draw(st.sampled_from(STATUSES))
    hb = Heartbeat.from_dict(message, recv_time=NOW - draw(st.sampled_from([0.0, 5.0, 10.0])))
    return hb, LoadBalancerView.from_dict(view), NOW


def current_statuses(view: LoadBalancerView) -> dict[str, dict[str, str]]:
    """Return every current status of a view, by kind and id."""
    assert view.id is not None
    return {
        "loadbalancer": {view.id: view.operating_status},
        "listeners": {lid: lv.operating_status for lid, lv in view.listeners.items()},
        "pools": {pid: pv.operating_status for pid, pv in view.pools.items()},
        "members": {
            mid: mv.operating_status for pv in view.pools.values() for mid, mv in pv.members.items()
        },
    }


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_no_change_equals_the_current_status(
    scenario: tuple[Heartbeat, LoadBalancerView, float],
) -> None:
    """Every reported change differs case-insensitively from the view's current status."""
    hb, view, now = scenario
    update = derive(hb, view, now=now).to_dict()
    current = current_statuses(view)
    for kind, changes in current.items():
        for ident, status in update[kind].items():
            assert status.lower() != changes[ident].lower()


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_only_ids_from_the_view_appear(scenario: tuple[Heartbeat, LoadBalancerView, float]) -> None:
    """Changes name only the view's load balancer, listeners, pools and members."""
    hb, view, now = scenario
    update = derive(hb, view, now=now).to_dict()
    current = current_statuses(view)
    for kind in current:
        assert set(update[kind]) <= set(current[kind])


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_derive_is_deterministic(scenario: tuple[Heartbeat, LoadBalancerView, float]) -> None:
    """The same heartbeat and view give the same update, and the view is left untouched."""
    hb, view, now = scenario
    before = copy.deepcopy(view.to_dict())
    assert derive(hb, view, now=now) == derive(hb, view, now=now)
    assert view.to_dict() == before


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(FLEET),
    st.integers(0, 3),
    st.lists(st.sampled_from(STATUSES), min_size=32, max_size=32),
)
def test_all_healthy_on_active_enabled_lb_is_all_online(
    spec: AmphoraSpec, version: int, current: list[str]
) -> None:
    """A healthy heartbeat on an ACTIVE enabled lb sets ONLINE exactly where the status differs."""
    statuses = iter(current)
    view = spec.view(operating_status=next(statuses))
    for lv in view["listeners"].values():
        lv["operating_status"] = next(statuses)
    for pv in view["pools"].values():
        pv["operating_status"] = next(statuses)
        for mv in pv["members"].values():
            mv["operating_status"] = next(statuses)
    lbv = LoadBalancerView.from_dict(view)
    update = derive(Heartbeat.from_dict(spec.message(version=version)), lbv, now=NOW)
    assert update.record_heartbeat
    for kind, statuses_now in current_statuses(lbv).items():
        expected = {i: "ONLINE" for i, s in statuses_now.items() if s.lower() != "online"}
        assert update.to_dict()[kind] == expected


def test_view_rejects_a_member_that_is_not_a_mapping() -> None:
    """A member entry must be a mapping with an operating_status."""
    view = SPEC.view()
    view["pools"]["P1"]["members"]["m1"] = "ONLINE"
    with pytest.raises(TypeError, match=r"members\.m1"):
        LoadBalancerView.from_dict(view)


def test_view_keeps_any_number_of_distinct_member_statuses() -> None:
    """Odd current statuses, however many, are kept as given (the shared cache is bounded)."""
    members = {f"m{i}": {"operating_status": f"odd-{i}"} for i in range(200)}
    view = view_with(pools={"P": {"operating_status": "ONLINE", "members": members}})
    del view["listeners"]
    lbv = LoadBalancerView.from_dict(view)
    assert [mv.operating_status for mv in lbv.pools["P"].members.values()] == [
        f"odd-{i}" for i in range(200)
    ]
    assert lbv.to_dict() == view


def test_apply_pool_change_without_member_changes() -> None:
    """apply() writes a pool-only change and leaves members as they were."""
    view = LoadBalancerView.from_dict(SPEC.view())
    update = HealthUpdate(amphora_id="amp", record_heartbeat=True, pools={"P2": "OFFLINE"})
    after = view.apply(update)
    assert after.pools["P2"].operating_status == "OFFLINE"
    assert after.pools["P2"].members == view.pools["P2"].members
    assert after.operating_status == view.operating_status
