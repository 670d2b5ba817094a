"""Tests of the systemd integration: sd_notify messages and the unit file in the docs.

The notify tests bind a real AF_UNIX datagram socket, pass it as ``NOTIFY_SOCKET``
to a :class:`Notifier` or to a real manager process, and read what arrives.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _net import DEADLINE
from _proc import KEY, Manager, sqlite_url

from amphora_heartbeat.envelope import wrap_envelope
from amphora_heartbeat.manager.systemd import Notifier, WatchdogRelay, status_line
from amphora_heartbeat.store import SQLiteStore
from amphora_heartbeat.testing import make_fleet

UNIT = Path(__file__).parent.parent / "docs" / "how-to" / "amphora-heartbeat-manager.service"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """Yield a bound AF_UNIX datagram socket and its path."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        yield sock, path


def receive(sock: socket.socket, timeout: float = 6 * DEADLINE) -> str:
    """Return the next message on ``sock``, or fail after ``timeout`` seconds."""
    sock.settimeout(timeout)
    return sock.recv(4096).decode()


def receive_until(sock: socket.socket, wanted: str) -> list[str]:
    """Return the messages up to and including the first that contains the line ``wanted``."""
    seen = []
    deadline = time.monotonic() + 6 * DEADLINE
    while True:
        assert time.monotonic() < deadline, f"no {wanted} in {seen}"
        message = receive(sock)
        seen.append(message)
        if wanted in message.splitlines():
            return seen


# --- Notifier, time passed in ---------------------------------------------------------


def test_notifier_sends_each_message_to_the_socket(
    notify_socket: tuple[socket.socket, str],
) -> None:
    """READY, STATUS (one line), STOPPING and WATCHDOG arrive as sd_notify datagrams."""
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("up")
    assert receive(sock) == "READY=1\nSTATUS=up"
    assert notifier.send_status("two\nlines")
    assert receive(sock) == "STATUS=two lines"
    assert notifier.stopping()
    assert receive(sock) == "STOPPING=1"
    assert notifier.watchdog()
    assert receive(sock) == "WATCHDOG=1"


def test_notifier_reaches_an_abstract_socket() -> None:
    """A NOTIFY_SOCKET starting with @ names the abstract namespace."""
    name = f"amphora-heartbeat-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert receive(sock) == "READY=1"


def test_notifier_without_a_socket_does_nothing(tmp_path: Path) -> None:
    """No NOTIFY_SOCKET, or one nobody listens on: every call returns False, none raises."""
    quiet = Notifier({})
    assert not quiet.enabled
    assert not quiet.ready()
    quiet.tick(0.0)
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert gone.enabled
    assert not gone.watchdog()


def test_notifier_reloading_brackets_a_reload(notify_socket: tuple[socket.socket, str]) -> None:
    """RELOADING=1 with MONOTONIC_USEC before the reload, READY=1 after; a failure says so."""
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    with notifier.reloading():
        first = receive(sock).splitlines()
    assert first[0] == "RELOADING=1"
    assert re.fullmatch(r"MONOTONIC_USEC=\d+", first[1])
    assert receive(sock) == "READY=1"
    with pytest.raises(ValueError, match="bad key"), notifier.reloading():
        raise ValueError("bad key")
    assert receive(sock).startswith("RELOADING=1")
    assert receive(sock) == "READY=1\nSTATUS=reload failed: bad key"


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"WATCHDOG_USEC": "400000"}, 0.2),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}, 0.2),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_what_watchdog_usec_asks(
    environ: dict[str, str], interval: float | None
) -> None:
    """WATCHDOG_USEC halved, in seconds; off for another process's WATCHDOG_PID or a bad value."""
    assert Notifier({"NOTIFY_SOCKET": "/x", **environ}).watchdog_interval == interval


