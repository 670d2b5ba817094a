"""Receive heartbeats over UDP: :class:`UDPStatusGetter`, driven by the caller's loop.

The getter keeps Octavia's method names (``dorecv``, ``check``, ``update``,
``update_health``, ``update_stats``) so a controller can swap its own receiver
for this one.  It owns a socket and counters; everything it does to a datagram
happens in :meth:`UDPStatusGetter.handle_datagram`, the socket-free step that
``dorecv``, the asyncio adapter, tests and replays of captured traffic share.

Threads: one thread at a time receives (``dorecv``/``check``/``handle_datagram``);
:meth:`~UDPStatusGetter.update` and :meth:`~UDPStatusGetter.close` may be
called from any other thread meanwhile.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeVar

from .envelope import DEFAULT_MAX_DECOMPRESSED, KeyRing, Unwrapper
from .errors import REASONS, HeartbeatError
from .logs import RateLimitedLogger
from .models import Heartbeat, Limits

__all__ = ["Handler", "UDPStatusGetter", "normalize_host"]

logger = logging.getLogger("amphora_heartbeat.getter")

#: A function called with each accepted heartbeat and its source IP string.
Handler = Callable[[Heartbeat, str], object]

#: Bytes read per datagram: more than the largest UDP payload, so nothing is cut.
_RECV_SIZE = 65536

# Rejection log rate limit: at most _LOG_BURST warnings per reason per _LOG_WINDOW
# seconds, then one line with the count, so a flood of bad packets cannot flood the log.
_LOG_WINDOW = 10.0
_LOG_BURST = 5

_DEFAULT_LIMITS = Limits()
_G = TypeVar("_G", bound="UDPStatusGetter")


class _Binding(NamedTuple):
    # Socket, address and key ring change together, in one assignment.  A
    # datagram is judged with the key ring of the socket it came from as that
    # stands when the datagram is processed: the current ring for the current
    # socket (so a key rotated while a thread waited in recvfrom applies to what
    # it then reads), and for a socket update() replaced, the ring it had then.
    sock: socket.socket
    unwrapper: Unwrapper
    address: tuple[str, int]


def _resolve(ip: str, port: int) -> tuple[socket.AddressFamily, Any]:
    """Return the family and socket address of the first getaddrinfo result."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer from 0 to 65535, not {port!r}")
    try:
        infos = socket.getaddrinfo(ip, port, 0, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    except socket.gaierror as exc:
        raise OSError(exc.errno, f"cannot resolve {ip}:{port}: {exc.strerror}") from exc
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _bind(
    ip: str, port: int, timeout: float | None, rcvbuf: int | None, reuse_port: bool = False
) -> socket.socket:
    """Return a UDP socket bound to ip:port with the timeout and receive buffer set."""
    family, sockaddr = _resolve(ip, port)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot bind {ip}:{port}: {exc.strerror}") from exc
    return sock


def normalize_host(address: str) -> str:
    """Return the canonical text of an IP address, so that two spellings compare equal.

    An IPv4-mapped IPv6 address becomes the IPv4 address (a getter bound to
    ``::`` reports an IPv4 sender as ``::ffff:192.0.2.10``); IPv6 is written
    compressed and in lower case (``FD00:0::1`` becomes ``fd00::1``); a scope
    (``%eth0``) is kept.  Use it on both sides of a source-address check, e.g.
    ``normalize_host(srcaddr) == normalize_host(amphora.lb_network_ip)``.

    :raises ValueError: ``address`` is not an IPv4 or IPv6 address.
    :raises TypeError: ``address`` is not a string.
    """
    if not isinstance(address, str):
        raise TypeError(f"an address must be a string, not {type(address).__name__}")
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _address(sock: socket.socket) -> tuple[str, int]:
    name = sock.getsockname()
    return (name[0], int(name[1]))


def _wake_address(address: tuple[str, int]) -> tuple[str, int]:
    # A socket bound to a wildcard address is reachable on the loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address[0], address[0])
    return (host, address[1])


class _Sockets:
    """How a getter binds its sockets, and how it wakes the reader of one it lets go.

    Used by :meth:`UDPStatusGetter.update` and :meth:`UDPStatusGetter.close` only:
    nothing here is on the receive path.
    """

    __slots__ = ("max_decompressed", "rcvbuf", "reuse_port", "timeout")

    def __init__(
        self, timeout: float | None, rcvbuf: int | None, reuse_port: bool, max_decompressed: int
    ) -> None:
        self.timeout = timeout
        self.rcvbuf = rcvbuf
        self.reuse_port = reuse_port
        self.max_decompressed = max_decompressed

    def bind(self, key: KeyRing, ip: str, port: int) -> _Binding:
        """Return a new binding: ``key``'s unwrapper and a socket bound to ip:port."""
        return self._bound(Unwrapper(key, max_decompressed=self.max_decompressed), ip, port)

    def rebind(
        self, old: _Binding, key: KeyRing | None, ip: str | None, port: int | None
    ) -> _Binding:
        """Return the binding an update asks for, binding a new socket if it needs one."""
        if key is None:
            unwrapper = old.unwrapper
        else:
            unwrapper = Unwrapper(key, max_decompressed=self.max_decompressed)
        ip = old.address[0] if ip is None else ip
        port = old.address[1] if port is None else port
        if port != 0 and tuple(_resolve(ip, port)[1][:2]) == old.address:
            return _Binding(old.sock, unwrapper, old.address)
        return self._bound(unwrapper, ip, port)

    def _bound(self, unwrapper: Unwrapper, ip: str, port: int) -> _Binding:
        sock = _bind(ip, port, self.timeout, self.rcvbuf, self.reuse_port)
        return _Binding(sock, unwrapper, _address(sock))

    def wake(self, sock: socket.socket, address: tuple[str, int]) -> None:
        """Wake a thread blocked on ``sock`` (bound to ``address``), if there is one."""
        # A thread blocked on this socket would wait out its timeout (or for
        # ever): an empty datagram from the socket to itself wakes it, and
        # dorecv drops it.
        with contextlib.suppress(OSError):
            if self.reuse_port:
                # In a SO_REUSEPORT group a datagram to the address may reach another
                # member; shutting reading down wakes the reader (Linux) instead.
                sock.shutdown(socket.SHUT_RD)
            else:
                sock.sendto(b"", _wake_address(address))


def _drain(old: _Binding, pending: collections.deque[tuple[Unwrapper, bytes, Any]]) -> None:
    """Queue the datagrams a replaced socket still holds, each with that socket's unwrapper."""
    sock = old.sock
    # Polling with the socket's timeout would make update() wait it out.
    sock.setblocking(False)
    try:
        while True:
            data, srcaddr = sock.recvfrom(_RECV_SIZE, socket.MSG_DONTWAIT)
            if srcaddr is None or (not data and srcaddr[:2] == old.address):
                continue
            pending.append((old.unwrapper, data, srcaddr))
    except OSError:
        pass  # EAGAIN: the queue is empty


class _GetterLog:
    """What a getter refused or saw fail: the counts, and their rate-limited log lines.

    Only refusals and failing handlers come here: the counts of every datagram
    (``accepted``, ``received_bytes``) stay on the getter, on the receive path.
    """

    __slots__ = ("handler_errors", "limited", "rejected")

    def __init__(self) -> None:
        self.rejected: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.handler_errors = 0
        # Timed by the receive times passed in (seconds since the epoch), or the wall clock.
        self.limited = RateLimitedLogger(
            logger, interval=_LOG_WINDOW, burst=_LOG_BURST, clock=time.time
        )

    def count_rejection(self, reason: str) -> None:
        """Count one datagram refused for ``reason``."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def warn_rejection(self, error: HeartbeatError, srcaddr: str, now: float) -> None:
        """Log a refused datagram as a WARNING, rate-limited per reason."""
        # %r keeps control characters from a hostile packet out of the log line.
        self.limited.warning(
            error.reason,
            "rejected heartbeat datagram from %s: %s: %r",
            srcaddr,
            error.reason,
            error.message,
            now=now,
        )

    def handler_failed(self, where: str, heartbeat: Heartbeat) -> None:
        """Count and log (with the traceback being handled) a handler that raised."""
        # A handler that fails fails for every heartbeat: rate-limited, with its traceback.
        self.handler_errors += 1
        self.limited.error(
            "handler_errors." + where,
            "%s failed for amphora %s",
            where,
            heartbeat.amphora_id,
            now=heartbeat.recv_time,
            exc_info=True,
        )

    def counters(self, accepted: int, received_bytes: int) -> dict[str, int]:
        """Return the getter's counters, given its counts of accepted datagrams and bytes."""
        rejected = dict(self.rejected)
        counts = {
            "received": accepted + sum(rejected.values()),
            "received_bytes": received_bytes,
            "accepted": accepted,
        }
        for reason, count in rejected.items():
            counts["rejected." + reason] = count
        counts["handler_errors"] = self.handler_errors
        return counts


class UDPStatusGetter:
    """Receive, verify and parse amphora heartbeats on a UDP socket.

    Binds on construction.  Drive it from your own loop: call :meth:`check`
    repeatedly (it hands each heartbeat to :meth:`update_health` and
    :meth:`update_stats`), or :meth:`dorecv` to get heartbeats back, or wait on
    :meth:`fileno` and call them when it is readable.

    :param key: the heartbeat key (str, UTF-8 encoded, or bytes), or a sequence
        of keys (a key ring: the first that verifies wins, so keys rotate without loss).
    :param ip: address to bind (IPv4 or IPv6; the first getaddrinfo result).
    :param port: UDP port to bind; 0 picks a free one (read it from :attr:`address`).
    :param timeout: how long :meth:`dorecv` waits for a datagram, in seconds;
        0 polls, None waits for ever.
    :param rcvbuf: SO_RCVBUF of every socket bound, in bytes (Octavia's
        ``sock_rlimit``); None keeps the system default.
    :param reuse_port: bind with ``SO_REUSEPORT`` (Linux), so that several processes
        share the address and the kernel spreads datagrams over them by source.
    :param max_decompressed: largest decompressed payload accepted, in bytes.
    :param limits: bounds on a heartbeat's contents.
    :param health_handler: called as ``health_handler(heartbeat, srcaddr)`` by
        :meth:`update_health`; ``srcaddr`` is the source IP string.
    :param stats_handler: called likewise by :meth:`update_stats`.
    :raises OSError: the address cannot be resolved or bound (errno kept).
    """

    def __init__(
        self,
        key: KeyRing,
        ip: str = "127.0.0.1",
        port: int = 5555,
        *,
        timeout: float | None = 1.0,
        rcvbuf: int | None = None,
        reuse_port: bool = False,
        max_decompressed: int = DEFAULT_MAX_DECOMPRESSED,
        limits: Limits = _DEFAULT_LIMITS,
        health_handler: Handler | None = None,
        stats_handler: Handler | None = None,
    ) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be None or a non-negative number of seconds")
        self._sockets = _Sockets(timeout, rcvbuf, reuse_port, max_decompressed)
        self._limits = limits
        self._health_handler = health_handler
        self._stats_handler = stats_handler
        self._lock = threading.Lock()
        self._closed = False
        # Datagrams still queued on a socket that update() replaced, with the
        # unwrapper of that socket's key; served before anything else.
        self._pending: collections.deque[tuple[Unwrapper, bytes, Any]] = collections.deque()
        # Sockets replaced or closed while a receiving thread may still be in a
        # system call on them.  Closing such a socket from here would free its
        # descriptor number for reuse while that thread polls it, so the
        # receiving thread closes them once its call returns.
        self._retired: list[socket.socket] = []
        self._receiving = False
        self._received_bytes = 0
        self._accepted = 0
        self._log = _GetterLog()
        self._binding = self._sockets.bind(key, ip, port)

    def __repr__(self) -> str:
        host, port = self._binding.address
        state = "closed" if self._closed else "open"
        return f"<UDPStatusGetter {host}:{port} {state}>"

    # --- configuration -------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``, as ``getsockname()`` gives it (port 0 resolved)."""
        return self._binding.address

    @property
    def timeout(self) -> float | None:
        """How long :meth:`dorecv` waits for a datagram, in seconds (None: for ever)."""
        return self._sockets.timeout

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def update(self, key: KeyRing | None, ip: str | None = None, port: int | None = None) -> None:
        """Apply a new key and/or bind another address; safe while another thread receives.

        ``ip`` and ``port`` default to the current ones; ``key`` None keeps the
        current key.  When ip:port resolves to the current address only the key
        changes (port 0 always rebinds).  Otherwise the new socket is bound
        first, then key and socket are swapped together, datagrams still queued
        on the old socket are kept for the next :meth:`dorecv` calls (judged with
        the old socket's key), and the old socket is closed.  :meth:`fileno`
        changes when the socket does.  A datagram read from the current socket is
        judged with the key in force once ``recvfrom`` returns, even if a thread
        was already waiting for it when the key changed.

        The new socket is bound while the old one still holds its address, so
        moving to another address on the same port fails (``EADDRINUSE``) where the
        two overlap, e.g. from 127.0.0.1 to 0.0.0.0: move through another port, or
        close this getter and make a new one.

        :raises OSError: the new address cannot be resolved or bound (errno
            kept, the message naming ip:port); the old socket and key keep serving.
        """
        with self._lock:
            if self._closed:
                raise ValueError("update() on a closed UDPStatusGetter")
            old = self._binding
            new = self._sockets.rebind(old, key, ip, port)
            self._binding = new
            if new.sock is not old.sock:
                self._retire(old)

    def _retire(self, old: _Binding) -> None:
        """Keep what the replaced socket still holds, wake its reader, and close it."""
        _drain(old, self._pending)
        self._wake_and_close(old.sock, old.address)

    def _wake_and_close(self, sock: socket.socket, address: tuple[str, int]) -> None:
        # Called with the lock held.
        self._sockets.wake(sock, address)
        self._retired.append(sock)
        # dorecv sets _receiving before it reads _binding, which was swapped
        # before this point: if it is clear now, no thread can be using sock.
        if not self._receiving:
            self._close_retired()

    def _close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for sock in retired:
            sock.close()

    # --- receiving -----------------------------------------------------------------

    def fileno(self) -> int:
        """Return the socket's file descriptor, for selectors and ``loop.add_reader``.

        It changes when :meth:`update` binds a new socket: register it again.
        """
        return self._binding.sock.fileno()

    def handle_datagram(self, data: bytes, srcaddr: Any, *, now: float) -> Heartbeat:
        """Unwrap, parse and count one datagram; return its heartbeat stamped ``recv_time=now``.

        The socket-free step every receive path shares.  ``srcaddr`` is the
        source address as ``recvfrom`` returns it; ``now`` is the receive time in
        seconds since the epoch.

        :raises HeartbeatError: the subclass naming why the datagram is refused
            (counted under ``rejected.<reason>`` and logged, rate-limited).
        """
        return self._handle(self._binding.unwrapper, data, srcaddr, now)

    def _handle(self, unwrapper: Unwrapper, data: bytes, srcaddr: Any, now: float) -> Heartbeat:
        self._received_bytes += len(data)
        try:
            heartbeat = Heartbeat.from_dict(
                unwrapper.unwrap(data), recv_time=now, limits=self._limits
            )
        except HeartbeatError as exc:
            self._log.count_rejection(exc.reason)
            self.handle_rejection(exc, _source_ip(srcaddr), now=now)
            raise
        self._accepted += 1
        return heartbeat

    def dorecv(self) -> tuple[Heartbeat, str]:
        """Wait up to :attr:`timeout` for one datagram; return ``(heartbeat, source_ip)``.

        :raises TimeoutError: nothing arrived in time (also with a timeout of 0).
        :raises HeartbeatError: the datagram was refused (see :meth:`handle_datagram`).
        :raises OSError: the getter is closed, or the socket failed.
        """
        while True:
            if self._pending:
                unwrapper, data, srcaddr = self._pending.popleft()
                return self._handle(unwrapper, data, srcaddr, time.time()), srcaddr[0]
            self._receiving = True
            binding = self._binding
            try:
                data, srcaddr = binding.sock.recvfrom(_RECV_SIZE)
            except BlockingIOError:
                if binding is not self._binding:
                    continue
                raise TimeoutError("no heartbeat ready") from None
            except OSError:
                # TimeoutError included: a socket replaced by update() while we
                # waited on it is no error; wait on the new one.
                if binding is not self._binding and not self._closed:
                    continue
                if self._closed:
                    raise OSError(errno.EBADF, "the UDPStatusGetter is closed") from None
                raise
            finally:
                self._receiving = False
                if self._retired:
                    with self._lock:
                        self._close_retired()
            if not data and (binding is not self._binding or self._closed):
                # The wake-up datagram of update() or close().
                if self._closed:
                    raise OSError(errno.EBADF, "the UDPStatusGetter is closed")
                continue
            # A key-only update() while we waited keeps the socket: the datagram is
            # judged with the key in force now, so a key just dropped is refused.
            current = self._binding
            unwrapper = current.unwrapper if current.sock is binding.sock else binding.unwrapper
            return self._handle(unwrapper, data, srcaddr, time.time()), srcaddr[0]

    def check(self) -> Heartbeat | None:
        """Receive one heartbeat and hand it to :meth:`update_health` and :meth:`update_stats`.

        Return the heartbeat, or None when nothing arrived in time or the
        datagram was refused.  Never raises for those, nor for an ``Exception``
        from a handler (logged with its traceback and counted in
        ``handler_errors``; the heartbeat is still returned).

        :raises OSError: the getter is closed, or the socket failed.
        """
        try:
            heartbeat, srcaddr = self.dorecv()
        except (TimeoutError, HeartbeatError):
            return None
        try:
            self.update_health(heartbeat, srcaddr)
        except Exception:
            self._log.handler_failed("update_health", heartbeat)
        try:
            self.update_stats(heartbeat, srcaddr)
        except Exception:
            self._log.handler_failed("update_stats", heartbeat)
        return heartbeat

    def update_health(self, heartbeat: Heartbeat, srcaddr: str) -> None:
        """Hand a heartbeat to the health handler; override in a subclass instead if you like."""
        if self._health_handler is not None:
            self._health_handler(heartbeat, srcaddr)

    def update_stats(self, heartbeat: Heartbeat, srcaddr: str) -> None:
        """Hand a heartbeat to the stats handler; override in a subclass instead if you like."""
        if self._stats_handler is not None:
            self._stats_handler(heartbeat, srcaddr)

    def handle_rejection(self, error: HeartbeatError, srcaddr: str, *, now: float) -> None:
        """Report a refused datagram: by default a WARNING, at most 5 per reason per 10 seconds.

        After the fifth, one line per reason says how many were left out.
        Override in a subclass to do something else with rejections (the
        counters are kept either way).  ``now`` is the receive time, in seconds.
        """
        self._log.warn_rejection(error, srcaddr, now)

    @property
    def counters(self) -> Mapping[str, int]:
        """A snapshot of the counters, cumulative across :meth:`update` and readable after close.

        ``received`` (every datagram: ``accepted`` plus every rejection),
        ``received_bytes`` (their payload bytes), ``accepted``, ``rejected.<reason>``
        for each reason in :data:`~amphora_heartbeat.errors.REASONS`, and ``handler_errors``.
        """
        return self._log.counters(self._accepted, self._received_bytes)

    # --- life cycle ----------------------------------------------------------------

    def close(self) -> None:
        """Close the socket; a thread blocked in :meth:`dorecv` gets ``OSError``. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            binding = self._binding
            self._pending.clear()
            self._wake_and_close(binding.sock, binding.address)

    def __enter__(self: _G) -> _G:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _source_ip(srcaddr: Any) -> str:
    if isinstance(srcaddr, tuple) and srcaddr:
        return str(srcaddr[0])
    return str(srcaddr)
