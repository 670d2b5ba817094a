"""The replay guard over statistics deltas: each (amphora, seq) adds its deltas once.

A pure function over a small per-amphora state ``(boot, seq, seen)``, which the
store keeps in its own table (``amphora_heartbeat_seq``) and updates in the same
transaction as the statistics it guards, so that the guard holds across a
manager restart and across several managers sharing one database.

* ``seq`` is the highest sequence number counted; ``seen`` a bit mask of the
  :data:`WINDOW` numbers below it (bit ``i`` set: ``seq - 1 - i`` was counted).
  A duplicate of the newest or of any counted number within the window adds
  nothing; a number within the window not counted yet (it came late, e.g. by
  another manager) is counted once.
* ``boot`` is when the agent started (seconds since the epoch), for senders
  that say so; 0 when the message does not (Octavia's agents).  A newer boot
  is a restart (the state starts again), an older one a replay from a former
  life, refused.
* Without a boot time a number more than :data:`WINDOW` below the newest is
  taken as a restart (an agent counts from 0 again).  The message carries no
  time, so a replay of a datagram from an earlier life of the agent cannot be
  told from a restart: it is counted once, and resets the state.  An agent
  that restarts within its first :data:`WINDOW` heartbeats has its deltas
  refused until its numbers pass the ones counted before.
"""

from __future__ import annotations

__all__ = ["WINDOW", "SeqState", "admit"]

#: How many sequence numbers below the newest are remembered (a signed 64-bit mask).
WINDOW = 63
_MASK = (1 << WINDOW) - 1

#: ``(boot, seq, seen)``: the agent's boot time (0: unknown), its highest
#: counted sequence number, and the mask of the :data:`WINDOW` numbers below it.
SeqState = tuple[int, int, int]


def admit(state: SeqState | None, seq: int, boot: int = 0) -> tuple[bool, SeqState]:
    """Return whether a heartbeat's deltas count, and the state after it.

    :param state: the amphora's state, None if none is kept yet.
    :param seq: the heartbeat's sequence number.
    :param boot: the agent's boot time in seconds since the epoch; 0 if unknown.
    """
    if state is None or boot > state[0]:
        return True, (boot, seq, 0)
    last_boot, newest, seen = state
    if boot < last_boot:
        return False, state
    if seq > newest:
        shift = seq - newest
        seen = ((seen << shift) | (1 << (shift - 1))) & _MASK if shift <= WINDOW else 0
        return True, (boot, seq, seen)
    back = newest - seq
    if back == 0:
        return False, state
    if back <= WINDOW:
        bit = 1 << (back - 1)
        if seen & bit:
            return False, state
        return True, (boot, newest, seen | bit)
    if boot:
        return False, state  # the same life of the agent: long past
    return True, (boot, seq, 0)  # no boot time: taken as a restart
