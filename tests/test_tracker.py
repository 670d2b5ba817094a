"""Stale tracking (grace, pause, storm guard, busy, next_deadline) and the replay guard."""

from __future__ import annotations

import copy
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amphora_heartbeat.models import Heartbeat
from amphora_heartbeat.tracker import (
    BOOT_MISSING,
    DUPLICATE,
    FIRST,
    NEW_BOOT,
    NEWER,
    OLD_BOOT,
    OLDER,
    REPLAY_REASONS,
    RESTART,
    FailoverDecision,
    HealthTracker,
    ReplayState,
    SeqGuard,
    decide,
    judge_replay,
)

T0 = 1_000.0


def tracker(threshold: int | None = None, *, timeout: float = 60.0) -> HealthTracker:
    """Return a tracker started at T0."""
    return HealthTracker(heartbeat_timeout=timeout, failover_threshold=threshold, started=T0)


def test_fresh_amphora_is_not_stale() -> None:
    """An amphora that reported within heartbeat_timeout is not stale."""
    t = tracker()
    t.record("a", T0 + 100)
    assert t.stale(T0 + 160) == FailoverDecision()


def test_stale_strictly_after_timeout() -> None:
    """An amphora is stale only when its last record is older than now - heartbeat_timeout."""
    t = tracker()
    t.record("a", T0 + 100)
    assert t.stale(T0 + 160).failover == ()
    assert t.stale(T0 + 160.5).failover == ("a",)


def test_startup_grace_fails_nothing_over() -> None:
    """Nothing is failed over before started + heartbeat_timeout, even long-silent records."""
    t = tracker()
    t.record("a", T0 - 500)  # loaded from a store: before the start is accepted
    assert t.stale(T0 + 59).failover == ()
    assert t.stale(T0 + 60).failover == ("a",)


def test_pause_restarts_the_grace() -> None:
    """After pause(p), nothing is failed over until p + heartbeat_timeout."""
    t = tracker()
    t.record("a", T0)
    t.pause(T0 + 100)
    t.pause(T0 + 90)  # an older pause does not shorten the wait
    assert t.stale(T0 + 159).failover == ()
    assert t.stale(T0 + 160).failover == ("a",)


def test_failed_over_amphora_is_busy_until_released() -> None:
    """A failed-over amphora is not returned again until release(); then it is retried."""
    t = tracker()
    t.record("a", T0)
    assert t.stale(T0 + 100).failover == ("a",)
    assert t.busy == {"a"}
    assert t.stale(T0 + 101).failover == ()
    t.release("a")
    assert t.stale(T0 + 102).failover == ("a",)


def test_record_does_not_clear_busy() -> None:
    """A heartbeat during a failover leaves the amphora busy (the failover decides)."""
    t = tracker()
    t.record("a", T0)
    t.stale(T0 + 100)
    t.record("a", T0 + 101)
    assert t.busy == {"a"}


def test_released_amphora_that_reported_is_not_retried() -> None:
    """Release of an amphora that reported meanwhile does not fail it over again."""
    t = tracker()
    t.record("a", T0)
    t.stale(T0 + 100)
    t.record("a", T0 + 101)
    t.release("a")
    assert t.stale(T0 + 102).failover == ()


def test_forget_drops_the_amphora() -> None:
    """forget() stops tracking; release or forget of unknown ids does nothing."""
    t = tracker()
    t.record("a", T0)
    t.stale(T0 + 100)
    t.forget("a")
    t.forget("nobody")
    t.release("nobody")
    assert "a" not in t
    assert len(t) == 0
    assert t.stale(T0 + 1000) == FailoverDecision()


def test_record_keeps_the_newest_time() -> None:
    """A record older than the one kept (a late store load) does not move last_seen back."""
    t = tracker()
    t.record("a", T0 + 50)
    t.record("a", T0 + 10)
    assert t.last_seen("a") == T0 + 50
    assert t.last_seen("b") is None


def test_failover_lists_oldest_first() -> None:
    """Stale amphorae come oldest first, then by id."""
    t = tracker()
    t.record("c", T0 + 5)
    t.record("b", T0 + 1)
    t.record("a", T0 + 5)
    assert t.stale(T0 + 200).failover == ("b", "a", "c")


