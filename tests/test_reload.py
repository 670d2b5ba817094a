"""Tests of amphora_heartbeat.manager.reload: key rotation, reloads, SIGHUP in a real process."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import _pg
import pytest

from amphora_heartbeat.envelope import wrap_envelope
from amphora_heartbeat.errors import HeartbeatError
from amphora_heartbeat.getter import UDPStatusGetter
from amphora_heartbeat.manager import HealthManager, KeyRotation, ManagerConfig, Reloader
from amphora_heartbeat.options import OptionError
from amphora_heartbeat.sender import UDPStatusSender
from amphora_heartbeat.store import PostgresStore, SQLiteStore, open_store
from amphora_heartbeat.testing import build_message, make_fleet

pg_server = _pg.pg_server
pg_dsn = _pg.pg_dsn
db_url = _pg.db_url
store = _pg.store

AnyStore = SQLiteStore | PostgresStore
T0 = 1_800_000_000.0
MESSAGE = build_message()


# --- KeyRotation ---------------------------------------------------------------------


def test_a_rotated_key_stays_accepted_until_its_time_is_up() -> None:
    """rotate() puts the new key first and keeps the old one until now + keep_for, not later."""
    rotation = KeyRotation("old")
    assert rotation.ring() == "old"
    assert rotation.next_expiry is None
    rotation.rotate("new", now=T0, keep_for=60)
    assert rotation.ring() == ["new", "old"]
    assert rotation.next_expiry == T0 + 60
    assert rotation.expire(T0 + 59.9) is False
    assert rotation.ring() == ["new", "old"]
    assert rotation.expire(T0 + 60) is True
    assert rotation.ring() == "new"
    assert rotation.expire(T0 + 61) is False


def test_rotating_back_to_a_retired_key_does_not_list_it_twice() -> None:
    """A key made current again leaves the retired list; a ring keeps its order."""
    rotation = KeyRotation(["a", "b"])
    rotation.rotate("c", now=T0, keep_for=10)
    assert rotation.ring() == ["c", "a", "b"]
    rotation.rotate("a", now=T0 + 1, keep_for=10)
    assert rotation.ring() == ["a", "b", "c"]
    rotation.expire(T0 + 10)  # b (retired at T0) goes; c (at T0 + 1) stays
    assert rotation.ring() == ["a", "c"]


# --- Reloader, in process ------------------------------------------------------------


@pytest.fixture
def getter() -> Iterator[UDPStatusGetter]:
    """Yield a getter bound to a free port on 127.0.0.1 with key "old"."""
    g = UDPStatusGetter("old", "127.0.0.1", 0, timeout=0)
    try:
        yield g
    finally:
        g.close()


def _accepts(g: UDPStatusGetter, key: str) -> bool:
    try:
        g.handle_datagram(wrap_envelope(MESSAGE, key), ("127.0.0.1", 1), now=T0)
    except HeartbeatError:
        return False
    return True


def test_reload_rotates_the_key_applies_timings_and_keeps_restart_fields(
    store: AnyStore, getter: UDPStatusGetter, caplog: pytest.LogCaptureFixture
) -> None:
    """A reload: both keys accepted for the new heartbeat_timeout, timings applied,
    a changed bind port logged as needing a restart and kept; no key in the log."""
    running = ManagerConfig(heartbeat_key="old", bind_port=5555, connection="sqlite:///a")
    manager = HealthManager(getter, store)
    loaded = ManagerConfig(
        heartbeat_key="new-secret",
        bind_port=6000,
        connection="sqlite:///a",
        heartbeat_timeout=20,
        health_check_interval=1,
        failover_threads=3,
    )
    reloader = Reloader(lambda: loaded, running, manager, getter)
    with caplog.at_level(logging.INFO, logger="amphora_heartbeat.manager"):
        assert reloader.reload(T0) is True
    assert (manager.heartbeat_timeout, manager.health_check_interval) == (20, 1)
    assert reloader.config.bind_port == 5555
    assert reloader.config.heartbeat_timeout == 20
    assert _accepts(getter, "new-secret")
    assert _accepts(getter, "old")
    log = caplog.text
    assert "bind_port changed; it takes effect at the next restart" in log
    assert "new-secret" not in log
    reloader.poll(T0 + 19.9)
    assert _accepts(getter, "old")
    reloader.poll(T0 + 20)
    assert not _accepts(getter, "old")
    assert _accepts(getter, "new-secret")
    assert getter.counters["rejected.invalid_hmac"] == 1
    manager.close()


def test_a_reload_that_fails_changes_nothing(store: AnyStore, getter: UDPStatusGetter) -> None:
    """A bad file, or a configuration without a key, is refused; the running one stays."""
    running = ManagerConfig(heartbeat_key="old", heartbeat_timeout=30)
    manager = HealthManager(getter, store, heartbeat_timeout=30)

    def bad() -> ManagerConfig:
        raise OptionError("octavia.conf: [health_manager] bind_port: expected a whole number")

    for load in (bad, lambda: ManagerConfig(heartbeat_timeout=5)):
        reloader = Reloader(load, running, manager, getter)
        assert reloader.reload(T0) is False
        assert reloader.failures == 1
        assert reloader.config is running
    assert manager.heartbeat_timeout == 30
    assert _accepts(getter, "old")
    manager.close()


def test_request_only_flags_and_the_next_poll_reloads(store: AnyStore) -> None:
    """request() (what SIGHUP calls) does no reload itself; poll() at the next tick does."""
    manager = HealthManager(None, store)
    running = ManagerConfig(heartbeat_key="k")
    calls: list[int] = []

    def load() -> ManagerConfig:
        calls.append(1)
        return ManagerConfig(heartbeat_key="k", heartbeat_interval=5)

    reloader = Reloader(load, running, manager, None)
    reloader.request()
    assert calls == []
    reloader.poll(T0)
    reloader.poll(T0 + 1)
    assert calls == [1]
    assert manager.heartbeat_interval == 5
    assert reloader.reloads == 1
    manager.close()


def test_a_running_configuration_without_a_key_is_refused(store: AnyStore) -> None:
    """Reloader needs the key the manager runs with."""
    manager = HealthManager(None, store)
    with pytest.raises(ValueError, match="heartbeat_key"):
        Reloader(ManagerConfig, ManagerConfig(), manager, None)
    manager.close()


# --- SIGHUP in a real process --------------------------------------------------------


def _write_conf(path: Path, key: str, db: str, record: Path, bind_port: int = 0) -> None:
    script = f"import sys; open({str(record)!r}, 'a').write(sys.argv[1] + chr(10))"
    path.write_text(
        "[DEFAULT]\ndebug = False\n"
        f"[database]\nconnection = {db}\n"
        "[health_manager]\n"
        "bind_ip = 127.0.0.1\n"
        f"bind_port = {bind_port}\n"
        f"heartbeat_key = {key}\n"
        "heartbeat_timeout = 3\n"
        "health_check_interval = 0.5\n"
        "[amphora_heartbeat]\n"
        f'failover_command = {sys.executable} -c "{script}" {{amphora_id}}\n',
        encoding="utf-8",
    )


class _Stderr(threading.Thread):
    """Collect a process's stderr lines in a thread; wait for a line holding some text."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        super().__init__(daemon=True)
        assert proc.stderr is not None
        self.stream = proc.stderr
        self.lines: list[str] = []
        self.start()

    def run(self) -> None:
        for line in self.stream:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.lines)):
            if time.monotonic() > deadline or not self.is_alive():
                raise AssertionError(f"no {text!r} on stderr; got {self.lines}")
            time.sleep(0.02)


