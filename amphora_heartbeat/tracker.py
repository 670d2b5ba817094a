"""Stale-amphora tracking and failover decisions, with time as an argument.

Two layers, so that an in-memory controller and a database-backed one share
one copy of the policy:

- :func:`decide` is the policy alone, a pure function: given the amphorae that
  are stale now (not busy, held-back ones included), the start time, the last
  pause and the threshold, it says which to fail over and which to hold back.
  A controller whose records live in a database finds the stale ids itself
  (``last_update < now - heartbeat_timeout AND NOT busy``), calls
  :func:`decide`, and writes the outcome (busy, ``FAILOVER_STOPPED``).
- :class:`HealthTracker` keeps the records in memory (last report, busy,
  held back) and calls :func:`decide`; :meth:`HealthTracker.next_deadline`
  tells any loop how long it may sleep.

The policy, after Octavia's health manager (``spec/rules.md``, step 4):

- an amphora is stale when its last report is older than ``now -
  heartbeat_timeout`` (strictly) and it is not already being failed over (busy);
- nothing is failed over while ``now < started + heartbeat_timeout`` (start-up
  grace: amphorae get a chance to report) nor while ``now < paused_at +
  heartbeat_timeout`` (the store was unreachable: its records may be stale
  only because nobody could write them);
- storm guard: when the number of stale amphorae reaches ``failover_threshold``,
  none is failed over; all are held back (Octavia's ``FAILOVER_STOPPED``) until
  they report again or the count falls below the threshold;
- otherwise every stale amphora is failed over (and marked busy).  A failed
  failover is released and retried, unlike Octavia, which leaves it busy forever.

:func:`judge_replay` is the replay guard over heartbeat sequence numbers (and the
optional ``boot`` this library's sender adds), a pure function of the stored
state; :class:`SeqGuard` keeps those states in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import Protocol

import attrs

__all__ = [
    "BOOT_MISSING",
    "DEFAULT_SEQ_WINDOW",
    "DUPLICATE",
    "FIRST",
    "NEWER",
    "NEW_BOOT",
    "OLDER",
    "OLD_BOOT",
    "REPLAY_REASONS",
    "RESTART",
    "FailoverDecision",
    "HealthTracker",
    "Numbered",
    "ReplayState",
    "ReplayVerdict",
    "SeqGuard",
    "decide",
    "judge_replay",
]

_LOG = logging.getLogger("amphora_heartbeat.tracker")


@attrs.frozen
class FailoverDecision:
    """What one stale check decided."""

    #: Amphorae to fail over now (each is now busy).
    failover: tuple[str, ...] = ()
    #: Amphorae held back by the storm guard (Octavia's ``FAILOVER_STOPPED``).
    stopped: tuple[str, ...] = ()


def _check_policy(heartbeat_timeout: float, failover_threshold: int | None) -> None:
    if not heartbeat_timeout > 0:
        raise ValueError(f"heartbeat_timeout must be positive seconds, got {heartbeat_timeout!r}")
    if failover_threshold is not None and failover_threshold < 1:
        raise ValueError(f"failover_threshold must be None or at least 1, got {failover_threshold}")


def decide(
    stale_ids: Sequence[str],
    *,
    now: float,
    started: float,
    paused_at: float | None,
    heartbeat_timeout: float,
    failover_threshold: int | None,
    held: Collection[str],
) -> FailoverDecision:
    """Decide which stale amphorae to fail over and which to hold back.

    :param stale_ids: the amphorae stale at ``now`` and not busy, held-back ones
        included, in the order the decision should list them.
    :param now: the time of the check, seconds since the epoch.
    :param started: when the controller started (seconds since the epoch).
    :param paused_at: the last time the store was found unreachable, or None.
    :param heartbeat_timeout: seconds of silence before an amphora is stale; also
        the length of the start-up grace and of the wait after a pause.
    :param failover_threshold: the storm guard's count, or None for no guard.
    :param held: the amphorae currently held back by the storm guard.
    :return: during the grace or a pause nothing to fail over and the stale
        held-back amphorae as ``stopped``; at or over the threshold, nothing to
        fail over and every stale amphora ``stopped``; otherwise every stale
        amphora to fail over.  The caller marks ``failover`` busy and keeps
        ``stopped`` as its new held-back set.
    """
    gate = started if paused_at is None else max(started, paused_at)
    if now < gate + heartbeat_timeout:
        return FailoverDecision((), tuple(a for a in stale_ids if a in held))
    if failover_threshold is not None and len(stale_ids) >= failover_threshold:
        return FailoverDecision((), tuple(stale_ids))
    return FailoverDecision(tuple(stale_ids), ())


class HealthTracker:
    """Remember when each amphora last reported, and decide failovers.

    Time is always an argument (seconds since the epoch, or any monotonic scale
    used consistently).  Not thread-safe: drive it from one loop.
    """

    def __init__(
        self,
        *,
        heartbeat_timeout: float = 60.0,
        failover_threshold: int | None = None,
        started: float,
    ) -> None:
        """Track amphorae from ``started`` on (the start-up grace counts from it).

        :param heartbeat_timeout: seconds of silence after which an amphora is stale.
        :param failover_threshold: hold every failover back when this many are stale.
        :param started: when the controller started, seconds.
        :raises ValueError: a non-positive timeout or a threshold below 1.
        """
        _check_policy(heartbeat_timeout, failover_threshold)
        self.heartbeat_timeout = heartbeat_timeout
        self.failover_threshold = failover_threshold
        self.started = started
        self.paused_at: float | None = None
        self._last: dict[str, float] = {}
        self._busy: set[str] = set()
        self._held: set[str] = set()

    def __len__(self) -> int:
        """Return how many amphorae are tracked."""
        return len(self._last)

    def __contains__(self, amphora_id: object) -> bool:
        """Return whether ``amphora_id`` is tracked."""
        return amphora_id in self._last

    def last_seen(self, amphora_id: str) -> float | None:
        """Return when the amphora last reported, or None if it is not tracked."""
        return self._last.get(amphora_id)

    @property
    def busy(self) -> frozenset[str]:
        """The amphorae being failed over."""
        return frozenset(self._busy)

    @property
    def held(self) -> frozenset[str]:
        """The amphorae held back by the storm guard."""
        return frozenset(self._held)

    def record(self, amphora_id: str, now: float) -> None:
        """Note that the amphora reported at ``now`` (seconds).

        Times before ``started`` are accepted (records loaded from a store); an
        older time than the one already kept is ignored.  The amphora is no
        longer held back; busy is left as it is (a failover in progress decides).
        """
        last = self._last.get(amphora_id)
        if last is None or now > last:
            self._last[amphora_id] = now
        self._held.discard(amphora_id)

    def pause(self, paused_at: float) -> None:
        """Note that the store was unreachable at ``paused_at``: wait a full timeout again."""
        if self.paused_at is None or paused_at > self.paused_at:
            self.paused_at = paused_at

    def release(self, amphora_id: str) -> None:
        """Clear busy after a failed failover, so the amphora is retried if still stale."""
        self._busy.discard(amphora_id)

    def forget(self, amphora_id: str) -> None:
        """Stop tracking the amphora (it was failed over, or deleted)."""
        self._last.pop(amphora_id, None)
        self._busy.discard(amphora_id)
        self._held.discard(amphora_id)

    def _stale(self, now: float) -> list[str]:
        # Oldest first, then by id, so the order is deterministic.
        limit = now - self.heartbeat_timeout
        busy = self._busy
        found = [(t, a) for a, t in self._last.items() if t < limit and a not in busy]
        found.sort()
        return [a for _, a in found]

    def stale(self, now: float) -> FailoverDecision:
        """Return the amphorae to fail over at ``now`` (marked busy) and those held back."""
        decision = decide(
            self._stale(now),
            now=now,
            started=self.started,
            paused_at=self.paused_at,
            heartbeat_timeout=self.heartbeat_timeout,
            failover_threshold=self.failover_threshold,
            held=self._held,
        )
        if decision.failover:
            self._busy.update(decision.failover)
            self._held.difference_update(decision.failover)
        elif self._gate() <= now:
            newly = [a for a in decision.stopped if a not in self._held]
            if newly:
                _LOG.error(
                    "%d amphorae stale, at or over the failover threshold %s: holding back",
                    len(decision.stopped),
                    self.failover_threshold,
                )
            self._held = set(decision.stopped)
        return decision

    def _gate(self) -> float:
        gate = self.started if self.paused_at is None else max(self.started, self.paused_at)
        return gate + self.heartbeat_timeout

    def next_deadline(self) -> float | None:
        """Return when :meth:`stale` next has something new to say, or None.

        None when no amphora can become stale without another call (every one is
        busy or held back with the count still at the threshold).  Otherwise the
        least time ``t`` such that :meth:`stale` at any ``now > t`` returns an
        amphora to fail over or a newly held one: a loop may sleep until then.
        """
        gate = self._gate()
        timeout = self.heartbeat_timeout
        busy = self._busy
        held = self._held
        # When each non-busy amphora goes stale: unheld ones act as soon as they do
        # (failed over, or newly held); held ones only while fewer than the threshold.
        unheld = [t for a, t in self._last.items() if a not in busy and a not in held]
        first_unheld = min(unheld) + timeout if unheld else None
        held_due = sorted(self._last[a] + timeout for a in held if a not in busy)
        threshold = self.failover_threshold
        if held_due:
            before = held_due if first_unheld is None else [t for t in held_due if t < first_unheld]
            if before and (threshold is None or len(before) < threshold):
                # Stale held ones, too few to hold back: each check from then on fails
                # them over, until an unheld one joins them (which acts as well).
                return max(gate, before[0])
        return None if first_unheld is None else max(gate, first_unheld)


# --- replays ----------------------------------------------------------------------------
# A replayed datagram carries a valid HMAC, so the envelope cannot refuse it; the
# agent's seq (one more per heartbeat, 0 at the agent's start) is the only order
# Octavia's message has, and it has no timestamp: a replay of heartbeats sent
# before an agent restart cannot be told from the restart itself.  This
# library's sender adds ``boot`` (when the agent started, whole seconds since
# the epoch), which orders restarts and so closes that gap for its own agents.

#: Accepted: the guard had nothing stored for the amphora.
FIRST = "first"
#: Accepted: a higher seq than the newest, in the same boot (or without boots).
NEWER = "newer"
#: Accepted: no boots, and a seq at least ``window`` below the newest: a restart.
RESTART = "restart"
#: Accepted: a later boot than the newest (the agent restarted), or the first boot.
NEW_BOOT = "new_boot"
#: Refused: the newest seq again, in the same boot.
DUPLICATE = "duplicate"
#: Refused: a lower seq in the same boot; or, without boots, less than ``window`` below.
OLDER = "older"
#: Refused: an earlier boot than the newest.
OLD_BOOT = "old_boot"
#: Refused: no boot, after heartbeats of the amphora carried one.
BOOT_MISSING = "boot_missing"
#: Every reason a heartbeat is refused as a replay, as stable counter names.
REPLAY_REASONS = (DUPLICATE, OLDER, OLD_BOOT, BOOT_MISSING)

#: The default window: a restart within the agent's first 3 heartbeats costs at
#: most 3 refused heartbeats (30 s at Octavia's 10 s ``heartbeat_interval``),
#: half its 60 s ``heartbeat_timeout``.
DEFAULT_SEQ_WINDOW = 3


class Numbered(Protocol):
    """Anything with a ``seq`` and a ``boot``: a :class:`~amphora_heartbeat.models.Heartbeat`."""

    @property
    def seq(self) -> int:
        """The heartbeat's sequence number."""

    @property
    def boot(self) -> int | None:
        """When its agent started (whole seconds since the epoch), or None."""