def test_storm_threshold_holds_every_stale_amphora_back() -> None:
    """At the threshold nothing is failed over; every stale amphora is stopped (held)."""
    t = tracker(threshold=2)
    t.record("a", T0)
    t.record("b", T0)
    t.record("c", T0 + 500)
    decision = t.stale(T0 + 100)
    assert decision == FailoverDecision((), ("a", "b"))
    assert t.held == {"a", "b"}
    assert t.busy == frozenset()


def test_held_amphora_reporting_again_is_released_from_hold() -> None:
    """A held-back amphora that reports again is no longer held; below the threshold the rest go."""
    t = tracker(threshold=2)
    t.record("a", T0)
    t.record("b", T0)
    t.stale(T0 + 100)
    t.record("a", T0 + 101)
    assert t.held == {"b"}
    assert t.stale(T0 + 102) == FailoverDecision(("b",), ())
    assert t.held == frozenset()
    assert t.busy == {"b"}


def test_held_amphorae_stay_held_while_count_at_threshold() -> None:
    """Held-back amphorae are listed again as stopped while the count stays at the threshold."""
    t = tracker(threshold=2)
    t.record("a", T0)
    t.record("b", T0)
    t.stale(T0 + 100)
    assert t.stale(T0 + 200) == FailoverDecision((), ("a", "b"))


def test_grace_still_lists_held_back_amphorae() -> None:
    """During a pause, failover is empty but stopped still lists the held-back amphorae."""
    t = tracker(threshold=2)
    t.record("a", T0)
    t.record("b", T0)
    t.stale(T0 + 100)
    t.pause(T0 + 100)
    assert t.stale(T0 + 120) == FailoverDecision((), ("a", "b"))


def test_threshold_not_reached_fails_all_over() -> None:
    """Below the threshold every stale amphora is failed over."""
    t = tracker(threshold=3)
    t.record("a", T0)
    t.record("b", T0)
    assert t.stale(T0 + 100).failover == ("a", "b")


@pytest.mark.parametrize(("timeout", "threshold"), [(0, None), (-1.0, None), (60.0, 0), (60.0, -2)])
def test_bad_policy_is_a_value_error(timeout: float, threshold: int | None) -> None:
    """A non-positive timeout or a threshold below 1 is the caller's mistake."""
    with pytest.raises(ValueError, match="must be"):
        HealthTracker(heartbeat_timeout=timeout, failover_threshold=threshold, started=T0)


def test_decide_is_the_policy_alone() -> None:
    """decide() applies grace, pause and threshold to a given stale list, without state."""
    common = {"started": T0, "heartbeat_timeout": 60.0, "failover_threshold": 3}
    assert decide(["a", "b"], now=T0 + 10, paused_at=None, held={"b"}, **common) == (
        FailoverDecision((), ("b",))
    )
    assert decide(["a", "b"], now=T0 + 100, paused_at=T0 + 90, held=(), **common) == (
        FailoverDecision()
    )
    assert decide(["a", "b", "c"], now=T0 + 100, paused_at=None, held=(), **common) == (
        FailoverDecision((), ("a", "b", "c"))
    )
    assert decide(["a", "b"], now=T0 + 100, paused_at=None, held={"a"}, **common) == (
        FailoverDecision(("a", "b"), ())
    )


# --- next_deadline ------------------------------------------------------------------------


def test_next_deadline_none_when_nothing_tracked() -> None:
    """With no amphora there is nothing to wake up for."""
    assert tracker().next_deadline() is None


def test_next_deadline_is_the_oldest_record_plus_timeout() -> None:
    """The deadline is when the oldest non-busy record goes stale (or the grace ends)."""
    t = tracker()
    t.record("a", T0 + 30)
    t.record("b", T0 + 10)
    assert t.next_deadline() == T0 + 70
    t.record("b", T0 + 40)
    assert t.next_deadline() == T0 + 90


def test_next_deadline_waits_for_the_grace() -> None:
    """A record already too old gives the end of the grace (or of a pause) as the deadline."""
    t = tracker()
    t.record("a", T0 - 1000)
    assert t.next_deadline() == T0 + 60
    t.pause(T0 + 500)
    assert t.next_deadline() == T0 + 560


