"""Tests for the command line: the real command in subprocesses, over loopback sockets."""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import pty
import signal
import socket
import struct
import subprocess
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest
from _cli import DEADLINE, KEY, Lines, command, run

from amphora_heartbeat.cli import build_parser, main
from amphora_heartbeat.cli.decode import read_datagram
from amphora_heartbeat.cli.demo import fit_table
from amphora_heartbeat.envelope import wrap_envelope
from amphora_heartbeat.options import OptionError, parse_keys
from amphora_heartbeat.sender import parse_address
from amphora_heartbeat.testing import build_message


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
        yield proc, Lines(proc.stdout)
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
    assert line.startswith("heartbeat from 127.0.0.1:")
    assert f": amphora {message['id']} seq 42 ver 3: " in line
    assert "4 members (DOWN 4)" in line
    sent = run("send", "--to", address, "--codec", "zstd", "--digest", "raw", "-", stdin=b"{}")
    assert sent.returncode == 0
    assert "refuse" in sent.stderr
    assert "malformed" in lines.next()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.bind(("127.0.0.1", 0))
        raw.sendto(b"junk", parse_address(address))
        port = raw.getsockname()[1]
        raw.sendto(
            wrap_envelope(build_message(listeners=1, members=1), KEY), parse_address(address)
        )
    assert lines.next().startswith(f"rejected from 127.0.0.1:{port}: too_short: ")
    line = lines.next()
    assert line.startswith(f"heartbeat from 127.0.0.1:{port}: amphora ")
    assert line.endswith(": 1 listener (OPEN 1), 1 pool (UP 1), 1 member (UP 1)")
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
        raw.bind(("127.0.0.1", 0))
        raw.sendto(wrap_envelope(message, KEY), address)
        raw.sendto(wrap_envelope(message, "wrong"), address)
        port = raw.getsockname()[1]
    event = json.loads(lines.next())
    assert event["event"] == "heartbeat"
    assert event["message"] == message
    assert (event["source"], event["source_port"]) == ("127.0.0.1", port)
    rejected = json.loads(lines.next())
    assert rejected["event"] == "rejected"
    assert rejected["reason"] == "invalid_hmac"
    assert rejected["source_port"] == port
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
    """main() returns 2 when the controller address is a name, not an IP address."""
    path = tmp_path / "message.json"
    path.write_text(json.dumps(build_message()))
    status = main(["send", "--key", "k", "--to", "nowhere:5555", str(path)])
    assert status == 2
    assert "not an IP address" in capsys.readouterr().err


def test_parser_builds() -> None:
    """The parser builds with every installed plugin command."""
    assert build_parser().prog == "amphora-heartbeat"


def _demo_on_a_terminal(rows: int, columns: int, *args: str) -> str:
    """Run demo with stdout on a pseudo-terminal of that size; return all it wrote."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("LINES", "COLUMNS")}
    proc = subprocess.Popen(
        command("demo", *args), stdout=secondary, stderr=subprocess.PIPE, env=env
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
    return b"".join(chunks).decode().replace("\r\n", "\n")  # the terminal's newline


def test_demo_redraws_in_place_within_the_terminal() -> None:
    """On a 24-row terminal: one clear, frames redrawn from home that fit, one final frame."""
    out = _demo_on_a_terminal(24, 100, "--duration", "1.6", "--amphorae", "4")
    assert out.count("\x1b[2J") == 1  # the first frame only: no clear per frame
    start, *frames = out.split("\x1b[H")
    assert start == ""
    assert frames[0] == "\x1b[2J"
    live, final = frames[1:-1], frames[-1]
    assert live, "no live frame"
    for frame in live:
        assert frame.endswith("\x1b[J")  # erase below the frame
        lines = frame.removesuffix("\x1b[J").split("\n")[:-1]
        assert len(lines) <= 23  # the cursor's line stays on the screen
        assert all(line.endswith("\x1b[K") for line in lines)  # erase each line's end
        assert lines[-1].startswith("... 3 more load balancers (")
        assert frame.count("load balancer ") == 1
    assert final.startswith("=== final")
    assert final.count("load balancer ") == 4  # the final frame is whole
    assert "--- snapshot" not in out


def test_demo_fits_long_lines_to_the_width() -> None:
    """Each live line is cut to the terminal's width, so none wraps."""
    out = _demo_on_a_terminal(60, 40, "--duration", "1.2", "--amphorae", "1")
    live = out.split("\x1b[H")[2:-1]
    assert live
    for frame in live:
        for line in frame.removesuffix("\x1b[J").split("\n")[:-1]:
            assert len(line.removesuffix("\x1b[K")) <= 40


def test_fit_table_keeps_whole_load_balancers() -> None:
    """fit_table shows whole blocks while they fit and counts the rest by status."""
    header = ["title", ""]
    blocks = [("ONLINE", ["a", "a1"]), ("DEGRADED", ["b", "b1"]), ("ONLINE", ["c", "c1"])]
    everything = ["title", "", "a", "a1", "b", "b1", "c", "c1"]
    assert fit_table(header, blocks, 8) == everything
    assert fit_table(header, blocks, 7) == [
        "title", "", "a", "a1", "b", "b1", "... 1 more load balancer (ONLINE 1) below the screen"
    ]  # fmt: skip
    assert fit_table(header, blocks, 5)[-1] == (
        "... 2 more load balancers (DEGRADED 1, ONLINE 1) below the screen"
    )
    assert fit_table(header, blocks, 1) == ["title"]


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


def _options() -> list[tuple[str, argparse.Action]]:
    """Return (command, action) for every option and argument of every command."""
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return [
        (name, action)
        for name, parser in commands.choices.items()
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction)
    ]


def test_every_option_has_help_and_shows_its_default() -> None:
    """Each option of each command has a help line; each optional value names its default."""
    flags = (argparse._StoreTrueAction, argparse._StoreFalseAction)
    for name, action in _options():
        assert action.help, f"{name} {action.option_strings or action.dest}: no help"
        if action.required or isinstance(action, flags):
            continue  # a flag is off unless given
        assert "default" in action.help, f"{name} {action.option_strings or action.dest}"
