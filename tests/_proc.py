"""A manager process for the operations tests (metrics, systemd, logs): start, read, stop."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from _net import DEADLINE

KEY = "ops-test-key"


def wait_for(condition: Callable[[], object], what: str, timeout: float = 6 * DEADLINE) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Manager:
    """A ``python -m amphora_heartbeat manager`` process on 127.0.0.1, port 0."""

    def __init__(
        self, db: str, *options: str, env: Mapping[str, str] | None = None, metrics: bool = False
    ) -> None:
        """Start it and read its ``listening on`` (and ``metrics on``) lines."""
        argv = [sys.executable, "-m", "amphora_heartbeat", "manager", "--db", db,
                "--bind", "127.0.0.1:0", *options]  # fmt: skip
        if metrics:
            argv += ["--metrics", "127.0.0.1:0"]
        environ = {**os.environ, "AMPHORA_HEARTBEAT_KEY": KEY, **(env or {})}
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
            start_new_session=True,  # its own process group: kill() takes its workers too
        )
        self._pending = b""
        #: What it printed up to its ``listening on`` line (with --workers, the workers' too).
        self.lines = [self._line()]
        while self.lines[-1] and not self.lines[-1].startswith("listening on "):
            self.lines.append(self._line())
        listening = self.lines[-1]
        if not listening.startswith("listening on 127.0.0.1:"):
            self.proc.kill()
            raise AssertionError(f"did not start: {self.lines} {self.proc.communicate()[1]}")
        self.port = int(listening.rsplit(":", 1)[1])
        lines = self.lines
        #: The metrics URL the manager printed, if asked for.
        self.metrics_url = next((x.split()[-1] for x in lines if x.startswith("metrics on")), "")

    def _line(self) -> str:
        # Read the pipe's bytes directly: a buffered readline may hold the next line
        # where select() cannot see it.
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + 6 * DEADLINE
        while b"\n" not in self._pending:
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                return ""
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode().strip()

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process."""
        self.proc.send_signal(signum)

    def stop(self) -> tuple[dict[str, float], str]:
        """SIGTERM it; return its final counters and its stderr (exit status 0 checked)."""
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=6 * DEADLINE)
        assert self.proc.returncode == 0, err
        counters: dict[str, float] = json.loads(out.strip().splitlines()[-1])
        return counters, err

    def kill(self) -> None:
        """Kill it and its workers if they still run (cleanup after a failed test)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.communicate()


def sqlite_url(path: Path) -> str:
    """Return the ``--db`` URL of an SQLite file."""
    return f"sqlite:///{path}"
