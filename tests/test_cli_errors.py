"""The command line's exit-status rule: usage error 2, runtime failure 1, one line, no traceback.

Each case is a command a user could type (the issue's list of rough edges); each
runs as a real subprocess.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _cli import (
    DEADLINE,
    KEY,
    PROG,
    Lines,
    assert_one_error_line,
    closed_port,
    command,
    environment,
    run,
)

from amphora_heartbeat.testing import build_message

MANAGER = ["manager", "--bind", "127.0.0.1:0", "--db", "sqlite:///unused.db"]
FLEET = ["fleet", "--to", "127.0.0.1:9", "--amphorae", "1"]

# (argv, a word the error line must hold)
USAGE_ERRORS = [
    (["send", "--to", "127.0.0.1:99999", "-"], "port from 0 to 65535"),
    (["listen", "--bind", "127.0.0.1:99999"], "port from 0 to 65535"),
    (["fleet", "--to", "127.0.0.1:99999", "--amphorae", "1"], "port from 0 to 65535"),
    (["send", "--to", "localhost:9", "-"], "not an IP address"),
    (["fleet", "--to", "127.0.0.1:9", "--amphorae", "0"], "--amphorae"),
    (["fleet", "--to", "127.0.0.1:9", "--amphorae", "many"], "whole number"),
    ([*FLEET, "--rate", "fast"], "packets per second"),
    ([*FLEET, "--rate", "nan"], "packets per second"),
    ([*FLEET, "--duration", "-1"], "--duration"),
    ([*FLEET, "--interval", "inf"], "--interval"),
    ([*FLEET, "--silent", "nan"], "fraction"),
    ([*FLEET, "--flapping", "lots"], "fraction"),
    ([*FLEET, "--listeners", "-1"], "--listeners"),
    ([*FLEET, "--progress-interval", "0"], "--progress-interval"),
    ([*MANAGER, "--tick", "nan"], "--tick"),
    ([*MANAGER, "--tick", "inf"], "--tick"),
    ([*MANAGER, "--tick", "1e300"], "a year"),
    ([*MANAGER, "--heartbeat-timeout", "inf"], "--heartbeat-timeout"),
    ([*MANAGER, "--health-check-interval", "nan"], "--health-check-interval"),
    ([*MANAGER, "--health-check-interval", "inf"], "--health-check-interval"),
    ([*MANAGER, "--sock-rlimit", "99999999999999"], "2147483647"),
    ([*MANAGER, "--failover-threads", "0"], "--failover-threads"),
    ([*MANAGER, "--failover-threshold", "0"], "--failover-threshold"),
    ([*MANAGER, "--status-interval", "nan"], "--status-interval"),
    (["manager", "--bind", "127.0.0.1:0", "--db", ""], "database URL"),
    (["manager", "--bind", "127.0.0.1:0", "--db", "oracle://db"], "unsupported"),
    (["demo", "--db", ""], "database URL"),
    (["demo", "--db", "oracle://db"], "unsupported"),
    (["demo", "--interval", "inf"], "--interval"),
    (["demo", "--duration", "0"], "--duration"),
    (["demo", "--amphorae", "0"], "--amphorae"),
]


@pytest.mark.parametrize(("argv", "word"), USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_bad_values_are_usage_errors(argv: list[str], word: str, tmp_path: Path) -> None:
    """Each impossible value is refused before anything starts: exit 2, one line naming it."""
    result = subprocess.run(
        command(*argv), capture_output=True, text=True, env=environment(), cwd=tmp_path, check=False
    )
    line = assert_one_error_line(result, 2)
    assert word in line
    assert "listening on" not in result.stdout
    assert not (tmp_path / "unused.db").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["listen", "--bind", "127.0.0.1:0"],
        ["send", "--to", "127.0.0.1:9", "-"],
        ["decode", "-"],
        [*FLEET, "--count", "1"],
        [*MANAGER],
    ],
    ids=lambda v: v[0],
)
def test_an_empty_key_is_refused_by_every_command(argv: list[str]) -> None:
    """--key '' is a usage error for each command that takes a key (exit 2)."""
    result = run(*argv[:1], "--key", "", *argv[1:], stdin=b"{}")
    assert "empty key" in assert_one_error_line(result, 2)


def test_deeply_nested_json_is_a_usage_error() -> None:
    """send refuses JSON nested beyond the parser's depth with one line, not a RecursionError."""
    nested = b"[" * 100_000 + b"]" * 100_000
    result = run("send", "--to", "127.0.0.1:9", "-", stdin=nested)
    assert "nests too deeply" in assert_one_error_line(result, 2)


def test_decode_of_empty_input_says_no_input() -> None:
    """decode on empty input says 'no input' (exit 2), not that zero bytes were refused."""
    result = run("decode", stdin=b"\n")
    assert "no input" in assert_one_error_line(result, 2)
    assert result.stdout == ""


@pytest.mark.parametrize("command_name", ["demo", "manager"])
def test_an_unreachable_postgresql_is_a_runtime_error(command_name: str) -> None:
    """A PostgreSQL server that does not answer (a closed port) is one line, exit 1."""
    args = ["--db", f"postgresql://nobody@127.0.0.1:{closed_port()}/none"]
    if command_name == "manager":
        args += ["--bind", "127.0.0.1:0"]
    line = assert_one_error_line(run(command_name, *args), 1)
    assert "127.0.0.1" in line
    assert "refused" in line.lower()


