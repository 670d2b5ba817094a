"""Tests for amphora_heartbeat.getter: real loopback sockets, readiness waits, no sleeps."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import threading
import time
import zlib
from collections.abc import Callable

import pytest
from _net import DEADLINE, HOSTS, needs_ipv6

from amphora_heartbeat import Codec, Digest, Heartbeat, HeartbeatError, Limits
from amphora_heartbeat.envelope import get_hmac, wrap_envelope
from amphora_heartbeat.errors import REASONS, InvalidHMACError
from amphora_heartbeat.getter import UDPStatusGetter, normalize_host
from amphora_heartbeat.sender import UDPStatusSender, format_address
from amphora_heartbeat.testing import build_message


def wait_for(predicate: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    """Poll ``predicate`` until it holds, failing after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.001)


def drain(getter: UDPStatusGetter, count: int) -> list[Heartbeat]:
    """Receive until ``count`` datagrams were counted; return the accepted heartbeats."""
    got: list[Heartbeat] = []
    end = time.monotonic() + DEADLINE
    while getter.counters["received"] < count:
        if time.monotonic() > end:
            pytest.fail(f"only {getter.counters['received']} of {count} datagrams arrived")
        with contextlib.suppress(TimeoutError, HeartbeatError):
            got.append(getter.dorecv()[0])
    return got


def open_fds() -> int:
    """Count this process's open file descriptors."""
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(params=HOSTS)
def host(request: pytest.FixtureRequest) -> str:
    """Each loopback address the host has."""
    return str(request.param)


@pytest.mark.parametrize("version", [0, 1, 2, 3])
@pytest.mark.parametrize("codec", list(Codec))
@pytest.mark.parametrize("digest", list(Digest))
def test_sender_to_getter_every_version_codec_trailer(
    host: str, version: int, codec: Codec, digest: Digest
) -> None:
    """A sent heartbeat of each version, codec and trailer arrives parsed, stamped and counted."""
    message = build_message(version=version, seq=7, listeners=2, pools=2, members=3)
    with (
        UDPStatusGetter("key", host, 0, timeout=DEADLINE) as getter,
        UDPStatusSender("key", [format_address(getter.address)], codec=codec, digest=digest) as s,
    ):
        before = time.time()
        assert s.dosend(message)
        heartbeat, srcaddr = getter.dorecv()
    assert heartbeat == Heartbeat.from_dict(message)
    assert heartbeat.recv_time is not None
    assert heartbeat.recv_time >= before
    assert srcaddr == host
    assert getter.counters["accepted"] == 1
    assert getter.counters["received"] == 1


def test_address_is_bound_address_with_port_resolved(host: str) -> None:
    """Port 0 binds an ephemeral port and .address reports it as an int."""
    with UDPStatusGetter("k", host, 0) as getter:
        bound_host, port = getter.address
        assert bound_host == host
        assert isinstance(port, int)
        assert port > 0


@pytest.mark.parametrize("timeout", [0, 0.01])
def test_dorecv_times_out_with_timeout_error(timeout: float) -> None:
    """Nothing to read raises TimeoutError, never BlockingIOError, also with timeout 0."""
    with UDPStatusGetter("k", "127.0.0.1", 0, timeout=timeout) as getter:
        with pytest.raises(TimeoutError) as info:
            getter.dorecv()
        assert not isinstance(info.value, BlockingIOError)
        assert getter.check() is None


def test_dorecv_raises_typed_error_on_bad_packet() -> None:
    """A bad datagram raises its HeartbeatError from dorecv and is counted under its reason."""
    with (
        UDPStatusGetter("k", "127.0.0.1", 0, timeout=DEADLINE) as getter,
        UDPStatusSender("other", [format_address(getter.address)]) as sender,
    ):
        sender.dosend(build_message())
        with pytest.raises(InvalidHMACError):
            getter.dorecv()
    assert getter.counters["rejected.invalid_hmac"] == 1
    assert getter.counters["received"] == 1


