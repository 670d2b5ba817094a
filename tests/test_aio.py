"""Tests for amphora_heartbeat.aio: the asyncio server on real loopback sockets."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

import pytest
from _net import DEADLINE, HOSTS

from amphora_heartbeat import Heartbeat, aio
from amphora_heartbeat.envelope import wrap_envelope
from amphora_heartbeat.sender import UDPStatusSender, format_address
from amphora_heartbeat.testing import build_message


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Yield to the loop until ``predicate`` holds, failing after the deadline."""
    end = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


def open_fds() -> int:
    """Count this process's open file descriptors."""
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("host", HOSTS)
def test_serve_receives_with_sync_and_async_handlers(host: str) -> None:
    """Heartbeats reach a plain and a coroutine handler, with the source IP, counted."""
    health: list[tuple[int, str]] = []
    stats: list[int] = []

    def on_health(heartbeat: Heartbeat, srcaddr: str) -> None:
        health.append((heartbeat.seq, srcaddr))

    async def on_stats(heartbeat: Heartbeat, srcaddr: str) -> None:
        await asyncio.sleep(0)
        stats.append(heartbeat.seq)

    async def main() -> None:
        async with aio.serve(
            "k", host, 0, health_handler=on_health, stats_handler=on_stats
        ) as server:
            assert server.address[1] > 0
            with UDPStatusSender("k", [format_address(server.address)]) as sender:
                for seq in range(5):
                    sender.dosend(build_message(seq=seq))
                sender.send_envelope(b"garbage")
                await until(lambda: len(stats) == 5, "five heartbeats")
                await until(lambda: server.counters["received"] == 6, "the bad datagram")
            assert server.counters["accepted"] == 5
            assert server.counters["rejected.too_short"] == 1

    asyncio.run(main())
    assert health == [(seq, host) for seq in range(5)]
    assert stats == list(range(5))


def test_slow_handler_keeps_arrival_order() -> None:
    """A slow coroutine handler delays later heartbeats but never reorders them."""
    order: list[int] = []
    active = 0
    overlap = False

    async def slow(heartbeat: Heartbeat, srcaddr: str) -> None:
        nonlocal active, overlap
        active += 1
        overlap = overlap or active > 1
        await asyncio.sleep(0.002 if heartbeat.seq % 2 else 0)
        order.append(heartbeat.seq)
        active -= 1

    async def main() -> None:
        async with aio.serve("k", "127.0.0.1", 0, health_handler=slow) as server:
            with UDPStatusSender("k", [format_address(server.address)]) as sender:
                for seq in range(20):
                    sender.dosend(build_message(seq=seq))
                await until(lambda: len(order) == 20, "every heartbeat")

    asyncio.run(main())
    assert order == list(range(20))
    assert not overlap


def test_handler_errors_are_counted_and_serving_goes_on() -> None:
    """A raising handler is logged and counted; later heartbeats still arrive."""
    seen: list[int] = []

    async def broken(heartbeat: Heartbeat, srcaddr: str) -> None:
        if heartbeat.seq == 0:
            raise RuntimeError("boom")
        seen.append(heartbeat.seq)

    async def main() -> dict[str, int]:
        async with aio.serve("k", "127.0.0.1", 0, health_handler=broken) as server:
            with UDPStatusSender("k", [format_address(server.address)]) as sender:
                sender.dosend(build_message(seq=0))
                sender.dosend(build_message(seq=1))
                await until(lambda: seen == [1], "the second heartbeat")
            return dict(server.counters)

    counters = asyncio.run(main())
    assert counters["handler_errors"] == 1


@pytest.mark.parametrize("host", HOSTS)
def test_update_rebinds_and_changes_key(host: str) -> None:
    """await update() moves to a new port and key; the old socket is closed when it returns."""
    seen: list[int] = []

    async def main() -> None:
        async with aio.serve(
            "k1", host, 0, health_handler=lambda hb, src: seen.append(hb.seq)
        ) as server:
            old = server.address
            with UDPStatusSender("k1", [format_address(old)]) as sender:
                for seq in range(10):
                    sender.dosend(build_message(seq=seq))
                # Queued, not yet read: update() must hand these over with the old key.
                await server.update("k2", port=0)
            assert server.address != old
            with socket.socket(
                socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM
            ) as probe:
                probe.bind(old)  # the old port is free again: its socket is closed
            with UDPStatusSender("k2", [format_address(server.address)]) as sender:
                for seq in range(10, 20):
                    sender.dosend(build_message(seq=seq))
                await until(lambda: len(seen) == 20, "every heartbeat")
            await server.update("k3")  # key only: same socket
            assert server.address[1] != old[1]
            datagram = wrap_envelope(build_message(seq=20), "k3")
            with socket.socket(
                socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM
            ) as raw:
                raw.sendto(datagram, server.address)
                await until(lambda: len(seen) == 21, "the heartbeat under the new key")
            assert server.counters["accepted"] == 21

    asyncio.run(main())
    assert sorted(seen) == list(range(21))


def test_update_failure_keeps_serving() -> None:
    """A failed rebind raises OSError and the server keeps its socket and key."""

    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
            busy.bind(("127.0.0.1", 0))
            seen: list[int] = []
            async with aio.serve(
                "k", "127.0.0.1", 0, health_handler=lambda hb, src: seen.append(hb.seq)
            ) as server:
                address = server.address
                with pytest.raises(OSError, match="cannot bind"):
                    await server.update("k2", port=busy.getsockname()[1])
                assert server.address == address
                with UDPStatusSender("k", [format_address(address)]) as sender:
                    sender.dosend(build_message(seq=3))
                    await until(lambda: seen == [3], "a heartbeat after the failure")

    asyncio.run(main())