def test_tick_sends_watchdog_and_status_when_due(notify_socket: tuple[socket.socket, str]) -> None:
    """tick(now) pings at the watchdog interval and sends STATUS every status_every seconds."""
    sock, path = notify_socket
    calls = []
    notifier = Notifier(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"},
        status=lambda: f"status {len(calls)}",
        status_every=1.0,
    )
    for now in (0.0, 0.1, 0.19, 0.2, 0.3, 0.41, 1.0, 1.05):
        notifier.tick(now)
        calls.append(now)
    sock.setblocking(False)
    got = []
    while True:
        try:
            got.append(sock.recv(4096).decode())
        except BlockingIOError:
            break
    assert got == [
        "WATCHDOG=1",  # 0.0
        "STATUS=status 0",
        "WATCHDOG=1",  # 0.2
        "WATCHDOG=1",  # 0.41
        "WATCHDOG=1",  # 1.0 (0.61 was due)
        "STATUS=status 6",
    ]
    notifier.tick(0.5)  # a clock stepped back: due at once, not in 0.7 s
    assert receive(sock) == "WATCHDOG=1"


def test_status_line_summarises_the_counters() -> None:
    """The STATUS line: accepted, rejected, backlog, the last commit's age, stale, failovers."""
    counters = {"accepted": 10, "rejected.too_short": 2, "rejected.invalid_hmac": 1,
                "backlog": 4, "last_commit_seconds": 100.0, "stale_amphorae": 1,
                "failovers_started": 3, "failovers_failed": 1}  # fmt: skip
    assert status_line(counters, 102.5) == (
        "10 heartbeats accepted, 3 rejected; backlog 4; last commit 2.5 s ago; 1 stale; "
        "failovers 3 started, 1 failed"
    )
    assert "no commit yet" in status_line({}, 0.0)


# --- a real manager process -----------------------------------------------------------