def _bad_packets(key: str) -> dict[str, bytes]:
    """One datagram per rejection reason, for a getter whose cap is 4096 bytes."""

    def signed(payload: bytes) -> bytes:
        return payload + get_hmac(payload, key)

    return {
        "too_short": b"short",
        "invalid_hmac": wrap_envelope(build_message(), "wrong key"),
        "not_decompressible": signed(b"\x78\x9c this is no zlib stream"),
        "too_large": signed(zlib.compress(b" " * 10_000)),
        "not_json": signed(zlib.compress(b"{not json")),
        "not_object": signed(zlib.compress(b"[1, 2]")),
        "malformed": wrap_envelope({"seq": 1, "listeners": {}}, key),
        "bad_id": wrap_envelope({"id": "amp\u0000", "listeners": {}}, key),
    }


def test_bad_packets_interleaved_with_good_all_counted(host: str) -> None:
    """Every good heartbeat among bad ones arrives; every bad one is counted under its reason."""
    bad = _bad_packets("key")
    assert sorted(bad) == sorted(REASONS)
    with (
        UDPStatusGetter("key", host, 0, timeout=0.5, max_decompressed=4096) as getter,
        UDPStatusSender("key", [format_address(getter.address)]) as sender,
    ):
        sent = 0
        for round_ in range(3):
            for i, packet in enumerate(bad.values()):
                sender.dosend(build_message(seq=round_ * 100 + i))
                sender.send_envelope(packet)
                sent += 2
        got = drain(getter, sent)
    kinds = len(bad)
    assert sorted(h.seq for h in got) == sorted(r * 100 + i for r in range(3) for i in range(kinds))
    counters = getter.counters
    assert counters["accepted"] == 3 * kinds
    for reason in REASONS:
        assert counters[f"rejected.{reason}"] == 3, reason
    assert counters["received"] == sent


def test_check_survives_raising_handler(caplog: pytest.LogCaptureFixture) -> None:
    """A handler that raises is logged with its traceback and counted; check() goes on."""
    seen: list[int] = []

    def broken(heartbeat: Heartbeat, srcaddr: str) -> None:
        raise RuntimeError("handler bug")

    def stats(heartbeat: Heartbeat, srcaddr: str) -> None:
        seen.append(heartbeat.seq)

    with (
        UDPStatusGetter(
            "k", "127.0.0.1", 0, timeout=DEADLINE, health_handler=broken, stats_handler=stats
        ) as getter,
        UDPStatusSender("k", [format_address(getter.address)]) as sender,
        caplog.at_level(logging.ERROR, logger="amphora_heartbeat"),
    ):
        for seq in range(3):
            sender.dosend(build_message(seq=seq))
        results = [getter.check() for _ in range(3)]
    assert [h.seq for h in results if h is not None] == [0, 1, 2]
    assert seen == [0, 1, 2]
    assert getter.counters["handler_errors"] == 3
    assert any(r.exc_info and "handler bug" in str(r.exc_info[1]) for r in caplog.records)


