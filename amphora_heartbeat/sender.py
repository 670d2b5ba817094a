"""Send heartbeats over UDP as an amphora's agent does: :class:`UDPStatusSender`.

Each heartbeat goes to ONE controller, in round-robin order over the
controller list, so with N controllers each receives 1/N of an amphora's
heartbeats.  Send errors (a network not up yet while booting) never raise:
they are counted, as the agent ignores them.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from .envelope import Codec, Digest, Key, wrap_envelope
from .models import Heartbeat

__all__ = ["UDPStatusSender", "format_address", "parse_address"]

logger = logging.getLogger("amphora_heartbeat.sender")


def parse_address(text: str) -> tuple[str, int]:
    """Split ``"ip:port"`` or ``"[ipv6]:port"`` into ``(ip, port)``.

    A bare IPv6 address with a port (``"fd00::1:5555"``) is split at the last
    colon, as Octavia does.

    :raises ValueError: no port, a port out of range, or brackets that do not close.
    """
    if not isinstance(text, str):
        raise TypeError(f"an address must be a string like 'ip:port', not {type(text).__name__}")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r} is not '[ipv6]:port'")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r} has no port; expected 'ip:port' or '[ipv6]:port'")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} is not 'ip:port' with a port from 0 to 65535")
    return host, int(port_text)


def format_address(address: tuple[str, int] | Sequence[Any]) -> str:
    """Write ``(host, port)`` as ``"host:port"``, or ``"[host]:port"`` for IPv6."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _controller(text: str) -> tuple[socket.AddressFamily, Any]:
    host, port = parse_address(text)
    try:
        # Numeric only: a controller list names addresses, and a name lookup
        # could block the agent's loop.
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST)
    except socket.gaierror:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


class UDPStatusSender:
    """Wrap and send heartbeats to controllers over UDP, one controller per heartbeat.

    :param key: the heartbeat key (str, UTF-8 encoded, or bytes).
    :param controllers: a non-empty sequence of ``"ip:port"`` / ``"[ipv6]:port"``
        strings (Octavia's ``controller_ip_port_list``).
    :param codec: payload compression; :attr:`Codec.ZLIB` is what every deployed
        Octavia controller accepts.
    :param digest: trailer form; :attr:`Digest.HEX` likewise.
    :param boot: when the agent started, in whole seconds since the epoch, which
        :meth:`next_heartbeat` writes as the message's ``boot`` so that a
        receiver can tell a restart from a replay
        (:func:`~amphora_heartbeat.tracker.judge_replay`); ``"now"`` (the
        default) is the time the sender is made, None writes no ``boot``
        (Octavia's own message shape).  Octavia's receiver ignores the key.  It
        must grow from one start of the agent to the next: pass a value kept on
        disk if the clock may be set back across a restart.
    :raises ValueError: an empty list or an address that is not ``ip:port``.
    """

    def __init__(
        self,
        key: Key,
        controllers: Sequence[str],
        *,
        codec: Codec = Codec.ZLIB,
        digest: Digest = Digest.HEX,
        boot: int | Literal["now"] | None = "now",
    ) -> None:
        if not isinstance(key, (str, bytes)):
            raise TypeError(f"a heartbeat key must be str or bytes, not {type(key).__name__}")
        self._key = key
        self._codec = codec
        self._digest = digest
        self._lock = threading.Lock()
        self._sockets: dict[socket.AddressFamily, socket.socket] = {}
        self._targets: tuple[tuple[socket.AddressFamily, Any], ...] = ()
        self._next = 0
        self._sent = 0
        self._send_errors = 0
        self._closed = False
        #: The seq :meth:`next_heartbeat` writes next (the agent counts from 0).
        self.seq = 0
        if boot == "now":
            boot = int(time.time())
        elif boot is not None and (type(boot) is not int or boot < 0):
            raise ValueError(f"boot must be whole seconds since the epoch, not {boot!r}")
        #: The ``boot`` :meth:`next_heartbeat` writes (None: none).
        self.boot: int | None = boot
        self.update_controllers(controllers)

    def __repr__(self) -> str:
        return f"<UDPStatusSender to {len(self._targets)} controller(s)>"

    @property
    def controllers(self) -> tuple[str, ...]:
        """The controller addresses, as ``"ip:port"`` / ``"[ipv6]:port"`` strings."""
        return tuple(format_address(sockaddr) for _, sockaddr in self._targets)

    def update_controllers(self, controllers: Sequence[str]) -> None:
        """Replace the controller list; the round robin starts again at the first.

        :raises ValueError: an empty list or an address that is not ``ip:port``.
        """
        if isinstance(controllers, str):
            raise TypeError("controllers must be a sequence of 'ip:port' strings, not one string")
        targets = tuple(_controller(c) for c in controllers)
        if not targets:
            raise ValueError("a sender needs at least one controller")
        with self._lock:
            self._targets = targets
            self._next = 0

    def next_heartbeat(self, message: Mapping[str, Any] | Heartbeat) -> dict[str, Any]:
        """Return a copy of ``message`` carrying the next seq and the sender's boot; count it.

        Seqs go 0, 1, 2, ... from :attr:`seq`, as the agent numbers its
        heartbeats from its start; ``boot`` is :attr:`boot` (left out when None).
        """
        out = message.to_dict() if isinstance(message, Heartbeat) else dict(message)
        with self._lock:
            out["seq"] = self.seq
            self.seq += 1
        if self.boot is None:
            out.pop("boot", None)
        else:
            out["boot"] = self.boot
        return out

    def dosend(self, heartbeat: Mapping[str, Any] | Heartbeat) -> bool:
        """Wrap a heartbeat (a message mapping or a :class:`Heartbeat`) and send it.

        Return whether the send succeeded; a failure counts in
        ``counters["send_errors"]`` and never raises ``OSError``.
        """
        return self.send_envelope(
            wrap_envelope(heartbeat, self._key, codec=self._codec, digest=self._digest)
        )

    def send_envelope(self, datagram: bytes) -> bool:
        """Send an already wrapped datagram to the next controller; return whether it went.

        For load generators that build their packets ahead of time.
        """
        with self._lock:
            if self._closed:
                raise ValueError("send on a closed UDPStatusSender")
            family, sockaddr = self._targets[self._next]
            self._next = (self._next + 1) % len(self._targets)
            sock = self._sockets.get(family)
            try:
                if sock is None:
                    sock = self._sockets[family] = socket.socket(family, socket.SOCK_DGRAM)
                sock.sendto(datagram, sockaddr)
            except OSError as exc:
                self._send_errors += 1
                logger.debug("heartbeat to %s not sent: %s", format_address(sockaddr), exc)
                return False
            self._sent += 1
            return True

    @property
    def counters(self) -> Mapping[str, int]:
        """A snapshot: ``sent`` datagrams and ``send_errors``."""
        return {"sent": self._sent, "send_errors": self._send_errors}

    def close(self) -> None:
        """Close the sockets; sending afterwards is a ``ValueError``. Idempotent."""
        with self._lock:
            self._closed = True
            for sock in self._sockets.values():
                sock.close()
            self._sockets.clear()

    def __enter__(self) -> UDPStatusSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
