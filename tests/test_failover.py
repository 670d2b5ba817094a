"""Tests of amphora_heartbeat.manager.failover: the command template, its timeout, the runner."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import _pg
import pytest

from amphora_heartbeat.manager import FailoverCommand, HealthManager
from amphora_heartbeat.models import Heartbeat
from amphora_heartbeat.store import PostgresStore, SQLiteStore
from amphora_heartbeat.testing import make_fleet

pg_server = _pg.pg_server
pg_dsn = _pg.pg_dsn
db_url = _pg.db_url
store = _pg.store

AnyStore = SQLiteStore | PostgresStore
T0 = 1_800_000_000.0
PY = shlex.quote(sys.executable)


def _recorder(out: Path) -> str:
    """Return a command line that appends its arguments, one line, to ``out``."""
    script = f"import sys; open({str(out)!r}, 'a').write(' '.join(sys.argv[1:]) + chr(10))"
    return f"{PY} -c {shlex.quote(script)}"


def _wait(condition: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


# --- the command ---------------------------------------------------------------------


def test_placeholders_are_filled_in_each_argument(tmp_path: Path) -> None:
    """{amphora_id} and {load_balancer_id} are replaced wherever they stand; nothing appended."""
    out = tmp_path / "out"
    command = FailoverCommand(_recorder(out) + " failover --lb={load_balancer_id} {amphora_id}")
    assert command.templated
    command("amp-1", "lb-1")
    assert out.read_text() == "failover --lb=lb-1 amp-1\n"


def test_without_a_placeholder_the_amphora_id_is_appended(tmp_path: Path) -> None:
    """The old form (`openstack loadbalancer amphora failover`) keeps working."""
    out = tmp_path / "out"
    command = FailoverCommand(_recorder(out) + " amphora failover")
    assert not command.templated
    command("amp-2", "lb-2")
    assert out.read_text() == "amphora failover amp-2\n"
    assert command.argv_for("amp-3")[-1] == "amp-3"


def test_doubled_braces_are_literal() -> None:
    """{{ and }} stand for one brace, and do not make the command a template."""
    command = FailoverCommand("run {{json}} {amphora_id}")
    assert command.argv_for("a") == ["run", "{json}", "a"]
    assert FailoverCommand("run {{x}}").argv_for("a") == ["run", "{x}", "a"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("run {amphora}", "unknown placeholder {amphora}"),
        ("run {amphora_id!r}", "unknown placeholder"),
        ("run {amphora_id:>40}", "unknown placeholder"),
        ("run {amphora_id.__class__}", "unknown placeholder"),
        ("run {}", "unknown placeholder {}"),
        ("run {amphora_id", "write {{ or }} for a brace"),
        ("   ", "empty"),
    ],
)
def test_a_bad_template_is_refused_when_made(text: str, expected: str) -> None:
    """Unknown or formatted fields and unbalanced braces are a ValueError at start-up."""
    with pytest.raises(ValueError, match=expected.replace("{", r"\{").replace("}", r"\}")):
        FailoverCommand(text)


def test_a_template_needing_the_load_balancer_refuses_to_run_without_it() -> None:
    """{load_balancer_id} with no load balancer id given: a ValueError, nothing run."""
    with pytest.raises(ValueError, match="load_balancer_id"):
        FailoverCommand("x {load_balancer_id}").argv_for("amp")
    assert FailoverCommand("x {amphora_id}").argv_for("amp") == ["x", "amp"]


def test_a_non_zero_exit_raises_with_the_output() -> None:
    """Exit status 3 raises CalledProcessError carrying what the command printed."""
    script = "import sys; print('quota exceeded'); sys.exit(3)"
    with pytest.raises(subprocess.CalledProcessError) as info:
        FailoverCommand([sys.executable, "-c", script])("amp")
    assert info.value.returncode == 3
    assert b"quota exceeded" in info.value.output


def test_a_command_that_cannot_start_raises_oserror(tmp_path: Path) -> None:
    """A missing program is an OSError (counted as a failed failover)."""
    with pytest.raises(OSError):  # noqa: PT011 - FileNotFoundError, or PermissionError
        FailoverCommand(str(tmp_path / "no-such-program"))("amp")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    """Past the timeout the command and its children are killed, and TimeoutExpired raised."""
    pid_file = tmp_path / "child"
    script = (
        "import subprocess, sys;"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']);"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid));"
        "p.wait()"
    )
    command = FailoverCommand([sys.executable, "-c", script], timeout=1.0)
    with pytest.raises(subprocess.TimeoutExpired):
        command("amp")
    child = int(pid_file.read_text())
    _wait(lambda: not _alive(child))


# --- the runner, through the manager ----------------------------------------------


def _stale_fleet(s: AnyStore, n: int, seed: int) -> tuple[list[str], list[str]]:
    """Add a fleet heard at T0 (stale from T0 + 10 with a 10 s timeout); return ids and LBs."""
    fleet = make_fleet(n, seed=seed, listeners=1, pools=1, members=1)
    s.add_fleet(fleet)
    m = HealthManager(None, s, started=T0)
    for amp in fleet:
        m.submit(Heartbeat.from_dict(amp.message(), recv_time=T0))
    m.step(T0)
    m.close()
    return [a.amphora_id for a in fleet], [a.load_balancer_id for a in fleet]


def test_a_failover_taking_load_balancer_id_gets_the_amphoras(store: AnyStore) -> None:
    """The stale query's load balancer id reaches a failover that names the keyword."""
    ids, lbs = _stale_fleet(store, 2, 30)
    calls: list[tuple[str, str]] = []
    lock = threading.Lock()

    def failover(amphora_id: str, load_balancer_id: str) -> None:
        with lock:
            calls.append((amphora_id, load_balancer_id))

    m = HealthManager(None, store, heartbeat_timeout=10, started=T0, failover=failover)
    m.step(T0 + 11)
    assert m.wait_failovers(30)
    assert sorted(calls) == sorted(zip(ids, lbs, strict=True))
    m.close()