def test_a_failing_handler_logs_a_few_tracebacks_not_one_per_heartbeat(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler failing on every heartbeat is counted each time but logged 5 times per 10 s."""

    def broken(heartbeat: Heartbeat, srcaddr: str) -> None:
        raise RuntimeError("handler bug")

    total = 200
    with (
        UDPStatusGetter("k", "127.0.0.1", 0, timeout=DEADLINE, health_handler=broken) as getter,
        UDPStatusSender("k", [format_address(getter.address)]) as sender,
        caplog.at_level(logging.ERROR, logger="amphora_heartbeat"),
    ):
        started = time.monotonic()
        for seq in range(total):
            sender.dosend(build_message(seq=seq))
            assert getter.check() is not None
        windows = 1 + int((time.monotonic() - started) // 10)
    assert getter.counters["handler_errors"] == total
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert 5 <= len(tracebacks) <= 5 * windows
    assert all("handler bug" in str(r.exc_info[1]) for r in tracebacks if r.exc_info)


def test_subclass_overrides_update_hooks() -> None:
    """update_health and update_stats may be overridden instead of passing handlers."""
    calls: list[tuple[str, str, int]] = []

    class Getter(UDPStatusGetter):
        def update_health(self, heartbeat: Heartbeat, srcaddr: str) -> None:
            calls.append(("health", srcaddr, heartbeat.seq))

        def update_stats(self, heartbeat: Heartbeat, srcaddr: str) -> None:
            calls.append(("stats", srcaddr, heartbeat.seq))

    with (
        Getter("k", "127.0.0.1", 0, timeout=DEADLINE) as getter,
        UDPStatusSender("k", [format_address(getter.address)]) as sender,
    ):
        sender.dosend(build_message(seq=5))
        assert getter.check() is not None
    assert calls == [("health", "127.0.0.1", 5), ("stats", "127.0.0.1", 5)]


def test_handle_datagram_is_the_socket_free_step() -> None:
    """handle_datagram parses a captured datagram with a given receive time and counts it."""
    datagram = wrap_envelope(build_message(seq=3), "k")
    with UDPStatusGetter("k", "127.0.0.1", 0) as getter:
        heartbeat = getter.handle_datagram(datagram, ("192.0.2.1", 5555), now=1234.5)
        with pytest.raises(HeartbeatError):
            getter.handle_datagram(b"x", ("192.0.2.1", 5555), now=1235.0)
    assert heartbeat.seq == 3
    assert heartbeat.recv_time == 1234.5
    assert getter.counters["accepted"] == 1
    assert getter.counters["rejected.too_short"] == 1


def test_limits_apply() -> None:
    """A heartbeat beyond the getter's limits is refused as malformed."""
    datagram = wrap_envelope(build_message(listeners=3), "k")
    with (
        UDPStatusGetter("k", "127.0.0.1", 0, limits=Limits(max_listeners=2)) as getter,
        pytest.raises(HeartbeatError) as info,
    ):
        getter.handle_datagram(datagram, ("127.0.0.1", 1), now=0.0)
    assert info.value.reason == "malformed"


def test_rejections_logged_rate_limited_without_key(caplog: pytest.LogCaptureFixture) -> None:
    """A flood of bad packets logs a few warnings with source and reason, never the key."""
    key = "s3cret-key-value"
    datagram = wrap_envelope(build_message(), "not-the-key")
    with (
        UDPStatusGetter(key, "127.0.0.1", 0) as getter,
        caplog.at_level(logging.DEBUG, logger="amphora_heartbeat"),
    ):
        for i in range(200):
            with pytest.raises(InvalidHMACError):
                getter.handle_datagram(datagram, ("192.0.2.9", 1), now=100.0 + i * 0.001)
        with pytest.raises(InvalidHMACError):
            getter.handle_datagram(datagram, ("192.0.2.9", 1), now=200.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 7  # 5 in the first window, the count left out, 1 more
    assert "192.0.2.9" in warnings[0]
    assert "invalid_hmac" in warnings[0]
    assert warnings[5] == "195 more invalid_hmac lines not logged (at most 5 per 10 s)"
    assert all(key not in r.getMessage() for r in caplog.records)
    assert getter.counters["rejected.invalid_hmac"] == 201


def test_key_ring_rotation_loses_no_heartbeat(host: str) -> None:
    """With a key ring, heartbeats signed with the old and the new key both arrive."""
    with UDPStatusGetter(["old", "new"], host, 0, timeout=0.5) as getter:
        target = [format_address(getter.address)]
        with UDPStatusSender("old", target) as old, UDPStatusSender("new", target) as new:
            for seq in range(40):
                (old if seq % 2 else new).dosend(build_message(seq=seq))
            got = drain(getter, 40)
            assert sorted(h.seq for h in got) == list(range(40))
            getter.update(["new"])
            old.dosend(build_message(seq=99))
            new.dosend(build_message(seq=100))
            got = drain(getter, 42)
    assert [h.seq for h in got] == [100]
    assert getter.counters["rejected.invalid_hmac"] == 1
    assert getter.counters["accepted"] == 41


def _in_syscall_on(thread: threading.Thread, fd: int) -> bool | None:
    """Return whether ``thread`` is blocked in a system call on ``fd``; None if unknowable.

    Linux shows a blocked thread's system call and its arguments in
    /proc/self/task/<tid>/syscall ("<number> <arg0> ..."; "running" otherwise):
    a readiness signal that needs no sleep.
    """
    try:
        with open(f"/proc/self/task/{thread.native_id}/syscall", encoding="ascii") as f:
            fields = f.read().split()
    except OSError:
        return None
    return len(fields) > 1 and fields[0].isdigit() and int(fields[1], 16) == fd


def test_a_key_rotated_while_dorecv_waits_judges_the_next_datagram() -> None:
    """A thread already blocked in dorecv() judges the datagram with the key ring in force then."""
    getter = UDPStatusGetter("k0", "127.0.0.1", 0, timeout=None)
    outcome: list[object] = []

    def receive() -> None:
        try:
            outcome.append(getter.dorecv()[0])
        except BaseException as exc:  # reported below
            outcome.append(exc)

    thread = threading.Thread(target=receive)
    try:
        thread.start()
        fd = getter.fileno()
        if _in_syscall_on(threading.current_thread(), -1) is None:
            pytest.skip("this system does not show a thread's system call in /proc")
        wait_for(lambda: bool(_in_syscall_on(thread, fd)), "dorecv to block in recvfrom")
        getter.update(["k1", "k0"])  # key only: the same socket, no wake-up
        assert getter.fileno() == fd
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.sendto(wrap_envelope(build_message(seq=42), "k1"), getter.address)
        thread.join(DEADLINE)
        assert not thread.is_alive()
    finally:
        getter.close()
        thread.join(DEADLINE)
    assert len(outcome) == 1
    assert isinstance(outcome[0], Heartbeat), outcome[0]
    assert outcome[0].seq == 42
    assert getter.counters["accepted"] == 1
    assert getter.counters["rejected.invalid_hmac"] == 0


def test_update_key_only_keeps_socket() -> None:
    """update() to the current address changes only the key; the socket stays."""
    with UDPStatusGetter("k1", "127.0.0.1", 0) as getter:
        fd, address = getter.fileno(), getter.address
        getter.update("k2", "127.0.0.1", address[1])
        getter.update("k3")
        assert getter.fileno() == fd
        assert getter.address == address
        datagram = wrap_envelope(build_message(), "k3")
        assert getter.handle_datagram(datagram, ("127.0.0.1", 1), now=0.0).amphora_id


def test_a_key_dropped_while_a_reader_waits_is_refused() -> None:
    """A key-only update() during a blocked dorecv() applies to the datagram it returns."""
    with UDPStatusGetter(["new", "old"], "127.0.0.1", 0, timeout=DEADLINE) as getter:
        outcome: list[object] = []

        def receive() -> None:
            try:
                outcome.append(getter.dorecv()[0])
            except HeartbeatError as exc:
                outcome.append(exc)

        reader = threading.Thread(target=receive)
        reader.start()
        deadline = time.monotonic() + DEADLINE
        while not getter._receiving and time.monotonic() < deadline:
            time.sleep(0.001)
        getter.update("new")  # the reader is waiting with the old ring
        with UDPStatusSender("old", [format_address(getter.address)]) as sender:
            sender.dosend(build_message())
        reader.join(DEADLINE)
    assert len(outcome) == 1
    assert isinstance(outcome[0], InvalidHMACError)


def test_update_to_busy_port_fails_and_keeps_serving() -> None:
    """A rebind that fails raises OSError naming ip:port; old socket and key keep serving."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy,
        UDPStatusGetter("k1", "127.0.0.1", 0, timeout=DEADLINE) as getter,
    ):
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        address = getter.address
        with pytest.raises(OSError, match=f"127.0.0.1:{port}") as info:
            getter.update("k2", port=port)
        assert info.value.errno == errno.EADDRINUSE
        assert getter.address == address
        with UDPStatusSender("k1", [format_address(address)]) as sender:
            sender.dosend(build_message(seq=1))
            assert getter.dorecv()[0].seq == 1


def test_update_rejects_bad_port() -> None:
    """A port out of range is the caller's mistake: ValueError."""
    with UDPStatusGetter("k", "127.0.0.1", 0) as getter, pytest.raises(ValueError, match="port"):
        getter.update(None, port=70000)


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_update_mid_stream_from_another_thread(host: str, timeout: float | None) -> None:
    """update() to a new port and key while check() loops elsewhere loses nothing sent before."""
    total = 400
    got: list[int] = []
    getter = UDPStatusGetter(
        "k1", host, 0, timeout=timeout, health_handler=lambda hb, src: got.append(hb.seq)
    )
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            while True:
                getter.check()
        except OSError:
            if not getter.closed:
                raise
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    receiver = threading.Thread(target=loop)
    receiver.start()
    switch = threading.Lock()
    senders = [UDPStatusSender("k1", [format_address(getter.address)])]

    def send_all() -> None:
        for seq in range(total):
            # Back-pressure keeps the socket buffer from overflowing (a kernel drop).
            wait_for(lambda seq=seq: seq - len(got) < 50, "the receiver to keep up")
            with switch:
                senders[-1].dosend(build_message(seq=seq))

    sender_thread = threading.Thread(target=send_all)
    sender_thread.start()
    try:
        old_port = getter.address[1]
        for n, key in enumerate(["k2", "k3", "k4"]):
            wait_for(lambda n=n: len(got) >= (n + 1) * 80, "heartbeats before the update")
            with switch:
                getter.update(key, port=0)
                senders.append(UDPStatusSender(key, [format_address(getter.address)]))
        assert getter.address[1] != old_port
        sender_thread.join(DEADLINE)
        wait_for(lambda: len(got) == total, "every heartbeat")
    finally:
        getter.close()
        receiver.join(DEADLINE)
        for sender in senders:
            sender.close()
    assert not receiver.is_alive()
    assert not errors
    assert sorted(got) == list(range(total))
    assert getter.counters["accepted"] == total
    assert getter.counters["received"] == total


def test_close_wakes_a_blocked_receiver() -> None:
    """close() from another thread ends a dorecv() waiting without a timeout, with OSError."""
    getter = UDPStatusGetter("k", "127.0.0.1", 0, timeout=None)
    outcome: list[BaseException] = []
    started = threading.Event()

    def receive() -> None:
        started.set()
        try:
            getter.dorecv()
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=receive)
    thread.start()
    started.wait(DEADLINE)
    getter.close()
    thread.join(DEADLINE)
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], OSError)
    assert getter.counters["received"] == 0


