"""Run the real command line in subprocesses: shared by the command-line tests."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
from typing import IO

import pytest

DEADLINE = 20.0
KEY = "cli-test-key-do-not-print"
PROG = "amphora-heartbeat"


def command(*args: str) -> list[str]:
    """Return the argv that runs the installed command line."""
    return [sys.executable, "-m", "amphora_heartbeat", *args]


def environment(key: str | None = KEY) -> dict[str, str]:
    """Return the environment of a command: the key in AMPHORA_HEARTBEAT_KEY, or none."""
    env = dict(os.environ)
    env.pop("AMPHORA_HEARTBEAT_KEY", None)
    if key is not None:
        env["AMPHORA_HEARTBEAT_KEY"] = key
    return env


def run(*args: str, key: str | None = KEY, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    """Run one command to its end, the key in the environment."""
    result = subprocess.run(
        command(*args),
        input=stdin,
        capture_output=True,
        env=environment(key),
        timeout=60,
        check=False,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    """Assert the exit status and one `amphora-heartbeat COMMAND: error:` line; return it."""
    assert result.returncode == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.stderr
    command_name = result.args[3] if len(result.args) > 3 else ""
    assert errors[0].startswith(f"{PROG} {command_name}: error: "), errors[0]
    return errors[0]


def closed_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on (an unreachable server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Lines:
    """Lines of a running process's stream, read by a thread, awaited with a deadline."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None
        self.queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
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

    def until(self, text: str) -> list[str]:
        """Return the lines up to and including the first one holding ``text``."""
        seen = [self.next()]
        while text not in seen[-1]:
            seen.append(self.next())
        return seen
