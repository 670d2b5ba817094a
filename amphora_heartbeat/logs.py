"""Rate-limited logging: a few lines per reason per interval, then how many were left out.

A receiver judges every datagram it is sent, so anything it logs per packet lets
whoever sends packets write to the log: 500 heartbeats with an unknown member
status once made 22,002 warning lines.  :class:`RateLimitedLogger` keeps such
messages to ``burst`` lines per *reason* (a short, fixed string such as
``"invalid_hmac"`` or ``"member_status"``) per ``interval`` seconds; the rest are
counted, and the next line of that reason after its interval is over is preceded
by one line saying how many were not logged.  :meth:`RateLimitedLogger.flush`
writes those counts without waiting for another message.

Time is an argument (``now=``, in seconds) or comes from the ``clock`` the
caller injects (the I/O shell passes :func:`time.time`), so the module reads no
clock itself and tests drive it without sleeping.  The helper logs through the
:class:`logging.Logger` it is given and never configures logging itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

__all__ = ["OTHER_REASONS", "RateLimitedLogger"]

#: The reason new reasons are counted under once a logger tracks ``max_reasons``.
OTHER_REASONS = "other"


class _Window:
    """One reason's current interval: when it ends, lines left, lines held back."""

    __slots__ = ("end", "left", "start", "suppressed")

    def __init__(self, now: float, interval: float, burst: int) -> None:
        self.start = now
        self.end = now + interval
        self.left = burst
        self.suppressed = 0


class RateLimitedLogger:
    """Log through ``logger`` at most ``burst`` lines per reason per ``interval`` seconds.

    :param logger: where lines go (its level and handlers apply as usual).
    :param interval: the length of a reason's window, in seconds.
    :param burst: lines logged per reason per window; the rest are counted.
    :param max_reasons: reasons tracked at once; beyond it, lines of new reasons
        share the reason :data:`OTHER_REASONS`, so the table cannot grow without limit.
    :param clock: the time in seconds when a call passes no ``now`` (the clock
        whose scale your ``now`` values use, e.g. :func:`time.monotonic`); None:
        every call passes ``now``.
    :raises ValueError: a non-positive interval, burst or max_reasons.

    Thread-safe.  A window starts at a reason's first line; a ``now`` earlier
    than the window's start (a clock stepped back) starts a new window too.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = 10.0,
        burst: int = 1,
        max_reasons: int = 256,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be positive seconds, got {interval!r}")
        if burst < 1 or max_reasons < 1:
            raise ValueError("burst and max_reasons must be at least 1")
        self.logger = logger
        self.interval = interval
        self.burst = burst
        self.max_reasons = max_reasons
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def __repr__(self) -> str:
        return (
            f"<RateLimitedLogger {self.logger.name!r}: {self.burst} per reason "
            f"per {self.interval:g} s, {len(self._windows)} reason(s)>"
        )

    def log(
        self,
        level: int,
        reason: str,
        msg: str,
        *args: object,
        now: float | None = None,
        exc_info: bool = False,
    ) -> bool:
        """Log ``msg % args`` at ``level`` unless ``reason`` has used its lines; return whether.

        :param reason: what the line is about, from a small fixed set (it names
            the count in the summary line, so keep it free of sender-chosen text).
        :param now: the time in seconds, on the clock's scale; None reads the clock.
        :param exc_info: attach the exception being handled, as ``logger.exception``.
        """
        return self._log(level, reason, msg, args, now=now, exc_info=exc_info)

    def warning(self, reason: str, msg: str, *args: object, now: float | None = None) -> bool:
        """Log at WARNING, rate-limited (see :meth:`log`); return whether the line was logged."""
        return self._log(logging.WARNING, reason, msg, args, now=now, exc_info=False)

    def error(
        self,
        reason: str,
        msg: str,
        *args: object,
        now: float | None = None,
        exc_info: bool = False,
    ) -> bool:
        """Log at ERROR, rate-limited (see :meth:`log`); return whether the line was logged."""
        return self._log(logging.ERROR, reason, msg, args, now=now, exc_info=exc_info)

    def _log(
        self,
        level: int,
        reason: str,
        msg: str,
        args: tuple[object, ...],
        *,
        now: float | None,
        exc_info: bool,
    ) -> bool:
        # Called straight from each public method, so stacklevel 3 names their caller.
        if not self.logger.isEnabledFor(level):
            return False
        if now is None:
            now = self._now()
        with self._lock:
            window = self._windows.get(reason)
            over: dict[str, _Window] = {}
            if window is None and len(self._windows) >= self.max_reasons:
                over = self._take_over(now)
                if len(self._windows) >= self.max_reasons:
                    reason = OTHER_REASONS
                    window = self._windows.get(reason)
            held = 0
            if window is None or now >= window.end or now < window.start:
                held = 0 if window is None else window.suppressed
                window = self._windows[reason] = _Window(now, self.interval, self.burst)
            if window.left > 0:
                window.left -= 1
                emit = True
            else:
                window.suppressed += 1
                emit = False
        for other, old in over.items():
            if old.suppressed:
                self._summary(level, other, old.suppressed, stacklevel=4)
        if held:
            self._summary(level, reason, held, stacklevel=4)
        if emit:
            self.logger.log(level, msg, *args, exc_info=exc_info, stacklevel=3)
        return emit

    def _now(self) -> float:
        if self._clock is None:
            raise TypeError("pass now=, or give the RateLimitedLogger a clock")
        return self._clock()

    def _take_over(self, now: float) -> dict[str, _Window]:
        """Remove and return the windows that are over at ``now`` (called with the lock held)."""
        over = {
            reason: window
            for reason, window in self._windows.items()
            if now >= window.end or now < window.start
        }
        for reason in over:
            del self._windows[reason]
        return over

    def flush(self, now: float | None = None, level: int = logging.WARNING) -> int:
        """Log the count held back for each reason whose window is over, and forget those windows.

        Call it now and then (e.g. from a periodic task) so counts appear even
        when no further line of their reason comes.  Return the number of
        summary lines written.
        """
        if now is None:
            now = self._now()
        with self._lock:
            over = self._take_over(now)
        lines = 0
        for reason, window in over.items():
            if window.suppressed:
                self._summary(level, reason, window.suppressed, stacklevel=3)
                lines += 1
        return lines

    @property
    def suppressed(self) -> Mapping[str, int]:
        """A snapshot: lines held back so far in each reason's current window."""
        with self._lock:
            return {r: w.suppressed for r, w in self._windows.items() if w.suppressed}

    def _summary(self, level: int, reason: str, count: int, *, stacklevel: int) -> None:
        self.logger.log(
            level,
            "%d more %s lines not logged (at most %d per %g s)",
            count,
            reason,
            self.burst,
            self.interval,
            stacklevel=stacklevel,
        )