def test_closed_getter_refuses_work_but_keeps_counters() -> None:
    """After close(), dorecv and update fail, counters still read, close is idempotent."""
    getter = UDPStatusGetter("k", "127.0.0.1", 0)
    getter.handle_datagram(wrap_envelope(build_message(), "k"), ("127.0.0.1", 1), now=0.0)
    getter.close()
    getter.close()
    assert getter.closed
    with pytest.raises(OSError, match="closed"):
        getter.dorecv()
    with pytest.raises(OSError, match="closed"):
        getter.check()
    with pytest.raises(ValueError, match="closed"):
        getter.update("k2")
    assert getter.counters["accepted"] == 1


def test_counters_cumulative_across_updates() -> None:
    """Counters keep counting across update() calls."""
    datagram = wrap_envelope(build_message(), "k")
    with UDPStatusGetter("k", "127.0.0.1", 0) as getter:
        getter.handle_datagram(datagram, ("127.0.0.1", 1), now=0.0)
        getter.update("k", port=0)
        getter.handle_datagram(datagram, ("127.0.0.1", 1), now=0.0)
    assert getter.counters["accepted"] == 2
    assert set(getter.counters) == {
        "received",
        "received_bytes",
        "accepted",
        "handler_errors",
        *(f"rejected.{r}" for r in REASONS),
    }