def test_no_fd_leak_after_serve_and_updates() -> None:
    """Every socket the server opened is closed once the block is left."""

    async def main() -> None:
        async with aio.serve("k", "127.0.0.1", 0) as server:
            for i in range(20):
                await server.update(f"k{i}", port=0)

    asyncio.run(main())  # the loop's own descriptors come and go with it
    before = open_fds()
    asyncio.run(main())
    assert open_fds() == before


# --- the handler queue is bounded in bytes ------------------------------------------------


def test_a_slow_handler_makes_the_oldest_heartbeats_drop_not_memory_grow() -> None:
    """Behind a blocked handler, queued heartbeats stay under max_queued_bytes; drops counted."""
    message = build_message(listeners=2, members=50)
    size = aio.estimated_size(Heartbeat.from_dict(message))
    total = 200
    handled: list[int] = []
    gate = asyncio.Event()

    async def slow(heartbeat: Heartbeat, srcaddr: str) -> None:
        await gate.wait()
        handled.append(heartbeat.seq)

    async def main() -> dict[str, int]:
        async with aio.serve(
            "k", "127.0.0.1", 0, health_handler=slow, max_queued_bytes=5 * size
        ) as server:
            with UDPStatusSender("k", [format_address(server.address)]) as sender:
                for seq in range(total):
                    sender.dosend(dict(message, seq=seq))
                    if seq % 20 == 19:
                        await until(lambda s=seq: server.counters["received"] > s, "the datagrams")
                        assert server.queued_bytes <= 5 * size
            counters = server.counters
            # One heartbeat is with the handler, five wait: the rest were dropped, oldest first.
            assert counters["accepted"] == total
            assert counters["queue_dropped"] == total - 6
            gate.set()
            await until(lambda: len(handled) == 6, "the heartbeats kept")
            return dict(server.counters)

    counters = asyncio.run(main())
    # The first one the handler took (whichever was oldest then), then the newest five.
    assert handled[0] < total - 5
    assert handled[1:] == list(range(total - 5, total))
    assert counters["queue_dropped"] == total - 6


def test_a_heartbeat_larger_than_the_queue_is_dropped_itself() -> None:
    """A heartbeat whose size alone exceeds max_queued_bytes is dropped and counted."""
    seen: list[int] = []

    async def main() -> dict[str, int]:
        async with aio.serve(
            "k",
            "127.0.0.1",
            0,
            health_handler=lambda hb, src: seen.append(hb.seq),
            max_queued_bytes=2048,
        ) as server:
            with UDPStatusSender("k", [format_address(server.address)]) as sender:
                sender.dosend(build_message(seq=1, listeners=4, members=40))
                sender.dosend(build_message(seq=2, listeners=0, pools=0))
                await until(lambda: seen == [2], "the small heartbeat")
            return dict(server.counters)

    counters = asyncio.run(main())
    assert counters["accepted"] == 2
    assert counters["queue_dropped"] == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, None])
def test_bad_max_queued_bytes_is_a_value_error(bad: object) -> None:
    """A queue bound that is not a positive int fails before anything is bound."""
    before = open_fds()

    async def main() -> None:
        async with aio.serve("k", "127.0.0.1", 0, max_queued_bytes=bad):  # type: ignore[arg-type]
            pass

    with pytest.raises(ValueError, match="max_queued_bytes"):
        asyncio.run(main())
    assert open_fds() <= before + 2  # the event loop's own, if any


@pytest.mark.parametrize(
    "shape",
    [
        {"listeners": 0, "pools": 0},
        {"listeners": 2, "members": 4},
        {"listeners": 10, "pools": 20, "members": 50},
        {"listeners": 1, "members": 3000},
    ],
    ids=["empty", "standard", "many-pools", "many-members"],
)
def test_estimated_size_is_at_least_the_memory_a_heartbeat_holds(shape: dict[str, int]) -> None:
    """The estimate the queue bound uses is never below what tracemalloc measures."""
    import gc
    import tracemalloc

    from amphora_heartbeat.envelope import Unwrapper

    datagram = wrap_envelope(build_message(**shape), "k")
    unwrapper = Unwrapper("k")
    Heartbeat.from_dict(unwrapper.unwrap(datagram))  # warm the shared caches
    gc.collect()
    tracemalloc.start()
    try:
        kept = [Heartbeat.from_dict(unwrapper.unwrap(datagram)) for _ in range(50)]
        measured = tracemalloc.get_traced_memory()[0] / len(kept)
    finally:
        tracemalloc.stop()
    assert aio.estimated_size(kept[0]) >= measured
    assert aio.estimated_size(kept[0]) <= 3 * measured + 4096  # an estimate, not a wild guess


def test_a_handler_failing_every_time_logs_a_few_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every failure is counted in handler_errors; only 5 tracebacks per 10 s are logged."""
    total = 40

    def broken(heartbeat: Heartbeat, srcaddr: str) -> None:
        raise RuntimeError("handler bug")

    async def main() -> dict[str, int]:
        async with aio.serve("k", "127.0.0.1", 0, health_handler=broken) as server:
            with UDPStatusSender("k", [format_address(server.address)]) as sender:
                for seq in range(total):
                    sender.dosend(build_message(seq=seq))
                    await until(lambda s=seq: server.counters["handler_errors"] > s, "the error")
            return dict(server.counters)

    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="amphora_heartbeat"):
        counters = asyncio.run(main())
    windows = 1 + int((time.monotonic() - started) // 10)
    assert counters["handler_errors"] == total
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert 5 <= len(tracebacks) <= 5 * windows
