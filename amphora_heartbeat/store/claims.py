"""Failover claims: stale candidates, claims as leases, their end, the storm guard.

A claim is a lease: claiming marks the ``amphora_health`` row busy and stamps its
``last_update`` with the claim time (Octavia's schema has no claim column), so a
busy row older than the lease belongs to a manager that died before finishing:
it is a candidate again, or, if its amphora has left ``ALLOCATED`` (Octavia's
failover marks it ``DELETED`` when done), only its row is cleared.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import NamedTuple

from .engine import EngineHooks

__all__ = ["ClaimStatements", "StaleAmphora"]


class StaleAmphora(NamedTuple):
    """A failover candidate, as :meth:`Store.stale_amphorae` maps each amphora id."""

    #: The amphora's ``status``: ``ALLOCATED`` or ``FAILOVER_STOPPED``.
    status: str
    #: The id of the amphora's load balancer (``amphora.load_balancer_id``).
    load_balancer_id: str


_STOP = (
    "UPDATE amphora SET status = 'FAILOVER_STOPPED', updated_at = ?"
    " WHERE id = ? AND status = 'ALLOCATED'"
)
# A claim is a lease: claiming sets last_update to the claim time, so a busy row
# whose last_update is older than the lease was claimed by a manager that never
# finished (it died): it is a candidate again.  The two ? are the stale cutoff and
# the lease cutoff.
_ELIGIBLE = (
    "FROM amphora_health h JOIN amphora a ON a.id = h.amphora_id"
    " JOIN load_balancer lb ON lb.id = a.load_balancer_id"
    " WHERE ((h.busy = false AND h.last_update < ?) OR (h.busy = true AND h.last_update < ?))"
    " AND a.status IN ('ALLOCATED', 'FAILOVER_STOPPED')"
)
_STALE = "SELECT h.amphora_id, a.status, a.load_balancer_id " + _ELIGIBLE + " ORDER BY h.amphora_id"
# {lock} is the engine's row-lock clause: with several managers each stale row
# is claimed (marked busy) by exactly one of them.
_CLAIM = (
    "UPDATE amphora_health SET busy = true, last_update = ? WHERE amphora_id IN ("
    "SELECT h.amphora_id " + _ELIGIBLE + " AND h.amphora_id {ids}"
    " AND lb.provisioning_status IN ('ACTIVE', 'ERROR') {lock})"
    " RETURNING amphora_id"
)


# An expired claim of an amphora no longer eligible (Octavia's failover flow marks
# the failed amphora DELETED when it completes): the flow finished, only the row
# is left to clear, never a second failover.
_EXPIRED = (
    "DELETE FROM amphora_health WHERE busy = true AND last_update < ? AND NOT EXISTS ("
    "SELECT 1 FROM amphora a WHERE a.id = amphora_health.amphora_id"
    " AND a.status IN ('ALLOCATED', 'FAILOVER_STOPPED'))"
)
# The lease cutoff when no lease is asked for: no claim ever expires.
_NEVER = 0.0


class ClaimStatements(EngineHooks):
    """The failover side of the store, over the engine's hooks."""

    def stale_amphorae(
        self, cutoff: float, lease_cutoff: float | None = None
    ) -> dict[str, StaleAmphora]:
        """Return the failover candidates at ``cutoff`` (seconds since the epoch).

        Candidates are amphorae in ``ALLOCATED`` or ``FAILOVER_STOPPED`` status,
        of a load balancer, whose ``last_update`` is before ``cutoff`` and which
        are not busy, or busy with a claim older than ``lease_cutoff`` (the
        manager that claimed it never finished; None: claims never expire);
        mapped to their status and load balancer, sorted by id.  Rows of other managers count too:
        the database holds them all.
        """
        lease = _NEVER if lease_cutoff is None else min(lease_cutoff, cutoff)
        with self._reading() as cur:
            cur.execute(self._sql(_STALE), (self._time(cutoff), self._time(lease)))
            return {row[0]: StaleAmphora(row[1], row[2]) for row in cur.fetchall()}

    def claim_failovers(
        self,
        amphora_ids: Collection[str],
        cutoff: float,
        *,
        now: float,
        lease_cutoff: float | None = None,
    ) -> list[str]:
        """Mark busy each of ``amphora_ids`` that is still a candidate; return those marked.

        The claim is a lease: ``last_update`` is set to ``now`` (seconds since
        the epoch), so a claim whose manager dies expires (see
        :meth:`stale_amphorae`).  Only amphorae whose load balancer is ``ACTIVE``
        or ``ERROR`` are claimed (a failover moves it to ``PENDING_UPDATE``; any
        other status means someone else is changing it: the amphora waits for
        the next check).  With several managers each amphora is claimed by
        exactly one.
        """
        if not amphora_ids:
            return []
        lease = _NEVER if lease_cutoff is None else min(lease_cutoff, cutoff)
        statement = self._sql(_CLAIM.format(ids=self._IDS, lock=self._LOCK))
        params = (self._time(now), self._time(cutoff), self._time(lease))
        with self._transaction() as cur:
            cur.execute(statement, (*params, self._id_set(sorted(amphora_ids))))
            return sorted(row[0] for row in cur.fetchall())

    def clear_expired_claims(self, lease_cutoff: float) -> int:
        """Delete the busy rows claimed before ``lease_cutoff`` whose amphora left.

        An amphora no longer ``ALLOCATED`` or ``FAILOVER_STOPPED`` (Octavia's
        failover marks it ``DELETED`` when done) whose claim expired was failed
        over by a manager that died before recording it: its health row is
        deleted, as that manager would have done.  Return how many.
        """
        with self._transaction() as cur:
            cur.execute(self._sql(_EXPIRED), (self._time(lease_cutoff),))
            return max(int(cur.rowcount), 0)

    def stop_failovers(self, amphora_ids: Collection[str], now: float) -> int:
        """Mark the ``ALLOCATED`` amphorae among ``amphora_ids`` ``FAILOVER_STOPPED``.

        Return how many were changed (the others were stopped already).
        """
        if not amphora_ids:
            return 0
        changed = 0
        with self._transaction() as cur:
            stamp = self._time(now)
            for amphora_id in sorted(amphora_ids):
                cur.execute(self._sql(_STOP), (stamp, amphora_id))
                changed += max(cur.rowcount, 0)
        return changed

    def finish_failover(self, amphora_id: str, *, succeeded: bool) -> None:
        """Record a failover's end.

        Success deletes the amphora's ``amphora_health`` row, as Octavia's
        failover does; failure clears ``busy`` so that the next check retries it.
        """
        with self._transaction() as cur:
            if succeeded:
                cur.execute(
                    self._sql("DELETE FROM amphora_health WHERE amphora_id = ?"), (amphora_id,)
                )
                # The failed-over amphora never reports again: its guard state goes too.
                cur.execute(
                    self._sql("DELETE FROM amphora_heartbeat_seq WHERE amphora_id = ?"),
                    (amphora_id,),
                )
            else:
                cur.execute(
                    self._sql("UPDATE amphora_health SET busy = false WHERE amphora_id = ?"),
                    (amphora_id,),
                )