def test_rcvbuf_applies_to_every_socket() -> None:
    """rcvbuf sets SO_RCVBUF on the first socket and on every socket update() binds."""

    def rcvbuf(getter: UDPStatusGetter) -> int:
        with socket.socket(fileno=os.dup(getter.fileno())) as sock:
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    with UDPStatusGetter("k", "127.0.0.1", 0, rcvbuf=65536) as getter:
        first = rcvbuf(getter)
        getter.update(None, port=0)
        assert rcvbuf(getter) == first
    with UDPStatusGetter("k", "127.0.0.1", 0, rcvbuf=8192) as small:
        assert rcvbuf(small) < first


def test_no_fd_leak_after_updates_and_close(host: str) -> None:
    """Many update() calls and close() leave no file descriptor open."""
    before = open_fds()
    getter = UDPStatusGetter("k", host, 0)
    for i in range(100):
        getter.update(f"k{i}", port=0)
    getter.close()
    with UDPStatusGetter("k", host, 0):
        pass
    assert open_fds() == before


def test_selectors_loop(host: str) -> None:
    """A selectors-driven loop receives every heartbeat and re-registers after update()."""
    received: list[int] = []
    with (
        UDPStatusGetter(
            "k", host, 0, timeout=0, health_handler=lambda hb, src: received.append(hb.seq)
        ) as getter,
        selectors.DefaultSelector() as selector,
        UDPStatusSender("k", [format_address(getter.address)]) as sender,
    ):
        fd = getter.fileno()
        selector.register(fd, selectors.EVENT_READ)
        for seq in range(10):
            sender.dosend(build_message(seq=seq))
        end = time.monotonic() + DEADLINE
        while len(received) < 20 and time.monotonic() < end:
            for _ in selector.select(timeout=0.5):
                while getter.check() is not None:
                    pass
            if len(received) == 10 and getter.fileno() == fd:
                getter.update(None, port=0)
                sender.update_controllers([format_address(getter.address)])
                for seq in range(10, 20):
                    sender.dosend(build_message(seq=seq))
            if getter.fileno() != fd:
                selector.unregister(fd)
                fd = getter.fileno()
                selector.register(fd, selectors.EVENT_READ)
    assert received == list(range(20))


