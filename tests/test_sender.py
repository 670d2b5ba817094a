"""Tests for amphora_heartbeat.sender: real loopback sockets, round robin, never OSError."""

from __future__ import annotations

import socket
import time

import pytest
from _net import DEADLINE, needs_ipv6

from amphora_heartbeat import Codec, Digest, Heartbeat
from amphora_heartbeat.envelope import Unwrapper
from amphora_heartbeat.getter import UDPStatusGetter
from amphora_heartbeat.sender import UDPStatusSender, format_address, parse_address
from amphora_heartbeat.testing import build_heartbeat, build_message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5555", ("127.0.0.1", 5555)),
        ("[::1]:5555", ("::1", 5555)),
        ("[fd00::1]:0", ("fd00::1", 0)),
        ("fd00::1:5555", ("fd00::1", 5555)),
        ("::1:65535", ("::1", 65535)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    """ip:port, [ipv6]:port and bare IPv6 split at the last colon all parse."""
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text", ["127.0.0.1", "127.0.0.1:", ":5555", "[::1]5555", "[::1", "1.2.3.4:99999", "h:p"]
)
def test_parse_address_rejects_nonsense(text: str) -> None:
    """Addresses without a valid port or with open brackets are ValueError."""
    with pytest.raises(ValueError, match=r"port|ipv6"):
        parse_address(text)


def test_format_address_round_trips() -> None:
    """format_address writes what parse_address reads, brackets for IPv6."""
    assert format_address(("::1", 5)) == "[::1]:5"
    assert format_address(("10.0.0.1", 5)) == "10.0.0.1:5"
    assert parse_address(format_address(("fd00::2", 7))) == ("fd00::2", 7)


def test_controllers_required_and_numeric() -> None:
    """An empty controller list, a bare string or a host name is refused up front."""
    with pytest.raises(ValueError, match="at least one"):
        UDPStatusSender("k", [])
    with pytest.raises(TypeError):
        UDPStatusSender("k", "127.0.0.1:5555")
    with pytest.raises(ValueError, match="not an IP address"):
        UDPStatusSender("k", ["controller.example:5555"])
    with pytest.raises(TypeError):
        UDPStatusSender(42, ["127.0.0.1:5555"])  # type: ignore[arg-type]


def test_round_robin_over_controllers() -> None:
    """Each heartbeat goes to one controller, in turn, as the agent sends them."""
    with (
        UDPStatusGetter("k", "127.0.0.1", 0, timeout=DEADLINE) as a,
        UDPStatusGetter("k", "127.0.0.1", 0, timeout=DEADLINE) as b,
        UDPStatusSender("k", [format_address(a.address), format_address(b.address)]) as sender,
    ):
        for seq in range(6):
            assert sender.dosend(build_message(seq=seq))
        got_a = [a.dorecv()[0].seq for _ in range(3)]
        got_b = [b.dorecv()[0].seq for _ in range(3)]
        assert sender.counters == {"sent": 6, "send_errors": 0}
    assert got_a == [0, 2, 4]
    assert got_b == [1, 3, 5]


@needs_ipv6
def test_mixed_ipv4_and_ipv6_controllers() -> None:
    """One sender reaches IPv4 and IPv6 controllers alike."""
    with (
        UDPStatusGetter("k", "127.0.0.1", 0, timeout=DEADLINE) as v4,
        UDPStatusGetter("k", "::1", 0, timeout=DEADLINE) as v6,
        UDPStatusSender("k", [format_address(v4.address), format_address(v6.address)]) as sender,
    ):
        assert sender.controllers == (format_address(v4.address), format_address(v6.address))
        sender.dosend(build_message(seq=1))
        sender.dosend(build_message(seq=2))
        assert v4.dorecv()[0].seq == 1
        assert v6.dorecv() == (Heartbeat.from_dict(build_message(seq=2)), "::1")


def test_update_controllers_at_run_time() -> None:
    """update_controllers redirects the next heartbeats."""
    with (
        UDPStatusGetter("k", "127.0.0.1", 0, timeout=DEADLINE) as a,
        UDPStatusGetter("k", "127.0.0.1", 0, timeout=DEADLINE) as b,
        UDPStatusSender("k", [format_address(a.address)]) as sender,
    ):
        sender.dosend(build_message(seq=1))
        sender.update_controllers([format_address(b.address)])
        sender.dosend(build_message(seq=2))
        assert a.dorecv()[0].seq == 1
        assert b.dorecv()[0].seq == 2
        with pytest.raises(ValueError, match="at least one"):
            sender.update_controllers([])
        assert sender.controllers == (format_address(b.address),)


@pytest.mark.parametrize("codec", list(Codec))
@pytest.mark.parametrize("digest", list(Digest))
def test_codec_and_digest_on_the_wire(codec: Codec, digest: Digest) -> None:
    """The sender wraps with the codec and trailer it was given."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw,
    ):
        raw.bind(("127.0.0.1", 0))
        raw.settimeout(DEADLINE)
        with UDPStatusSender(
            "k", [format_address(raw.getsockname())], codec=codec, digest=digest
        ) as sender:
            sender.dosend(build_heartbeat(seq=4))
        datagram = raw.recv(65536)
    unwrapped = Unwrapper("k").inspect(datagram)
    assert (unwrapped.codec, unwrapped.digest) == (codec, digest)
    assert unwrapped.message["seq"] == 4


def test_send_errors_are_counted_not_raised() -> None:
    """A send that fails (here: a datagram too large for UDP) is counted, never raised."""
    with UDPStatusSender("k", ["127.0.0.1:9"]) as sender:
        assert not sender.send_envelope(b"x" * 70_000)
        assert sender.counters == {"sent": 0, "send_errors": 1}


def test_next_heartbeat_counts_seq() -> None:
    """next_heartbeat stamps 0, 1, 2, ... and leaves the given message alone."""
    message = build_message(seq=99)
    with UDPStatusSender("k", ["127.0.0.1:9"]) as sender:
        seqs = [sender.next_heartbeat(message)["seq"] for _ in range(3)]
        from_model = sender.next_heartbeat(build_heartbeat(seq=50))
    assert seqs == [0, 1, 2]
    assert from_model["seq"] == 3
    assert message["seq"] == 99


def test_next_heartbeat_stamps_the_senders_boot() -> None:
    """next_heartbeat writes boot: the sender's start by default, a given value, or none."""
    before = int(time.time())
    with UDPStatusSender("k", ["127.0.0.1:9"]) as sender:
        after = int(time.time())
        assert sender.boot is not None
        assert before <= sender.boot <= after
        assert sender.next_heartbeat(build_message())["boot"] == sender.boot
    with UDPStatusSender("k", ["127.0.0.1:9"], boot=1_700_000_000) as sender:
        stamped = sender.next_heartbeat(build_heartbeat())
        assert stamped["boot"] == 1_700_000_000
    with UDPStatusSender("k", ["127.0.0.1:9"], boot=None) as sender:
        plain = sender.next_heartbeat(dict(build_message(), boot=5))
        assert "boot" not in plain  # Octavia's own message shape


@pytest.mark.parametrize("bad", [-1, 1.5, "soon", True])
def test_bad_boot_is_a_value_error(bad: object) -> None:
    """A boot that is not whole non-negative seconds is the caller's mistake."""
    with pytest.raises(ValueError, match="boot"):
        UDPStatusSender("k", ["127.0.0.1:9"], boot=bad)  # type: ignore[arg-type]


def test_boot_travels_to_the_getter() -> None:
    """A heartbeat numbered by the sender arrives with its boot and seq, over a real socket."""
    with UDPStatusGetter("k", "127.0.0.1", 0, timeout=DEADLINE) as getter:
        with UDPStatusSender("k", [format_address(getter.address)], boot=1_700_000_123) as sender:
            sender.dosend(sender.next_heartbeat(build_message()))
            sender.dosend(sender.next_heartbeat(build_message()))
        got = [getter.dorecv()[0] for _ in range(2)]
    assert [(h.boot, h.seq) for h in got] == [(1_700_000_123, 0), (1_700_000_123, 1)]


def test_closed_sender_refuses_to_send() -> None:
    """Sending after close() is the caller's mistake: ValueError; close is idempotent."""
    sender = UDPStatusSender("k", ["127.0.0.1:9"])
    sender.close()
    sender.close()
    with pytest.raises(ValueError, match="closed"):
        sender.dosend(build_message())


def test_repr_never_shows_key() -> None:
    """The sender's repr does not show its key."""
    with UDPStatusSender("hidden-key", ["127.0.0.1:9"]) as sender:
        assert "hidden-key" not in repr(sender)