def test_next_deadline_skips_busy_and_held_amphorae() -> None:
    """Busy amphorae, and held ones while the count is at the threshold, set no deadline."""
    t = tracker(threshold=2)
    t.record("a", T0)
    t.record("b", T0)
    t.stale(T0 + 100)
    assert t.next_deadline() is None
    t.record("c", T0 + 100)
    assert t.next_deadline() == T0 + 160


def test_next_deadline_when_held_fall_below_threshold() -> None:
    """Held amphorae below the threshold (one reported) are due as soon as the grace allows."""
    t = tracker(threshold=2)
    t.record("a", T0)
    t.record("b", T0)
    t.stale(T0 + 100)
    t.record("a", T0 + 110)
    assert t.next_deadline() == T0 + 60


def test_next_deadline_for_held_amphorae_not_yet_stale_again() -> None:
    """A held amphora whose record moved on (time running backwards) is due when stale again."""
    t = tracker(threshold=2)
    t.record("a", T0 + 300)
    t.record("b", T0 + 300)
    t.stale(T0 + 400)  # both held
    t.record("a", T0 + 390)
    assert t.held == {"b"}
    assert t.next_deadline() == T0 + 360


def new_things(before: HealthTracker, decision: FailoverDecision) -> bool:
    """Return whether a decision fails anything over or holds a new amphora back."""
    return bool(decision.failover) or bool(set(decision.stopped) - set(before.held))


