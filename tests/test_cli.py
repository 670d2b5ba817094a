"""Tests for the command line: the real command in subprocesses, over loopback sockets."""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from amphora_heartbeat.cli import build_parser, main
from amphora_heartbeat.cli.decode import read_datagram
from amphora_heartbeat.envelope import wrap_envelope
from amphora_heartbeat.options import OptionError, parse_keys
from amphora_heartbeat.sender import parse_address
from amphora_heartbeat.testing import build_message

DEADLINE = 20.0
KEY = "cli-test-key-do-not-print"


def command(*args: str) -> list[str]:
    """Return the argv that runs the installed command line."""
    return [sys.executable, "-m", "amphora_heartbeat", *args]


def run(*args: str, key: str | None = KEY, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    """Run one command to its end, the key in the environment."""
    env = dict(os.environ)
    env.pop("AMPHORA_HEARTBEAT_KEY", None)
    if key is not None:
        env["AMPHORA_HEARTBEAT_KEY"] = key
    result = subprocess.run(
        command(*args), input=stdin, capture_output=True, env=env, timeout=60, check=False
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


class Lines:
    """Lines of a running process's stdout, read by a thread, awaited with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(target=self._read, args=(stdout,), daemon=True).start()

    def _read(self, stdout: object) -> None:
        for line in stdout:  # type: ignore[attr-defined]
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def next(self) -> str:
        """Return the next line, failing after the deadline or at end of output."""
        try:
            line = self.queue.get(timeout=DEADLINE)
        except queue.Empty:
            pytest.fail("no output line in time")
        if line is None:
            pytest.fail("the process ended early")
        return line


@pytest.fixture
def listener(request: pytest.FixtureRequest) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    """A running `listen` command on an ephemeral port (JSON when parametrized so)."""
    extra = ["--json"] if getattr(request, "param", False) else []
    env = dict(os.environ, AMPHORA_HEARTBEAT_KEY=KEY)
    proc = subprocess.Popen(
        command("listen", "--bind", "127.0.0.1:0", *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        yield proc, Lines(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(DEADLINE)
        assert proc.stdout is not None
        assert proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def test_listen_and_send(listener: tuple[subprocess.Popen[str], Lines], tmp_path: Path) -> None:
    """listen prints its address, each heartbeat sent and each rejection; SIGTERM ends it."""
    proc, lines = listener
    first = lines.next()
    assert first.startswith("listening on 127.0.0.1:")
    address = first.removeprefix("listening on ")
    assert parse_address(address)[1] > 0
    message = build_message(version=3, seq=42, listeners=2, members=2, member_status="DOWN")
    path = tmp_path / "message.json"
    path.write_text(json.dumps(message))
    sent = run("send", "--to", address, str(path))
    assert sent.returncode == 0, sent.stderr
    line = lines.next()
    assert line.startswith("heartbeat from 127.0.0.1: amphora " + message["id"])
    assert "seq 42 ver 3" in line
    assert "4 members (DOWN 4)" in line
    sent = run("send", "--to", address, "--codec", "zstd", "--digest", "raw", "-", stdin=b"{}")
    assert sent.returncode == 0
    assert "refuse" in sent.stderr
    assert "malformed" in lines.next()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.sendto(b"junk", parse_address(address))
    assert "too_short" in lines.next()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(DEADLINE) == 0
    assert proc.stderr is not None
    assert KEY not in proc.stderr.read()


@pytest.mark.parametrize("listener", [True], indirect=True)
def test_listen_json_and_sigint(listener: tuple[subprocess.Popen[str], Lines]) -> None:
    """listen --json prints one JSON object per heartbeat and rejection; SIGINT exits 0."""
    proc, lines = listener
    address = parse_address(lines.next().removeprefix("listening on "))
    message = build_message(version=1, seq=7)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.sendto(wrap_envelope(message, KEY), address)
        raw.sendto(wrap_envelope(message, "wrong"), address)
    event = json.loads(lines.next())
    assert event["event"] == "heartbeat"
    assert event["message"] == message
    assert event["source"] == "127.0.0.1"
    rejected = json.loads(lines.next())
    assert rejected["event"] == "rejected"
    assert rejected["reason"] == "invalid_hmac"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(DEADLINE) == 0


@pytest.mark.parametrize("form", ["raw", "hex", "base64"])
def test_decode_forms(tmp_path: Path, form: str) -> None:
    """decode reads raw, hex and base64 captures and names codec, trailer and key."""
    message = build_message(version=2, seq=9)
    datagram = wrap_envelope(message, KEY)
    data = {
        "raw": datagram,
        "hex": datagram.hex().encode() + b"\n",
        "base64": base64.encodebytes(datagram),
    }[form]
    path = tmp_path / "capture"
    path.write_bytes(data)
    result = run("decode", str(path))
    assert result.returncode == 0, result.stderr
    head, _, rest = result.stdout.partition("\n")
    assert head.startswith(f"input: {form}, {len(datagram)} bytes; codec: zlib; trailer: hex")
    assert "key: 1 of 1" in head
    assert json.loads(rest.rsplit("\n", 2)[0]) == message
    assert KEY not in result.stdout + result.stderr


def test_decode_with_key_ring_file_from_stdin(tmp_path: Path) -> None:
    """A key file of several lines is a key ring; decode says which key verified."""
    key_file = tmp_path / "keys"
    key_file.write_text("old-key\nnew-key\n", encoding="utf-8")
    datagram = wrap_envelope(build_message(), "new-key")
    result = run("decode", "--key-file", str(key_file), stdin=datagram, key=None)
    assert result.returncode == 0, result.stderr
    assert "key: 2 of 2" in result.stdout


def test_decode_refused_exits_1() -> None:
    """A datagram that does not verify is reported with its reason and exit status 1."""
    result = run("decode", "-", stdin=wrap_envelope(build_message(), "other"))
    assert result.returncode == 1
    assert "invalid_hmac" in result.stdout


def test_missing_key_is_a_usage_error() -> None:
    """Without any key the command says how to give one (exit 2)."""
    result = run("decode", "-", key=None)
    assert result.returncode == 2
    assert "--key-file" in result.stderr


def test_demo_runs_and_prints_snapshots() -> None:
    """demo --duration 2 prints plain snapshots and a final table of statuses, exit 0."""
    result = run("demo", "--duration", "2", key=None)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("--- snapshot at") >= 1
    assert "=== final" in out
    final = out.rsplit("=== final", 1)[1]
    assert final.count("load balancer ") == 3
    assert "ONLINE" in final
    assert "ERROR" in final  # the first member is DOWN from the start
    assert "DEGRADED" in final
    assert "rejected 0" in final


def test_help_lists_every_command() -> None:
    """--help names listen, send, decode, demo, and fleet when installed."""
    result = run("--help", key=None)
    assert result.returncode == 0
    for name in ("listen", "send", "decode", "demo", "fleet"):
        assert name in result.stdout


def test_parse_keys() -> None:
    """One trailing newline is ignored; several lines make a ring; empty keys are refused."""
    assert parse_keys("k\n") == "k"
    assert parse_keys("k") == "k"
    assert parse_keys("a\nb\n") == ["a", "b"]
    with pytest.raises(OptionError, match="empty"):
        parse_keys("a\n\nb")


def test_read_datagram_prefers_raw_magic() -> None:
    """A zlib or zstd datagram is taken as raw even if it looked like text."""
    datagram = wrap_envelope(build_message(), "k")
    assert read_datagram(datagram) == (datagram, "raw")
    assert read_datagram(b"\x00\x01") == (b"\x00\x01", "raw")


def test_main_in_process_send_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """main() returns 1 with a message when the controller address is not an IP address."""
    path = tmp_path / "message.json"
    path.write_text(json.dumps(build_message()))
    status = main(["send", "--key", "k", "--to", "nowhere:5555", str(path)])
    assert status == 1
    assert "not an IP address" in capsys.readouterr().err


def test_parser_builds() -> None:
    """The parser builds with every installed plugin command."""
    assert build_parser().prog == "amphora-heartbeat"


def test_demo_redraws_live_on_a_terminal() -> None:
    """On a terminal the demo redraws its table in place and ends with the final table."""
    import pty

    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        command("demo", "--duration", "1.5", "--amphorae", "2"),
        stdout=secondary,
        stderr=subprocess.PIPE,
    )
    os.close(secondary)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    assert proc.wait(DEADLINE) == 0
    assert proc.stderr is not None
    proc.stderr.close()
    out = b"".join(chunks).decode()
    assert out.count("\x1b[H\x1b[2J") >= 2
    assert "=== final" in out
    assert "--- snapshot" not in out


@pytest.mark.parametrize(
    "argv",
    [
        ["decode", "--key-file", "/nonexistent/key", "-"],
        ["decode", "--key", "k", "/nonexistent/capture"],
        ["send", "--key", "k", "--to", "127.0.0.1:9", "/nonexistent/message.json"],
        ["demo", "--duration", "0"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Unreadable files and impossible values are one-line usage errors (exit 2)."""
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err


def test_send_refuses_non_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """send refuses JSON that is not an object, and JSON that is not JSON."""
    path = tmp_path / "m.json"
    path.write_text("[1, 2]")
    assert main(["send", "--key", "k", "--to", "127.0.0.1:9", str(path)]) == 2
    path.write_text("{nope")
    assert main(["send", "--key", "k", "--to", "127.0.0.1:9", str(path)]) == 2
    assert "JSON" in capsys.readouterr().err


def test_decode_malformed_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A datagram that verifies but holds no valid heartbeat prints the message, then exit 1."""
    path = tmp_path / "capture"
    path.write_bytes(wrap_envelope({"seq": 1}, "k"))
    assert main(["decode", "--key", "k", "--key", "k2", str(path)]) == 1
    out = capsys.readouterr().out
    assert "key: 1 of 2" in out
    assert "rejected: malformed" in out