class _Amphorae(threading.Thread):
    """Send every amphora's heartbeat each round, each signed with the key it holds now."""

    def __init__(self, fleet: list, port: int, keys: dict[str, str]) -> None:  # type: ignore[type-arg]
        super().__init__(daemon=True)
        self.fleet = fleet
        self.keys = keys  # amphora id -> the key it signs with; the test changes it
        self.senders = {
            key: UDPStatusSender(key, [f"127.0.0.1:{port}"]) for key in set(keys.values())
        }
        self.done = threading.Event()
        self.rounds = 0
        self.switch_to: str | None = None

    def add_key(self, key: str, port: int) -> None:
        self.senders[key] = UDPStatusSender(key, [f"127.0.0.1:{port}"])

    def run(self) -> None:
        while not self.done.wait(0.05):
            for amp in self.fleet:
                message = amp.message(seq=self.rounds)
                self.senders[self.keys[amp.amphora_id]].dosend(message)
            self.rounds += 1
            # One amphora a round takes the new key, as an operator's rollout would.
            if self.switch_to is not None:
                old = [a for a, k in self.keys.items() if k != self.switch_to]
                if old:
                    self.keys[old[0]] = self.switch_to

    def stop(self) -> None:
        self.done.set()
        self.join(10)
        for sender in self.senders.values():
            sender.close()