def test_manager_process_notifies_systemd_through_its_life(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    """READY after bind; WATCHDOG from the tick loop, none while it is blocked; SIGHUP; SIGTERM."""
    sock, path = notify_socket
    db = tmp_path / "m.db"
    store = SQLiteStore(str(db))
    store.create_schema()
    fleet = make_fleet(1, seed=9)
    store.add_fleet(fleet)
    store.close()
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"}  # a ping every 0.05 s
    manager = Manager(sqlite_url(db), "--tick", "0.01", env=env)
    try:
        ready = receive_until(sock, "READY=1")
        assert len(ready) == 1  # nothing before READY
        assert ready[0].startswith("READY=1\nSTATUS=0 heartbeats accepted")
        # READY came once the port was bound: binding it again fails.
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with other, pytest.raises(OSError, match="in use"):
            other.bind(("127.0.0.1", manager.port))
        for _ in range(3):
            receive_until(sock, "WATCHDOG=1")
        # Block the tick loop: the database locked by another connection, a heartbeat to write.
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(wrap_envelope(fleet[0].message(), KEY), ("127.0.0.1", manager.port))
        silence = _wait_for_silence(sock, quiet=1.0)  # 20 intervals without a ping
        locker.execute("ROLLBACK")
        locker.close()
        for _ in range(3):
            receive_until(sock, "WATCHDOG=1")
        manager.signal(signal.SIGHUP)
        reload = [m for m in receive_until(sock, "READY=1") if m.startswith(("REL", "READY"))]
        assert reload[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert reload[-1] == "READY=1"
        counters, _ = manager.stop()
        assert "STOPPING=1" in receive_until(sock, "STOPPING=1")[-1]
    finally:
        manager.kill()
    assert silence >= 1.0
    assert counters["heartbeats_recorded"] == 1  # the blocked write went through after


def _wait_for_silence(sock: socket.socket, quiet: float) -> float:
    """Read pings until none came for ``quiet`` seconds; return the silence seen, in seconds."""
    deadline = time.monotonic() + 6 * DEADLINE
    last = time.monotonic()
    while time.monotonic() < deadline:
        sock.settimeout(quiet)
        try:
            sock.recv(4096)
        except TimeoutError:
            return time.monotonic() - last
        last = time.monotonic()
    raise AssertionError("the watchdog kept pinging while the tick loop was blocked")


def test_watchdog_relay_pings_once_every_worker_has(
    notify_socket: tuple[socket.socket, str],
) -> None:
    """The relay pings systemd only after each running worker pinged; other lines are dropped."""
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"})
    with pytest.raises(ValueError, match="no watchdog"):
        WatchdogRelay(notifier, set)
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    running = {11, 12}
    relay = WatchdogRelay(notifier, lambda: running)
    try:
        env = relay.environ({"WATCHDOG_PID": "7", "PATH": "/bin"})
        assert env == {"PATH": "/bin", "NOTIFY_SOCKET": relay.address, "WATCHDOG_USEC": "2000000"}
        relay.handle(b"WATCHDOG=1", 11)
        assert not relay.handle(b"WATCHDOG=1", 12)  # nothing before READY
        notifier.readied = True
        assert not relay.handle(b"READY=1", 11)
        assert not relay.handle(b"WATCHDOG=1", 11)
        assert not relay.handle(b"WATCHDOG=1", 11)
        assert relay.handle(b"WATCHDOG=1", 12)
        assert receive(sock) == "WATCHDOG=1"
        running.discard(12)  # a dead worker is not waited for
        assert relay.handle(b"WATCHDOG=1", 11)
    finally:
        relay.close()


def test_workers_notify_through_the_parent_and_a_hung_worker_stops_the_watchdog(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    """--workers 2: the parent says READY; pings stop while one worker's tick loop is blocked."""
    sock, path = notify_socket
    db = tmp_path / "m.db"
    store = SQLiteStore(str(db))
    store.create_schema()
    fleet = make_fleet(1, seed=9)
    store.add_fleet(fleet)
    store.close()
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
    manager = Manager(sqlite_url(db), "--workers", "2", "--tick", "0.01", env=env)
    try:
        ready = receive_until(sock, "READY=1")
        assert ready == [f"READY=1\nSTATUS=2 workers listening on 127.0.0.1:{manager.port}"]
        for _ in range(3):
            receive_until(sock, "WATCHDOG=1")
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(wrap_envelope(fleet[0].message(), KEY), ("127.0.0.1", manager.port))
        silence = _wait_for_silence(sock, quiet=1.0)
        locker.execute("ROLLBACK")
        locker.close()
        later = receive_until(sock, "WATCHDOG=1")
        manager.signal(signal.SIGHUP)
        reload = [m for m in receive_until(sock, "READY=1") if m.startswith(("REL", "READY"))]
        counters, _ = manager.stop()
        stopping = receive_until(sock, "STOPPING=1")
    finally:
        manager.kill()
    assert silence >= 1.0
    assert reload[0].startswith("RELOADING=1")
    assert reload[-1] == "READY=1"
    # The workers' own READY and STATUS lines never reach systemd.
    assert not any("heartbeats accepted" in m for m in [*later, *stopping])
    assert counters["heartbeats_recorded"] == 1


def test_sighup_without_systemd_no_longer_ends_the_manager(tmp_path: Path) -> None:
    """SIGHUP (ExecReload) is acknowledged, not fatal: the manager still stops cleanly after."""
    manager = Manager(sqlite_url(tmp_path / "m.db"))
    try:
        manager.signal(signal.SIGHUP)
        counters, _ = manager.stop()
    finally:
        manager.kill()
    assert counters["received"] == 0


# --- the unit file ----------------------------------------------------------------------


def test_unit_file_asks_for_notify_watchdog_reload_and_hardening() -> None:
    """The documented unit uses Type=notify, a watchdog, SIGHUP reloads, restarts, hardening."""
    text = UNIT.read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
                 "DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes",
                 "PrivateTmp=yes"):  # fmt: skip
        assert line in text.splitlines(), line
    assert re.search(r"^WatchdogSec=\d+", text, re.MULTILINE)
    assert " --log-format json" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit, with not one warning (the real script path)."""
    script = Path(sys.executable).parent / "amphora-heartbeat"
    assert script.exists()
    text = UNIT.read_text().replace("/usr/local/bin/amphora-heartbeat", str(script))
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    # The check can fail: a misspelt key is a warning it reports.
    unit.write_text(text.replace("WatchdogSec=", "WatchdgSec="))
    bad = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert "WatchdgSec" in bad.stderr
