"""Receive heartbeats under asyncio: ``async with aio.serve(...) as server``.

The server runs the getter's own socket-free step
(:meth:`~amphora_heartbeat.getter.UDPStatusGetter.handle_datagram`) under an
asyncio datagram transport, so verification, parsing, counters and the
rejection log are exactly those of :class:`~amphora_heartbeat.getter.UDPStatusGetter`.
Handlers may be plain functions or coroutine functions; they are called one
at a time, in arrival order, by one task.  Heartbeats wait for that task in a
queue bounded in bytes (``max_queued_bytes``, estimated from each heartbeat's
size): when a slow handler lets it fill, the oldest are dropped and counted
(``queue_dropped``), so a flood cannot make the receiver grow without limit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from .envelope import KeyRing
from .errors import HeartbeatError
from .getter import UDPStatusGetter, _Binding
from .logs import RateLimitedLogger
from .models import Heartbeat

__all__ = ["DEFAULT_MAX_QUEUED_BYTES", "AsyncHandler", "Server", "estimated_size", "serve"]

logger = logging.getLogger("amphora_heartbeat.aio")

#: A handler: a plain function or a coroutine function of ``(heartbeat, srcaddr)``.
#: (A coroutine function returns an awaitable, which the server awaits.)
AsyncHandler = Callable[[Heartbeat, str], object]

_RECV_SIZE = 65536

#: The default bound on heartbeats waiting for the handlers, in (estimated) bytes:
#: about 8,000 standard heartbeats (2 listeners, 2 pools, 8 members: 4 KiB each),
#: or 10 of the largest a 64 KiB datagram can carry (about 3 MiB each).
DEFAULT_MAX_QUEUED_BYTES = 32 << 20


def estimated_size(heartbeat: Heartbeat) -> int:
    """Return about how much memory ``heartbeat`` holds, in bytes (a little over, by design).

    Measured with :mod:`tracemalloc` on CPython 3.11: about 1 KiB for the
    heartbeat itself, 600 bytes per listener or pool, 110 per member.
    """
    members = sum(len(pool.members) for pool in heartbeat.pools.values())
    return 1024 + 640 * (len(heartbeat.listeners) + len(heartbeat.pools)) + 128 * members


class _Getter(UDPStatusGetter):
    # The transport owns the sockets; the server closes them through it.
    def _retire(self, old: _Binding) -> None:
        pass


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: Server, binding: _Binding) -> None:
        self.server = server
        self.binding = binding
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Hand one datagram to the server's receive path."""
        self.server._receive(self.binding, data, addr)

    def error_received(self, exc: Exception) -> None:
        """Log a socket error (an ICMP error, say) at DEBUG: receiving goes on."""
        logger.debug("heartbeat socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        """Mark the transport closed."""
        if not self.closed.done():
            self.closed.set_result(None)


class Server:
    """A running asyncio heartbeat receiver; made by :func:`serve`, not directly."""

    def __init__(
        self,
        getter: UDPStatusGetter,
        health_handler: AsyncHandler | None,
        stats_handler: AsyncHandler | None,
        *,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
    ) -> None:
        if type(max_queued_bytes) is not int or max_queued_bytes < 1:
            raise ValueError(f"max_queued_bytes must be a positive int, not {max_queued_bytes!r}")
        self._getter = getter
        self._handlers = tuple(h for h in (health_handler, stats_handler) if h is not None)
        # Heartbeats waiting for the handlers, with their estimated sizes.
        self._queue: collections.deque[tuple[Heartbeat, str, int]] = collections.deque()
        self._queued_bytes = 0
        self._max_queued_bytes = max_queued_bytes
        self._queue_dropped = 0
        self._ready = asyncio.Event()
        self._log = RateLimitedLogger(logger, interval=10.0, burst=5, clock=time.time)
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _Protocol | None = None
        self._worker: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``, as on the getter."""
        return self._getter.address

    @property
    def counters(self) -> Mapping[str, int]:
        """A snapshot of the counters: the getter's, and ``queue_dropped``.

        ``queue_dropped`` counts accepted heartbeats dropped, oldest first,
        before their handlers ran, because those waiting held more than
        ``max_queued_bytes``.
        """
        counts = dict(self._getter.counters)
        counts["queue_dropped"] = self._queue_dropped
        return counts

    @property
    def queued_bytes(self) -> int:
        """The estimated size of the heartbeats waiting for the handlers, in bytes."""
        return self._queued_bytes

    async def _start(self) -> None:
        self._worker = asyncio.create_task(self._work(), name="amphora_heartbeat handlers")
        await self._listen(self._getter._binding)

    async def _listen(self, binding: _Binding) -> None:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Protocol(self, binding), sock=binding.sock
        )
        self._transport, self._protocol = transport, protocol

    def _receive(self, binding: _Binding, data: bytes, addr: Any) -> None:
        now = time.time()
        try:
            heartbeat = self._getter._handle(binding.unwrapper, data, addr, now)
        except HeartbeatError:
            return
        size = estimated_size(heartbeat)
        queue = self._queue
        dropped = 0
        # Make room from the oldest end: the newest heartbeat says the most.
        while queue and self._queued_bytes + size > self._max_queued_bytes:
            self._queued_bytes -= queue.popleft()[2]
            dropped += 1
        if size > self._max_queued_bytes:
            dropped += 1  # larger than the whole queue: dropped itself
        else:
            queue.append((heartbeat, heartbeat_source(addr), size))
            self._queued_bytes += size
            self._ready.set()
        if dropped:
            self._queue_dropped += dropped
            self._log.warning(
                "queue_dropped",
                "handlers are behind: dropped %d heartbeats (%d bytes still queued)",
                dropped,
                self._queued_bytes,
                now=now,
            )

    async def _work(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            heartbeat, srcaddr, size = queue.popleft()
            self._queued_bytes -= size
            for handler in self._handlers:
                try:
                    result = handler(heartbeat, srcaddr)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    self._getter._log.handler_errors += 1
                    name = getattr(handler, "__name__", "handler")
                    self._log.error(
                        "handler_errors." + str(name),
                        "%s failed for amphora %s",
                        name,
                        heartbeat.amphora_id,
                        exc_info=True,
                    )

    async def update(
        self, key: KeyRing | None, ip: str | None = None, port: int | None = None
    ) -> None:
        """Apply a new key and/or bind another address, as the getter's ``update()``.

        Returns once the new socket receives and the old one is closed; datagrams
        still queued on the old socket are handled with its key first.

        :raises OSError: the new address cannot be resolved or bound; the old
            socket and key keep serving.
        """
        async with self._lock:
            old_protocol, old_transport = self._protocol, self._transport
            if old_protocol is None or old_transport is None:
                raise ValueError("update() on a server that is not running")
            self._getter.update(key, ip, port)
            new = self._getter._binding
            if new.sock is old_protocol.binding.sock:
                old_protocol.binding = new  # only the key changed
                return
            await self._listen(new)
            # The old transport has read what the loop saw as ready; anything
            # still queued in the kernel is read here, before closing.
            raw: socket.socket = old_protocol.binding.sock
            with contextlib.suppress(OSError):
                while True:
                    data, addr = raw.recvfrom(_RECV_SIZE)
                    old_protocol.datagram_received(data, addr)
            old_transport.close()
            await old_protocol.closed

    async def _stop(self) -> None:
        if self._transport is not None and self._protocol is not None:
            self._transport.close()
            await self._protocol.closed
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._getter.close()


def heartbeat_source(addr: Any) -> str:
    """Return the source IP string of a ``recvfrom``-style address."""
    return str(addr[0]) if isinstance(addr, tuple) and addr else str(addr)


@contextlib.asynccontextmanager
async def serve(
    key: KeyRing,
    ip: str = "127.0.0.1",
    port: int = 5555,
    *,
    health_handler: AsyncHandler | None = None,
    stats_handler: AsyncHandler | None = None,
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
    **getter_options: Any,
) -> AsyncIterator[Server]:
    """Receive heartbeats on ip:port under the running event loop, inside an ``async with``.

    ``health_handler`` and ``stats_handler`` are called as
    ``handler(heartbeat, srcaddr)`` (plain or ``async def``), one at a time and
    in arrival order: a slow handler delays later heartbeats, never reorders
    them.  Heartbeats waiting for them hold at most ``max_queued_bytes``
    (estimated by :func:`estimated_size`; 32 MiB by default); beyond it the
    oldest are dropped and counted in ``queue_dropped``, with a rate-limited
    warning.  ``getter_options`` are those of
    :class:`~amphora_heartbeat.getter.UDPStatusGetter` (``rcvbuf``,
    ``max_decompressed``, ``limits``).  Every socket the server opened is
    closed when the block is left; heartbeats not yet handled are dropped.

    :raises OSError: the address cannot be resolved or bound.
    :raises ValueError: ``max_queued_bytes`` is not a positive int.
    """
    getter_options.pop("timeout", None)  # asyncio waits; the socket never blocks
    getter = _Getter(key, ip, port, timeout=0, **getter_options)
    try:
        server = Server(getter, health_handler, stats_handler, max_queued_bytes=max_queued_bytes)
    except BaseException:
        getter.close()
        raise
    try:
        await server._start()
        yield server
    finally:
        await server._stop()