def test_sighup_rotates_the_key_with_heartbeats_flowing_and_nothing_failed_over(
    tmp_path: Path,
) -> None:
    """A real manager process reloads on SIGHUP: amphorae switching keys one by one are
    all heard (none rejected, none failed over); a timeout later the old key is refused."""
    db = f"sqlite:///{tmp_path / 'health.db'}"
    s = open_store(db)
    s.create_schema()
    fleet = make_fleet(5, seed=60, listeners=1, pools=1, members=1)
    s.add_fleet(fleet)
    conf, record = tmp_path / "octavia.conf", tmp_path / "failed-over"
    _write_conf(conf, "old-key", db, record)
    env = {k: v for k, v in os.environ.items() if k != "AMPHORA_HEARTBEAT_KEY"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "amphora_heartbeat", "manager", "--config-file", str(conf),
         "--tick", "0.02"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    stderr = _Stderr(proc)
    amphorae: _Amphorae | None = None
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), (line, proc.stderr)
        port = int(line.rsplit(":", 1)[1])
        amphorae = _Amphorae(fleet, port, {a.amphora_id: "old-key" for a in fleet})
        amphorae.add_key("new-key", port)
        amphorae.start()
        _wait(lambda: len(s.read_health()) == 5)
        _write_conf(conf, "new-key", db, record, bind_port=port + 1)
        proc.send_signal(signal.SIGHUP)
        stderr.wait_for("new heartbeat key")
        amphorae.switch_to = "new-key"
        stderr.wait_for("the previous heartbeat key is no longer accepted")
        assert set(amphorae.keys.values()) == {"new-key"}
        amphorae.stop()
        with UDPStatusSender("old-key", [f"127.0.0.1:{port}"]) as late:
            late.dosend(fleet[0].message(seq=10_000))
        stderr.wait_for("rejected heartbeat datagram")
    finally:
        if amphorae is not None and amphorae.is_alive():
            amphorae.stop()
        proc.send_signal(signal.SIGTERM)
        out = proc.stdout.read() if proc.stdout else ""
        proc.wait(30)
        stderr.join(10)
    assert proc.returncode == 0, stderr.lines
    counters = json.loads(out.strip().splitlines()[-1])
    rejected = {k: v for k, v in counters.items() if k.startswith("rejected.") and v}
    assert rejected == {"rejected.invalid_hmac": 1}  # the late one only
    assert counters["accepted"] >= 5 * 2  # heartbeats flowed before and after the rotation
    assert counters["failovers_started"] == 0
    assert not record.exists()
    assert any("bind_port changed" in line for line in stderr.lines)
    s.close()


def test_sighup_to_a_supervisor_reloads_every_worker(tmp_path: Path) -> None:
    """With --workers 2 a SIGHUP to the parent makes each worker re-read the file."""
    db = f"sqlite:///{tmp_path / 'health.db'}"
    conf, record = tmp_path / "octavia.conf", tmp_path / "failed-over"
    _write_conf(conf, "old-key", db, record)
    env = {k: v for k, v in os.environ.items() if k != "AMPHORA_HEARTBEAT_KEY"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "amphora_heartbeat", "manager", "--config-file", str(conf),
         "--workers", "2", "--tick", "0.02"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    stderr = _Stderr(proc)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), stderr.lines
        _write_conf(conf, "new-key", db, record)
        proc.send_signal(signal.SIGHUP)
        _wait(
            lambda: sum("new heartbeat key" in x for x in list(stderr.lines)) == 2,
            what=lambda: stderr.lines,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.stdout.read() if proc.stdout else ""
        proc.wait(30)
    assert proc.returncode == 0, stderr.lines
    assert json.loads(out.strip().splitlines()[-1])["workers"] == 2


def _wait(
    condition: object, timeout: float = 60.0, what: Callable[[], object] = lambda: ""
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in time {what()}")
        time.sleep(0.02)
