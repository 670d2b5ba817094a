"""Tell systemd how the manager is doing: readiness, status, watchdog, reload, stop.

The protocol (``sd_notify``) is one datagram of ``KEY=VALUE`` lines sent to the
AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a name starting with ``@`` is in the
abstract namespace).  It is written here rather than taken from a package: it
is one ``sendto``, and the small PyPI packages for it are unmaintained or
compiled against libsystemd.

:class:`Notifier` sends the messages; with no ``$NOTIFY_SOCKET`` every call does
nothing, so a manager started by hand behaves as before.  Its :meth:`~Notifier.tick`
is meant for :attr:`HealthManager.observers
<amphora_heartbeat.manager.HealthManager.observers>`: it runs in the tick loop, so
``WATCHDOG=1`` stops when that loop hangs (a blocked database write) even while
the receiving thread lives on, and systemd restarts the manager after
``WatchdogSec=``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping

__all__ = ["Notifier", "WatchdogRelay", "status_line"]

#: Seconds between two ``STATUS=`` lines sent from :meth:`Notifier.tick`.
STATUS_EVERY = 5.0


class Notifier:
    """Send ``sd_notify`` messages to the socket ``$NOTIFY_SOCKET`` names, if any.

    :param environ: where ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``
        are read (the process environment by default).
    :param status: returns the one-line summary :meth:`tick` sends as ``STATUS=``.
    :param status_every: seconds between two ``STATUS=`` lines from :meth:`tick`.

    Sending never raises: systemd going away must not stop the manager.
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        status: Callable[[], str] | None = None,
        status_every: float = STATUS_EVERY,
    ) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        #: The socket address, or None when not run by systemd with ``Type=notify``.
        self.address: str | None = "\0" + path[1:] if path.startswith("@") else (path or None)
        #: Seconds between two ``WATCHDOG=1``: half what ``$WATCHDOG_USEC`` asks; None: off.
        self.watchdog_interval = _watchdog_interval(env)
        self.status = status
        self.status_every = status_every
        self._last_watchdog = float("-inf")
        self._last_status = float("-inf")
        #: Whether :meth:`ready` was sent (a relay forwards no ping before it).
        self.readied = False

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to notify."""
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` as one message; return whether it was sent."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Send ``READY=1`` (once bound and the store answers), with a status line if given."""
        self.readied = True
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> bool:
        """Send ``STOPPING=1`` (shutting down)."""
        return self.notify("STOPPING=1")

    def send_status(self, text: str) -> bool:
        """Send ``STATUS=text`` (one line; newlines become spaces)."""
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> bool:
        """Send ``WATCHDOG=1``."""
        return self.notify("WATCHDOG=1")

    @contextlib.contextmanager
    def reloading(self) -> Iterator[None]:
        """Send ``RELOADING=1`` on entry and ``READY=1`` on exit, around a reload.

        ``RELOADING=1`` carries ``MONOTONIC_USEC`` as ``Type=notify-reload`` wants.
        A reload that raises is reported in ``STATUS=`` and the exception goes on.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")
        try:
            yield
        except BaseException as exc:
            self.notify("READY=1", f"STATUS=reload failed: {exc}")
            raise
        self.notify("READY=1")

    def tick(self, now: float) -> None:
        """Send ``WATCHDOG=1`` and ``STATUS=`` when due at ``now`` (seconds).

        Call it from the loop systemd should watch, once per iteration, with a
        monotonic clock (a ``now`` earlier than the last one counts as due, so a
        clock stepped back cannot hold the pings).
        """
        if self.address is None:
            return
        interval = self.watchdog_interval
        if interval is not None and _due(now, self._last_watchdog, interval):
            self._last_watchdog = now
            self.watchdog()
        if self.status is not None and _due(now, self._last_status, self.status_every):
            self._last_status = now
            self.send_status(self.status())


class WatchdogRelay:
    """Stand between systemd and several worker processes for the watchdog.

    The workers get :meth:`environ` (their ``NOTIFY_SOCKET`` is this relay, with the
    watchdog interval systemd asked of the parent) and each pings ``WATCHDOG=1``
    from its own tick loop.  The relay pings systemd once every worker in
    ``pids()`` has pinged since its last ping, so one worker whose tick loop hangs
    stops the pings and systemd restarts the service.  Other messages from the
    workers (their ``READY=1``, ``STATUS=``) are dropped: the parent speaks for
    them.  Linux only (it reads each sender's pid from ``SCM_CREDENTIALS``).

    :param notifier: the parent's :class:`Notifier`, which must have a watchdog.
    :param pids: returns the pids of the workers running now.
    """

    def __init__(self, notifier: Notifier, pids: Callable[[], set[int]]) -> None:
        if notifier.watchdog_interval is None:
            raise ValueError("the notifier has no watchdog to relay")
        self.notifier = notifier
        self.pids = pids
        name = f"amphora-heartbeat-{os.getpid()}-{secrets.token_hex(6)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + name)
        #: The workers' ``NOTIFY_SOCKET`` (abstract namespace).
        self.address = "@" + name
        self._seen: set[int] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True, name="watchdog-relay")

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        """Return ``base`` with the workers' notify socket and watchdog interval set."""
        env = {k: v for k, v in base.items() if k != "WATCHDOG_PID"}
        env["NOTIFY_SOCKET"] = self.address
        env["WATCHDOG_USEC"] = str(round(2e6 * self.notifier.watchdog_interval))  # type: ignore[operator]
        return env

    def start(self) -> None:
        """Relay in a daemon thread until :meth:`close`."""
        self._thread.start()

    def handle(self, message: bytes, pid: int) -> bool:
        """Note one worker's message; return whether systemd was pinged (never before READY)."""
        if b"WATCHDOG=1" not in message.split(b"\n") or not self.notifier.readied:
            return False
        self._seen.add(pid)
        if not self.pids() <= self._seen:
            return False
        self._seen.clear()
        return self.notifier.watchdog()

    def _serve(self) -> None:
        size = socket.CMSG_SPACE(struct.calcsize("3i"))
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, size)
            except OSError:
                return  # closed
            if self._closed:
                return
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    self.handle(data, struct.unpack("3i", payload[: struct.calcsize("3i")])[0])

    def close(self) -> None:
        """Stop relaying."""
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def _due(now: float, last: float, every: float) -> bool:
    return now >= last + every or now < last


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Return half of ``$WATCHDOG_USEC`` in seconds, if it is meant for this process."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2e6


def status_line(counters: Mapping[str, float], now: float) -> str:
    """Return a one-line summary of a manager's ``counters`` at ``now`` (seconds since the epoch).

    The ``STATUS=`` that ``systemctl status`` shows.
    """
    rejected = sum(v for k, v in counters.items() if k.startswith("rejected."))
    last = counters.get("last_commit_seconds")
    commit = f"last commit {max(now - last, 0.0):.1f} s ago" if last else "no commit yet"
    return (
        f"{counters.get('accepted', 0):.0f} heartbeats accepted, {rejected:.0f} rejected; "
        f"backlog {counters.get('backlog', 0):.0f}; {commit}; "
        f"{counters.get('stale_amphorae', 0):.0f} stale; "
        f"failovers {counters.get('failovers_started', 0):.0f} started, "
        f"{counters.get('failovers_failed', 0):.0f} failed"
    )
