"""Reloading a running manager's configuration (SIGHUP), rotating keys without a failover.

:class:`Reloader` re-reads the configuration when asked and applies what a
running manager can change:

* a new ``heartbeat_key`` is accepted at once, and the previous one stays
  accepted for one ``heartbeat_timeout`` (then it is dropped), so amphorae that
  still sign with it while they are being given the new one are heard, and none
  is failed over because of the rotation (:class:`KeyRotation`);
* ``heartbeat_interval``, ``heartbeat_timeout``, ``health_check_interval``,
  ``failover_threshold`` and ``failover_threads`` apply from the next tick
  (:meth:`HealthManager.reconfigure <amphora_heartbeat.manager.HealthManager.reconfigure>`);
* a changed bind address, receive buffer, database or failover command is
  logged as needing a restart and otherwise ignored.

A reload that fails (a file unreadable, a bad value) is logged and changes
nothing.  :meth:`Reloader.request` only sets a flag and wakes the manager's
loop, so a signal handler may call it; the reload itself runs in the loop
(:meth:`Reloader.poll`, the ``every_tick`` of :meth:`HealthManager.run
<amphora_heartbeat.manager.HealthManager.run>`).  No key is ever logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import attrs

from ..envelope import KeyRing
from .config import RESTART_FIELDS, ManagerConfig
from .core import HealthManager

__all__ = ["KeyRotation", "Reloader"]

log = logging.getLogger("amphora_heartbeat.manager")

# The fields HealthManager.reconfigure takes.
_TIMINGS = (
    "heartbeat_interval",
    "heartbeat_timeout",
    "health_check_interval",
    "failover_threshold",
    "failover_threads",
)


def _keys(key: KeyRing) -> list[str | bytes]:
    return [key] if isinstance(key, (str, bytes)) else list(key)


class KeyRotation:
    """The keys a getter accepts: the current key (or ring), and keys retired less than a while ago.

    Time is an argument: :meth:`rotate` and :meth:`expire` take ``now``
    (seconds since the epoch).
    """

    def __init__(self, key: KeyRing) -> None:
        """Start with ``key`` as the current key and none retired."""
        self.current = key
        self._retired: list[tuple[str | bytes, float]] = []

    def rotate(self, key: KeyRing, *, now: float, keep_for: float) -> None:
        """Make ``key`` current; keep accepting the keys it replaces for ``keep_for`` seconds."""
        new = _keys(key)
        until = now + keep_for
        self._retired = [(k, t) for k, t in self._retired if k not in new]
        self._retired += [(k, until) for k in _keys(self.current) if k not in new]
        self.current = key

    def expire(self, now: float) -> bool:
        """Drop the retired keys whose time is up at ``now``; return whether any was dropped."""
        kept = [(k, t) for k, t in self._retired if now < t]
        dropped = len(kept) < len(self._retired)
        self._retired = kept
        return dropped

    @property
    def next_expiry(self) -> float | None:
        """When the next retired key is dropped (seconds since the epoch), or None."""
        return min((t for _, t in self._retired), default=None)

    def ring(self) -> KeyRing:
        """Return the keys to accept: the current ones first, then those retired."""
        keys = _keys(self.current) + [k for k, _ in self._retired]
        return keys[0] if len(keys) == 1 else keys


class Reloader:
    """Re-read the configuration when asked, and apply what a running manager can change.

    :param load: returns the configuration afresh (files and flags), raising
        ``ValueError`` or ``OSError`` when it cannot.
    :param config: the configuration the manager runs with now.
    :param manager: the manager to reconfigure.
    :param getter: what receives (anything with ``update(key)``, e.g. a
        :class:`~amphora_heartbeat.getter.UDPStatusGetter`), or None.
    """

    def __init__(
        self,
        load: Callable[[], ManagerConfig],
        config: ManagerConfig,
        manager: HealthManager,
        getter: Any,
    ) -> None:
        if config.heartbeat_key is None:
            raise ValueError("the running configuration has no heartbeat_key")
        self._load = load
        #: The configuration in force (restart-only fields as at start).
        self.config = config
        self.manager = manager
        self.getter = getter
        self.rotation = KeyRotation(config.heartbeat_key)
        #: Reloads applied, and reloads refused (a bad file).
        self.reloads = 0
        self.failures = 0
        self._requested = False

    @property
    def requested(self) -> bool:
        """Whether a reload was asked for and has not run yet."""
        return self._requested

    def request(self) -> None:
        """Ask for a reload at the manager's next tick; safe from a signal handler."""
        self._requested = True
        self.manager.wake()

    def poll(self, now: float) -> None:
        """Reload if asked, and drop retired keys whose time is up (``now``: seconds)."""
        if self._requested:
            self._requested = False
            self.reload(now)
        if self.rotation.expire(now):
            self._apply_key()
            log.warning("the previous heartbeat key is no longer accepted")

    def reload(self, now: float) -> bool:
        """Re-read the configuration and apply it at ``now``; return False if it was refused."""
        new = self._read()
        if new is None or new.heartbeat_key is None:
            return False
        key, old = new.heartbeat_key, self.config
        changed = old.differences(new)
        for name in changed:
            if name in RESTART_FIELDS:
                log.warning("reload: %s changed; it takes effect at the next restart", name)
        new = attrs.evolve(new, **{name: getattr(old, name) for name in RESTART_FIELDS})
        self.config = new
        self.reloads += 1
        if any(name in _TIMINGS for name in changed):
            self.manager.reconfigure(**{name: getattr(new, name) for name in _TIMINGS})
        if "heartbeat_key" in changed:
            self.rotation.rotate(key, now=now, keep_for=new.heartbeat_timeout)
            self._apply_key()
            log.warning(
                "reload: new heartbeat key; the previous one is accepted for %ss more",
                new.heartbeat_timeout,
            )
        applied = [name for name in changed if name not in RESTART_FIELDS]
        log.info("configuration reloaded; applied: %s", ", ".join(applied) or "nothing changed")
        return True

    def _read(self) -> ManagerConfig | None:
        """Return the configuration loaded afresh, or None (logged, counted) if it is refused."""
        try:
            new = self._load()
        except (ValueError, OSError) as exc:
            reason = str(exc)
        else:
            if new.heartbeat_key is not None:
                return new
            reason = "no heartbeat_key"
        self.failures += 1
        log.error("reload refused, the running configuration stays: %s", reason)
        return None

    def _apply_key(self) -> None:
        if self.getter is not None:
            self.getter.update(self.rotation.ring())