operations = st.lists(
    st.tuples(
        st.sampled_from(["record", "stale", "release", "forget", "pause"]),
        st.sampled_from(["a", "b", "c", "d"]),
        st.integers(0, 400),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(operations, st.sampled_from([None, 1, 2, 3]), st.integers(1, 200))
def test_next_deadline_is_the_least_time_after_which_stale_acts(
    ops: list[tuple[str, str, int]], threshold: int | None, probe: int
) -> None:
    """After any history, stale(now) acts for every now > deadline and not just before it."""
    t = tracker(threshold, timeout=60.0)
    for op, amphora, at in ops:
        now = T0 + at
        if op == "record":
            t.record(amphora, now)
        elif op == "stale":
            t.stale(now)
        elif op == "release":
            t.release(amphora)
        elif op == "forget":
            t.forget(amphora)
        else:
            t.pause(now)
    deadline = t.next_deadline()
    if deadline is None:
        probe_tracker = copy.deepcopy(t)
        assert not new_things(t, probe_tracker.stale(T0 + 10_000))
        return
    after = copy.deepcopy(t)
    assert new_things(t, after.stale(deadline + probe / 100))
    # Just before it nothing new: at the end of a grace or pause, half a second
    # earlier; at a record's stale time, that very time (stale needs strictly older).
    gate = max(T0, t.paused_at if t.paused_at is not None else T0) + 60.0
    before = copy.deepcopy(t)
    assert not new_things(t, before.stale(deadline - 0.5 if deadline <= gate else deadline))


# --- replays: judge_replay and SeqGuard ---------------------------------------------------


class Beat(NamedTuple):
    """A stand-in heartbeat: all judge_replay reads."""

    seq: int
    boot: int | None = None


def verdict(state: ReplayState | None, seq: int, boot: int | None = None, window: int = 3) -> str:
    """Return the reason judge_replay gives, prefixed + when taken and - when refused."""
    v = judge_replay(state, Beat(seq, boot), window=window)
    return ("+" if v.accepted else "-") + v.reason


@pytest.mark.parametrize(
    ("state", "seq", "boot", "expected"),
    [
        # Nothing stored: anything is taken.
        (None, 0, None, "+first"),
        (None, 7, 1000, "+first"),
        # Without boots (Octavia's agents): the window rule.
        (ReplayState(10), 11, None, "+newer"),
        (ReplayState(10), 500, None, "+newer"),  # gaps: several controllers
        (ReplayState(10), 10, None, "-duplicate"),
        (ReplayState(10), 9, None, "-older"),
        (ReplayState(10), 8, None, "-older"),  # within the window of 3
        (ReplayState(10), 7, None, "+restart"),  # 3 below: far enough to be a restart
        (ReplayState(10), 0, None, "+restart"),
        (ReplayState(2), 0, None, "-older"),  # an early restart waits to pass the newest
        # With boots: boots order restarts, seqs order heartbeats within one.
        (ReplayState(10, 1000), 11, 1000, "+newer"),
        (ReplayState(10, 1000), 10, 1000, "-duplicate"),
        (ReplayState(10, 1000), 0, 1000, "-older"),  # no window within a boot
        (ReplayState(10, 1000), 0, 1001, "+new_boot"),
        (ReplayState(10, 1000), 11, 999, "-old_boot"),
        (ReplayState(10, 1000), 11, None, "-boot_missing"),
        (ReplayState(10), 0, 1000, "+new_boot"),  # the first boot seen: an upgraded agent
    ],
)
def test_judge_replay_table(
    state: ReplayState | None, seq: int, boot: int | None, expected: str
) -> None:
    """Each row of the replay rule: taken or refused, and why."""
    assert verdict(state, seq, boot) == expected


def test_judge_replay_is_state_in_decision_and_state_out() -> None:
    """A taken heartbeat becomes the state; a refused one leaves the very same state."""
    stored = ReplayState(10, 1000)
    taken = judge_replay(stored, Beat(11, 1000))
    assert taken.state == ReplayState(11, 1000)
    refused = judge_replay(stored, Beat(3, 999))
    assert refused.state is stored
    assert refused.reason in REPLAY_REASONS
    assert {FIRST, NEWER, RESTART, NEW_BOOT}.isdisjoint(REPLAY_REASONS)
    assert REPLAY_REASONS == (DUPLICATE, OLDER, OLD_BOOT, BOOT_MISSING)


def test_judge_replay_takes_a_heartbeat() -> None:
    """A parsed Heartbeat is what a manager passes, with or without boot."""
    with_boot = Heartbeat.from_dict({"id": "a", "seq": 4, "boot": 1700000000, "listeners": {}})
    assert judge_replay(ReplayState(3, 1700000000), with_boot).accepted
    without = Heartbeat.from_dict({"id": "a", "seq": 4, "listeners": {}})
    assert judge_replay(ReplayState(4), without).reason == DUPLICATE


@pytest.mark.parametrize("window", [1, 3, 16])
def test_window_is_where_a_lower_seq_becomes_a_restart(window: int) -> None:
    """A seq less than window below the newest is refused, window or more below is taken."""
    newest = ReplayState(100)
    assert verdict(newest, 100 - window + 1, window=window) == (
        "-older" if window > 1 else "-duplicate"
    )
    assert verdict(newest, 100 - window, window=window) == "+restart"


def test_bad_window_is_a_value_error() -> None:
    """A window below 1 is the caller's mistake."""
    with pytest.raises(ValueError, match="window"):
        judge_replay(None, Beat(1), window=0)
    with pytest.raises(ValueError, match="window"):
        SeqGuard(window=0)


def test_seq_guard_keeps_states_per_amphora() -> None:
    """SeqGuard applies judge_replay per amphora and remembers only what it takes."""
    guard = SeqGuard()
    assert guard.check("a", 100)
    assert guard.check("a", 103)
    assert not guard.check("a", 103)
    assert not guard.check("a", 101)
    assert guard.check("b", 101)
    assert guard.state("a") == ReplayState(103)
    assert guard.judge("a", Beat(5, 77)).reason == NEW_BOOT
    assert guard.state("a") == ReplayState(5, 77)
    assert not guard.check("a", 6)  # boots were seen: one without is refused
    assert len(guard) == 2
    guard.forget("a")
    assert guard.state("a") is None
    assert len(guard) == 1


@settings(max_examples=200)
@given(
    runs=st.lists(st.integers(1, 12), min_size=1, max_size=5),
    gaps=st.lists(st.integers(1, 5000), min_size=5, max_size=5),
    data=st.data(),
)
def test_property_with_boots_every_replay_is_refused_and_nothing_real_is(
    runs: list[int], gaps: list[int], data: st.DataObject
) -> None:
    """With boots, a restarting agent is always taken, a replay of any earlier heartbeat never."""
    state: ReplayState | None = None
    sent: list[Beat] = []
    boot = 1_700_000_000
    for run, gap in zip(runs, gaps, strict=False):
        boot += gap
        for seq in range(run):
            real = Beat(seq, boot)
            taken = judge_replay(state, real)
            assert taken.accepted, (state, real)
            state = taken.state
            sent.append(real)
            for old in data.draw(st.lists(st.sampled_from(sent), max_size=2)):
                replay = judge_replay(state, old)
                assert not replay.accepted, (state, old)
                assert replay.state is state