def test_repr_never_shows_key() -> None:
    """The getter's repr names its address, never its key."""
    with UDPStatusGetter("hidden-key", "127.0.0.1", 0) as getter:
        text = repr(getter)
    assert "hidden-key" not in text
    assert "127.0.0.1" in text


def test_constructor_checks_timeout() -> None:
    """A negative timeout is the caller's mistake; the timeout is readable."""
    with pytest.raises(ValueError, match="timeout"):
        UDPStatusGetter("k", "127.0.0.1", 0, timeout=-1)
    with UDPStatusGetter("k", "127.0.0.1", 0, timeout=0.25) as getter:
        assert getter.timeout == 0.25


def test_check_without_handlers_and_odd_source() -> None:
    """Without handlers check() just returns heartbeats; a replay may name its source freely."""
    with (
        UDPStatusGetter("k", "127.0.0.1", 0, timeout=DEADLINE) as getter,
        UDPStatusSender("k", [format_address(getter.address)]) as sender,
    ):
        sender.dosend(build_message(seq=1))
        heartbeat = getter.check()
        assert heartbeat is not None
        with pytest.raises(HeartbeatError):
            getter.handle_datagram(b"", "capture.pcap", now=0.0)
    assert heartbeat.seq == 1


# --- source addresses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("::FFFF:7f00:1", "127.0.0.1"),
        ("::1", "::1"),
        ("FD00:0:0::0:1", "fd00::1"),
        ("fe80::1%eth0", "fe80::1%eth0"),
    ],
)
def test_normalize_host(address: str, expected: str) -> None:
    """IPv4-mapped IPv6 becomes IPv4; IPv6 is compressed and lower case."""
    assert normalize_host(address) == expected
    assert normalize_host(expected) == expected


@pytest.mark.parametrize("bad", ["", "example.com", "127.0.0.1:5555", "[::1]", "1.2.3.256"])
def test_normalize_host_refuses_what_is_not_an_address(bad: str) -> None:
    """Anything but an IP address is a ValueError; anything but a string, a TypeError."""
    with pytest.raises(ValueError, match="does not appear to be"):
        normalize_host(bad)
    with pytest.raises(TypeError):
        normalize_host(2130706433)  # type: ignore[arg-type]


@needs_ipv6
def test_an_ipv6_socket_reports_ipv4_senders_mapped_and_normalize_host_undoes_it() -> None:
    """An IPv6 socket sees 127.0.0.1 as ::ffff:127.0.0.1; normalize_host maps it back."""
    with UDPStatusGetter("k", "::ffff:127.0.0.1", 0, timeout=DEADLINE) as getter:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.sendto(wrap_envelope(build_message(), "k"), ("127.0.0.1", getter.address[1]))
        _, srcaddr = getter.dorecv()
    assert srcaddr == "::ffff:127.0.0.1"
    assert normalize_host(srcaddr) == "127.0.0.1"