def test_a_failed_command_is_logged_in_one_line_with_its_output(
    store: AnyStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A command's failure is one ERROR line with the tail of its output, no traceback."""
    _stale_fleet(store, 1, 31)
    script = "import sys; print('Unable to establish connection'); sys.exit(1)"
    command = FailoverCommand([sys.executable, "-c", script])
    m = HealthManager(None, store, heartbeat_timeout=10, started=T0, failover=command)
    with caplog.at_level(logging.WARNING, logger="amphora_heartbeat.manager"):
        m.step(T0 + 11)
        assert m.wait_failovers(30)
        m.step(T0 + 12)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is None
    assert "Unable to establish connection" in errors[0].getMessage()
    assert m.counters["failovers_failed"] == 1
    m.close()


def test_reconfigure_applies_new_timings_and_thread_count(store: AnyStore) -> None:
    """After reconfigure() a shorter heartbeat_timeout makes amphorae stale sooner, and
    failover_threads bounds the failovers running at once."""
    ids, _ = _stale_fleet(store, 3, 32)
    gate = threading.Event()
    running: list[str] = []

    def failover(amphora_id: str) -> None:
        running.append(amphora_id)
        gate.wait(30)

    m = HealthManager(None, store, heartbeat_timeout=60, started=T0 - 60, failover=failover,
                      failover_threads=1)  # fmt: skip
    m.step(T0 + 20)
    assert running == []  # 20 s of silence: not stale at 60 s
    m.reconfigure(
        heartbeat_interval=5,
        heartbeat_timeout=10,
        health_check_interval=1,
        failover_threshold=None,
        failover_threads=2,
    )
    assert (m.heartbeat_timeout, m.health_check_interval, m.heartbeat_interval) == (10, 1, 5)
    m.step(T0 + 20.5)  # the next check runs at once, with the new timeout
    _wait(lambda: len(running) == 2)
    assert m.counters["failovers_started"] == 2
    gate.set()
    assert m.wait_failovers(30)
    m.step(T0 + 22)
    assert m.wait_failovers(30)
    assert sorted(running) == sorted(ids)
    m.close()


def test_reconfigure_refuses_bad_values(store: AnyStore) -> None:
    """reconfigure() checks what the constructor checks, and changes nothing when it refuses."""
    m = HealthManager(None, store)
    good = {
        "heartbeat_interval": 10.0,
        "heartbeat_timeout": 60.0,
        "health_check_interval": 3.0,
        "failover_threshold": None,
        "failover_threads": 10,
    }
    for bad in (
        {"heartbeat_timeout": 0.0},
        {"health_check_interval": -1.0},
        {"failover_threshold": 0},
        {"failover_threads": 0},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            m.reconfigure(**{**good, **bad})  # type: ignore[arg-type]
    assert m.heartbeat_timeout == 60
    m.close()


def test_more_failover_threads_take_effect_while_failovers_run(store: AnyStore) -> None:
    """Raising failover_threads with one failover running lets more start; that one goes on."""
    ids, _ = _stale_fleet(store, 3, 33)
    gate = threading.Event()
    running: list[str] = []

    def failover(amphora_id: str) -> None:
        running.append(amphora_id)
        gate.wait(30)

    m = HealthManager(None, store, heartbeat_timeout=10, health_check_interval=1, started=T0,
                      failover=failover, failover_threads=1)  # fmt: skip
    m.step(T0 + 11)
    _wait(lambda: len(running) == 1)
    m.reconfigure(
        heartbeat_interval=10,
        heartbeat_timeout=10,
        health_check_interval=1,
        failover_threshold=None,
        failover_threads=3,
    )
    m.step(T0 + 12)
    _wait(lambda: len(running) == 3)
    gate.set()
    assert m.wait_failovers(30)
    m.step(T0 + 13)
    assert sorted(running) == sorted(ids)
    assert m.counters["failovers_succeeded"] == 3
    m.close()


def test_a_command_that_cannot_start_is_logged_without_output(
    store: AnyStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A missing failover program is a failed failover, logged as one line with the error."""
    _stale_fleet(store, 1, 34)
    command = FailoverCommand(str(tmp_path / "no-such-program"))
    m = HealthManager(None, store, heartbeat_timeout=10, started=T0, failover=command)
    with caplog.at_level(logging.ERROR, logger="amphora_heartbeat.manager"):
        m.step(T0 + 11)
        assert m.wait_failovers(30)
        m.step(T0 + 12)
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "No such file" in error.getMessage()
    assert "output ends" not in error.getMessage()
    assert m.counters["failovers_failed"] == 1
    m.close()
