"""Listener statistics: reading counters, folding absolutes and deltas, and the totals."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amphora_heartbeat.models import Heartbeat, ListenerStats
from amphora_heartbeat.stats import fold, listener_stats, listener_totals, load_balancer_totals
from amphora_heartbeat.testing import make_fleet

SPEC = make_fleet(1, seed=3, listeners=2, pools=2, members=2)[0]
L1, L2 = (lst.listener_id for lst in SPEC.listeners)
AMP = SPEC.amphora_id

OLD = ListenerStats(
    bytes_in=1000, bytes_out=2000, active_connections=7, total_connections=50, request_errors=3
)
NEW = ListenerStats(
    bytes_in=10, bytes_out=20, active_connections=2, total_connections=5, request_errors=1
)


def heartbeat(version: int, stats: dict[str, ListenerStats]) -> Heartbeat:
    """Return the spec's heartbeat of ``version`` carrying ``stats`` per listener."""
    return Heartbeat.from_dict(SPEC.message(version=version, stats=stats))


def test_listener_stats_maps_wire_names_to_columns() -> None:
    """rx, tx, conns, totconns and ereq become bytes_in, bytes_out, active, total, errors."""
    message = SPEC.message(version=3)
    message["listeners"][L1]["stats"] = {"rx": 1, "tx": 2, "conns": 3, "totconns": 4, "ereq": 5}
    stats = listener_stats(Heartbeat.from_dict(message))
    assert stats[L1] == ListenerStats(
        bytes_in=1, bytes_out=2, active_connections=3, total_connections=4, request_errors=5
    )
    assert stats[L2] == ListenerStats()


@pytest.mark.parametrize("version", [0, 1, 2])
def test_absolute_counters_replace_the_stored_row(version: int) -> None:
    """Versions below 3 (an absent ver included) carry absolutes: the row is replaced."""
    stored = {(L1, AMP): OLD}
    rows = fold(stored, heartbeat(version, {L1: NEW}))
    assert rows == {(L1, AMP): NEW, (L2, AMP): ListenerStats()}


@pytest.mark.parametrize("version", [3, 4])
def test_deltas_add_to_the_stored_row_but_active_connections_overwrite(version: int) -> None:
    """Version 3 (and above) adds deltas to the row; active_connections is the reported value."""
    message = SPEC.message(version=3, stats={L1: NEW})
    message["ver"] = version
    rows = fold({(L1, AMP): OLD}, Heartbeat.from_dict(message))
    assert rows[(L1, AMP)] == ListenerStats(
        bytes_in=1010, bytes_out=2020, active_connections=2, total_connections=55, request_errors=4
    )


def test_deltas_without_a_stored_row_are_the_row() -> None:
    """With no stored row, the reported deltas are the new row."""
    assert fold({}, heartbeat(3, {L1: NEW}))[(L1, AMP)] == NEW


def test_fold_keys_by_listener_and_amphora_only_for_reported_listeners() -> None:
    """The result has one row per reported listener, keyed (listener_id, amphora_id)."""
    stored = {(L1, "other-amphora"): OLD, ("gone", AMP): OLD}
    rows = fold(stored, heartbeat(3, {L1: NEW}))
    assert set(rows) == {(L1, AMP), (L2, AMP)}
    assert rows[(L1, AMP)] == NEW


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 3), st.integers(0, 10**12), st.integers(0, 10**6))
def test_fold_does_not_modify_stored(version: int, bytes_in: int, conns: int) -> None:
    """fold is pure: the stored mapping is left exactly as it was."""
    stored = {(L1, AMP): OLD, (L2, AMP): NEW}
    before = copy.deepcopy(stored)
    stats = ListenerStats(bytes_in=bytes_in, active_connections=conns)
    fold(stored, heartbeat(version, {L1: stats}))
    assert stored == before


def test_folding_deltas_in_order_sums_them() -> None:
    """Folding a series of delta heartbeats gives the sum, with the last active_connections."""
    stored: dict[tuple[str, str], ListenerStats] = {}
    for i in range(1, 5):
        stored.update(
            fold(stored, heartbeat(3, {L1: ListenerStats(bytes_in=i, active_connections=i)}))
        )
    assert stored[(L1, AMP)] == ListenerStats(bytes_in=10, active_connections=4)


def test_listener_totals_sum_all_rows_but_active_only_from_allocated() -> None:
    """Every row counts towards bytes, totals and errors; active only from ALLOCATED amphorae."""
    rows = {"a1": OLD, "a2": NEW, "failed-over": OLD}
    totals = listener_totals(L1, rows, allocated={"a1", "a2"})
    assert totals == ListenerStats(
        bytes_in=2010,
        bytes_out=4020,
        active_connections=9,
        total_connections=105,
        request_errors=7,
    )


def test_listener_totals_count_rows_keyed_by_the_listener_id() -> None:
    """A row stored under the listener's own id (no amphora) counts its active connections."""
    totals = listener_totals(L1, {L1: NEW, "": OLD, "standby": OLD}, allocated=())
    assert totals.active_connections == NEW.active_connections + OLD.active_connections
    assert totals.bytes_in == NEW.bytes_in + 2 * OLD.bytes_in


def test_listener_totals_of_no_rows_are_zero() -> None:
    """A listener with no stored row has all-zero statistics."""
    assert listener_totals(L1, {}, allocated={"a1"}) == ListenerStats()


def test_load_balancer_totals_sum_listener_totals() -> None:
    """A load balancer's statistics are the plain sum of its listeners' totals."""
    assert load_balancer_totals([OLD, NEW]) == OLD + NEW
    assert load_balancer_totals(iter(())) == ListenerStats()
