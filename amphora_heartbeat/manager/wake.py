"""A wake-up pipe: a loop that sleeps in ``select`` woken from a thread or a signal handler.

``threading.Event.set`` takes a lock, and a signal handler that interrupts the
thread holding it deadlocks; writing a byte to a non-blocking pipe cannot.
"""

from __future__ import annotations

import contextlib
import os
import select

__all__ = ["WakePipe"]


class WakePipe:
    """A non-blocking pipe to sleep on with :meth:`wait` and end the sleep with :meth:`wake`."""

    def __init__(self) -> None:
        """Open the pipe (both ends non-blocking)."""
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def wake(self) -> None:
        """End the current or next :meth:`wait` now; safe from any thread or signal handler."""
        with contextlib.suppress(OSError):
            os.write(self._w, b"x")

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds or until woken; True if woken (the wake is consumed)."""
        if self._r < 0 or not select.select([self._r], [], [], timeout)[0]:
            return False
        self.drain()
        return True

    def drain(self) -> None:
        """Consume every wake-up written so far."""
        with contextlib.suppress(OSError):
            while os.read(self._r, 512):
                pass

    def close(self) -> None:
        """Close both ends; later wakes do nothing and waits return at once."""
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._r = self._w = -1