@pytest.mark.parametrize("command_name", ["demo", "manager"])
def test_a_sqlite_file_in_a_missing_folder_is_a_runtime_error(command_name: str) -> None:
    """A SQLite path whose folder does not exist is one line, exit 1."""
    args = ["--db", "sqlite:////nonexistent/dir/x.db"]
    if command_name == "manager":
        args += ["--bind", "127.0.0.1:0"]
    line = assert_one_error_line(run(command_name, *args), 1)
    assert "nonexistent/dir/x.db" in line


def test_a_missing_driver_names_the_extra_to_install(tmp_path: Path) -> None:
    """Without psycopg a PostgreSQL URL is one line naming the extra to install, exit 1."""
    # None in sys.modules is how Python marks a module that cannot be imported.
    script = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from amphora_heartbeat.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["demo", "--db", "postgresql://nobody@127.0.0.1:9/none"]
    result = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, check=False
    )
    result.args = ["python", "-m", "amphora_heartbeat", *argv]
    line = assert_one_error_line(result, 1)
    assert "pip install 'amphora_heartbeat[postgres]'" in line


@pytest.mark.parametrize("command_name", ["listen", "manager"])
def test_a_port_in_use_is_a_runtime_error(command_name: str, tmp_path: Path) -> None:
    """listen or manager on a port another socket holds is one line, exit 1."""
    db = ["--db", f"sqlite:///{tmp_path}/h.db"] if command_name == "manager" else []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        result = run(command_name, "--bind", f"127.0.0.1:{port}", *db)
    assert "in use" in assert_one_error_line(result, 1)


def test_an_empty_key_in_the_environment_is_refused() -> None:
    """An empty AMPHORA_HEARTBEAT_KEY is a usage error, as an empty key file is."""
    result = run("decode", key="", stdin=b"x")
    assert "empty key" in assert_one_error_line(result, 2)


def test_send_says_why_a_send_failed(tmp_path: Path) -> None:
    """send to port 0 says the system's reason, with the prefix, exit 1."""
    path = tmp_path / "m.json"
    path.write_text(json.dumps(build_message()))
    line = assert_one_error_line(run("send", "--to", "127.0.0.1:0", str(path)), 1)
    assert line == f"{PROG} send: error: could not send to 127.0.0.1:0: Invalid argument"


def test_fleet_that_sent_nothing_says_why_and_fails() -> None:
    """fleet whose every send failed prints the reason and exits 1; some sent: exit 0."""
    result = run("fleet", "--to", "127.0.0.1:0", "--amphorae", "1", "--count", "3", "--rate", "max")
    line = assert_one_error_line(result, 1)
    assert line.endswith("no heartbeat could be sent to 127.0.0.1:0: Invalid argument")
    assert "send errors 3 (last: Invalid argument)" in result.stdout
    half = run(
        "fleet", "--to", "127.0.0.1:9,127.0.0.1:0", "--amphorae", "2", "--count", "4",
        "--rate", "max",
    )  # fmt: skip
    assert half.returncode == 0, half.stderr
    assert "send errors 2 (last: Invalid argument)" in half.stdout


def test_a_closed_stdout_pipe_ends_decode_quietly() -> None:
    """decode ... | head -1: the reader leaves early; exit 1, nothing on stderr."""
    from amphora_heartbeat.envelope import wrap_envelope

    # A message whose decoded JSON is far larger than a pipe's buffer.
    message = build_message(listeners=400, members=2)
    proc = subprocess.Popen(
        command("decode", "-"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment(),
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(wrap_envelope(message, KEY))
    proc.stdin.close()
    assert proc.stdout.readline().startswith(b"input: raw")
    proc.stdout.close()  # what head does after its line
    assert proc.wait(DEADLINE) == 1
    assert proc.stderr is not None
    assert proc.stderr.read() == b""
    proc.stderr.close()


def test_ctrl_c_while_reading_is_quiet(tmp_path: Path) -> None:
    """SIGINT while send waits for its input ends it with status 130 and no traceback."""
    fifo = tmp_path / "message.fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        command("send", "--to", "127.0.0.1:9", str(fifo)),
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    try:
        # Opening the FIFO's writing end succeeds once the command holds the reading
        # end: then it is past its start-up, waiting for input.
        writer = _open_writer(fifo, proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(DEADLINE) == 130
        os.close(writer)
        assert proc.stderr is not None
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(DEADLINE)
        assert proc.stderr is not None
        proc.stderr.close()


def _open_writer(fifo: Path, proc: subprocess.Popen[str]) -> int:
    """Return the FIFO's writing end, opened as soon as ``proc`` opens its reading end."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:  # ENXIO: no reader yet
            if exc.errno != errno.ENXIO:
                raise
            time.sleep(0.01)
    pytest.fail("the command never opened its input")


def test_lines_helper_waits_for_a_marker() -> None:
    """Lines.until returns every line up to the first holding the marker."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "print('a'); print('b marker'); print('c')"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert Lines(proc.stdout).until("marker") == ["a", "b marker"]
    proc.wait(DEADLINE)
    assert proc.stdout is not None
    proc.stdout.close()
