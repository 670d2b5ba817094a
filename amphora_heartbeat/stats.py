"""Listener statistics: fold heartbeat counters into stored rows, and sum them.

Octavia keeps one ``listener_statistics`` row per ``(listener_id, amphora_id)``.
Messages before version 3 carry absolute counters, which replace the row;
version 3 carries deltas since the previous heartbeat, which are added to it,
except ``active_connections``, always the current value.  The functions here
compute the new rows and the totals an API would show, as pure functions: the
caller reads and writes its own storage.

Octavia's statistics path reads a missing ``ver`` as 2 while its status path
reads it as 0; both mean absolute counters, and :attr:`Heartbeat.stats_are_deltas`
gives the same answer either way.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from .models import Heartbeat, ListenerStats

__all__ = ["fold", "listener_stats", "listener_totals", "load_balancer_totals"]

_ZERO = ListenerStats()


def listener_stats(heartbeat: Heartbeat) -> dict[str, ListenerStats]:
    """Return the counters of each reported listener, keyed by listener id."""
    return {lid: report.stats for lid, report in heartbeat.listeners.items()}


def fold(
    stored: Mapping[tuple[str, str], ListenerStats], heartbeat: Heartbeat
) -> dict[tuple[str, str], ListenerStats]:
    """Return the new ``(listener_id, amphora_id)`` rows after one heartbeat.

    :param stored: the rows stored so far; a missing key means no row.  Not modified.
    :param heartbeat: the heartbeat whose counters to fold in.
    :return: one row per listener the heartbeat reports, for the caller to upsert.
        Absolute counters (versions below 3) replace the stored row; deltas
        (version 3 and later) are added to it, with ``active_connections``
        overwritten; without a stored row the reported counters are the row.
    """
    amphora_id = heartbeat.amphora_id
    deltas = heartbeat.stats_are_deltas
    rows: dict[tuple[str, str], ListenerStats] = {}
    for lid, report in heartbeat.listeners.items():
        key = (lid, amphora_id)
        new = report.stats
        if deltas:
            old = stored.get(key)
            if old is not None:
                new = ListenerStats(
                    old.bytes_in + new.bytes_in,
                    old.bytes_out + new.bytes_out,
                    new.active_connections,
                    old.total_connections + new.total_connections,
                    old.request_errors + new.request_errors,
                )
        rows[key] = new
    return rows


def listener_totals(
    listener_id: str, rows: Mapping[str, ListenerStats], *, allocated: Collection[str]
) -> ListenerStats:
    """Return one listener's statistics as Octavia's API reports them.

    :param listener_id: the listener.
    :param rows: amphora id to that amphora's stored row for this listener (rows of
        failed-over and deleted amphorae included: rows are never deleted).
    :param allocated: ids of the amphorae now in ``ALLOCATED`` status.
    :return: the sum of every row's byte, total-connection and error counters;
        ``active_connections`` sums only rows of allocated amphorae and rows
        stored under the listener's own id (providers without amphorae store
        them so; an empty amphora id counts as the listener's id).
    """
    bytes_in = bytes_out = active = total = errors = 0
    for amphora_id, row in rows.items():
        bytes_in += row.bytes_in
        bytes_out += row.bytes_out
        total += row.total_connections
        errors += row.request_errors
        if amphora_id in allocated or amphora_id == listener_id or not amphora_id:
            active += row.active_connections
    return ListenerStats(bytes_in, bytes_out, active, total, errors)


def load_balancer_totals(listener_totals: Iterable[ListenerStats]) -> ListenerStats:
    """Return a load balancer's statistics: the sum over its current listeners' totals."""
    total = _ZERO
    for stats in listener_totals:
        total = total + stats
    return total