@attrs.frozen
class ReplayState:
    """What the replay guard keeps per amphora: the newest heartbeat's seq and boot.

    Two integers (``boot`` may be NULL), so a manager can keep them in its
    database, across restarts and shared by several managers.
    """

    #: The newest accepted seq.
    seq: int
    #: The boot of the newest accepted heartbeat, or None if it had none.
    boot: int | None = None


@attrs.frozen
class ReplayVerdict:
    """What :func:`judge_replay` decided about one heartbeat."""

    #: Whether to take the heartbeat (False: a duplicate or a replay; drop it).
    accepted: bool
    #: Why: one of the names above (:data:`REPLAY_REASONS` when refused).
    reason: str
    #: The state to keep: the heartbeat's when accepted, the old one when refused.
    state: ReplayState


def judge_replay(
    state: ReplayState | None, heartbeat: Numbered, *, window: int = DEFAULT_SEQ_WINDOW
) -> ReplayVerdict:
    """Judge one heartbeat against the stored state of its amphora: take it, or drop it.

    State in, decision and new state out, with nothing kept here: the caller
    stores :attr:`ReplayVerdict.state` (in memory, or in its database).

    - With a ``boot`` on both sides, boots order restarts: a later boot is
      taken, an earlier one refused; within one boot only a higher seq is taken.
    - Once an amphora's heartbeats carried a boot, one without is refused.
    - Without boots (Octavia's own agents), a higher seq is taken; the same
      seq, or a lower one less than ``window`` below the newest, is refused; a
      seq ``window`` or more below is taken as a restart (seq starts again at 0).
      A replay of heartbeats older than that passes too: the message has no
      timestamp, so nothing can tell it from a restart.

    :param state: the amphora's state, or None if nothing was stored yet.
    :param heartbeat: the heartbeat (anything with ``seq`` and ``boot``).
    :param window: how far below the newest seq a lower one counts as a restart
        rather than a replay (at least 1).
    :raises ValueError: a window below 1.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    seq, boot = heartbeat.seq, heartbeat.boot
    heard = ReplayState(seq, boot)
    if state is None:
        return ReplayVerdict(True, FIRST, heard)
    if boot is not None:
        if state.boot is None or boot > state.boot:
            return ReplayVerdict(True, NEW_BOOT, heard)
        if boot < state.boot:
            return ReplayVerdict(False, OLD_BOOT, state)
        # The same boot: an agent never counts down, whatever the gap.
        if seq > state.seq:
            return ReplayVerdict(True, NEWER, heard)
        return ReplayVerdict(False, DUPLICATE if seq == state.seq else OLDER, state)
    if state.boot is not None:
        return ReplayVerdict(False, BOOT_MISSING, state)
    if seq > state.seq:
        return ReplayVerdict(True, NEWER, heard)
    if seq == state.seq:
        return ReplayVerdict(False, DUPLICATE, state)
    if seq > state.seq - window:
        return ReplayVerdict(False, OLDER, state)
    return ReplayVerdict(True, RESTART, heard)


class SeqGuard:
    """Drop duplicated and replayed heartbeats: :func:`judge_replay` over states kept in memory.

    Treat a refused heartbeat as suspicious (count it, drop it), not as proof.
    What it catches, honestly:

    - the same datagram twice, and a replay of any heartbeat the agent sent
      since it last started, when the agent's heartbeats carry ``boot`` (this
      library's sender adds it), and of any heartbeat of an earlier start;
    - without ``boot`` (Octavia's own agents), only the newest heartbeat again
      and those less than ``window`` older: a lower seq than that is taken as
      the agent restarting (its seq starts again at 0), so a replay of older
      heartbeats passes, and so does, after a restart, a replay of anything
      from before it;
    - without ``boot``, an agent restarting within its first ``window``
      heartbeats has up to ``window`` heartbeats refused, until its seq passes
      the newest one seen;
    - a key holder can send a heartbeat with a later boot for any amphora and so
      have the real agent's heartbeats refused until the amphora is failed
      over: accept heartbeats only from the amphora's own address too;
    - with several controllers each sees every N-th seq (round robin): gaps are
      normal and never refused;
    - memory grows with the number of amphorae; call :meth:`forget` for gone ones.
    """

    def __init__(self, *, window: int = DEFAULT_SEQ_WINDOW) -> None:
        """Keep one :class:`ReplayState` per amphora; see :func:`judge_replay` for ``window``."""
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.window = window
        self._states: dict[str, ReplayState] = {}

    def __len__(self) -> int:
        """Return how many amphorae are tracked."""
        return len(self._states)

    def check(self, amphora_id: str, seq: int, boot: int | None = None) -> bool:
        """Return True and remember the heartbeat if it is to be taken, else False."""
        return self.judge(amphora_id, ReplayState(seq, boot)).accepted

    def judge(self, amphora_id: str, heartbeat: Numbered) -> ReplayVerdict:
        """Judge a heartbeat of ``amphora_id`` (see :func:`judge_replay`), keeping the new state."""
        verdict = judge_replay(self._states.get(amphora_id), heartbeat, window=self.window)
        if verdict.accepted:
            self._states[amphora_id] = verdict.state
        return verdict

    def state(self, amphora_id: str) -> ReplayState | None:
        """Return what the guard keeps for ``amphora_id``, or None."""
        return self._states.get(amphora_id)

    def forget(self, amphora_id: str) -> None:
        """Stop tracking the amphora."""
        self._states.pop(amphora_id, None)
