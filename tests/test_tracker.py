"""Stale tracking: grace, pause, storm guard, busy marking, release, and next_deadline."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amphora_heartbeat.tracker import FailoverDecision, HealthTracker, SeqGuard, decide

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


# --- SeqGuard -------------------------------------------------------------------------------


def test_seq_guard_accepts_increasing_and_flags_replays() -> None:
    """A newer seq passes; an equal or older one (a replay or reordering) is flagged."""
    guard = SeqGuard()
    assert guard.check("a", 100)
    assert guard.check("a", 103)  # gaps are normal with several controllers
    assert not guard.check("a", 103)
    assert not guard.check("a", 50)
    assert guard.check("b", 50)
    assert len(guard) == 2


def test_seq_guard_accepts_agent_restart() -> None:
    """A low seq after a high one is an agent restart (seq back to 0) and passes."""
    guard = SeqGuard(restart_below=4)
    guard.check("a", 5000)
    assert guard.check("a", 1)
    assert guard.check("a", 2)
    assert guard.check("a", 4000)  # the documented limit: an old capture passes
    guard.forget("a")
    assert len(guard) == 0


def test_seq_guard_rejects_bad_bound() -> None:
    """restart_below must be at least 1."""
    with pytest.raises(ValueError, match="restart_below"):
        SeqGuard(restart_below=0)
