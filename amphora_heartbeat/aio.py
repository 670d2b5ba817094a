"""Receive heartbeats under asyncio: ``async with aio.serve(...) as server``.

The server runs the getter's own socket-free step
(:meth:`~amphora_heartbeat.getter.UDPStatusGetter.handle_datagram`) under an
asyncio datagram transport, so verification, parsing, counters and the
rejection log are exactly those of :class:`~amphora_heartbeat.getter.UDPStatusGetter`.
Handlers may be plain functions or coroutine functions; they are called one
at a time, in arrival order, by one task.
"""

from __future__ import annotations

import asyncio
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
from .models import Heartbeat

__all__ = ["AsyncHandler", "Server", "serve"]

logger = logging.getLogger("amphora_heartbeat.aio")

#: A handler: a plain function or a coroutine function of ``(heartbeat, srcaddr)``.
#: (A coroutine function returns an awaitable, which the server awaits.)
AsyncHandler = Callable[[Heartbeat, str], object]

_RECV_SIZE = 65536


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
        self.server._receive(self.binding, data, addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("heartbeat socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class Server:
    """A running asyncio heartbeat receiver; made by :func:`serve`, not directly."""

    def __init__(
        self,
        getter: UDPStatusGetter,
        health_handler: AsyncHandler | None,
        stats_handler: AsyncHandler | None,
    ) -> None:
        self._getter = getter
        self._handlers = tuple(h for h in (health_handler, stats_handler) if h is not None)
        self._queue: asyncio.Queue[tuple[Heartbeat, str]] = asyncio.Queue()
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
        """A snapshot of the counters, as on the getter."""
        return self._getter.counters

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
        try:
            heartbeat = self._getter._handle(binding.unwrapper, data, addr, time.time())
        except HeartbeatError:
            return
        self._queue.put_nowait((heartbeat, heartbeat_source(addr)))

    async def _work(self) -> None:
        while True:
            heartbeat, srcaddr = await self._queue.get()
            for handler in self._handlers:
                try:
                    result = handler(heartbeat, srcaddr)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    self._getter._handler_errors += 1
                    logger.exception(
                        "%s failed for amphora %s",
                        getattr(handler, "__name__", "handler"),
                        heartbeat.amphora_id,
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
    **getter_options: Any,
) -> AsyncIterator[Server]:
    """Receive heartbeats on ip:port under the running event loop, inside an ``async with``.

    ``health_handler`` and ``stats_handler`` are called as
    ``handler(heartbeat, srcaddr)`` (plain or ``async def``), one at a time and
    in arrival order: a slow handler delays later heartbeats, never reorders
    them.  ``getter_options`` are those of
    :class:`~amphora_heartbeat.getter.UDPStatusGetter` (``rcvbuf``,
    ``max_decompressed``, ``limits``).  Every socket the server opened is
    closed when the block is left; heartbeats not yet handled are dropped.

    :raises OSError: the address cannot be resolved or bound.
    """
    getter_options.pop("timeout", None)  # asyncio waits; the socket never blocks
    getter = _Getter(key, ip, port, timeout=0, **getter_options)
    server = Server(getter, health_handler, stats_handler)
    try:
        await server._start()
        yield server
    finally:
        await server._stop()
