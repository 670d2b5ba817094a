"""The ``manager`` command's status line and its unknown-amphora warning, in subprocesses."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from _cli import DEADLINE, Lines, command, environment, run
from _docs import DOCS, page_blocks

from amphora_heartbeat.cli.status import SEEDING_HOWTO, StatusLine

HOWTO, _, SECTION = SEEDING_HOWTO.partition(", ")


@contextmanager
def manager(db: Path, *extra: str) -> Iterator[tuple[str, Lines, subprocess.Popen[str]]]:
    """Run `manager` on a SQLite file; yield its address, its stderr lines and the process."""
    proc = subprocess.Popen(
        command("manager", "--db", f"sqlite:///{db}", "--bind", "127.0.0.1:0", *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("listening on "), first
        yield first.removeprefix("listening on ").strip(), Lines(proc.stderr), proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(DEADLINE)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _stop(proc: subprocess.Popen[str]) -> dict[str, float]:
    """SIGTERM the manager; return the counters it prints at the end."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(DEADLINE) == 0
    assert proc.stdout is not None
    counters: dict[str, float] = json.loads(proc.stdout.read())
    return counters


def _seeding_recipe() -> str:
    """Return the python block of the how-to's section on seeding a database."""
    text = (DOCS.parent / HOWTO).read_text(encoding="utf-8")
    heading = f"## {SECTION.strip(chr(39))}\n"
    assert heading in text, f"{HOWTO} has no section {heading!r}"
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    (code,) = [body for kind, _, body in page_blocks(section) if kind == "python"]
    return code


def test_status_lines_and_the_unknown_amphora_warning(tmp_path: Path) -> None:
    """An empty database: status lines every interval, and one warning naming the how-to."""
    with manager(tmp_path / "empty.db", "--status-interval", "0.2") as (address, lines, proc):
        sent = run("fleet", "--to", address, "--amphorae", "3", "--count", "3", "--rate", "max")
        assert sent.returncode == 0, sent.stderr
        seen = lines.until("warning:")
        assert seen[0].startswith("received ")
        assert seen[-1].endswith(f"(see {SEEDING_HOWTO})")
        later = lines.until("received 3 (")  # status lines go on; the warning does not
        counters = _stop(proc)
    assert not [line for line in later if "warning" in line]
    assert counters["unknown_amphora"] == 3


def test_quiet_prints_the_warning_but_no_status_line(tmp_path: Path) -> None:
    """--quiet: the unknown-amphora warning is the first line on stderr, no status before it."""
    db = tmp_path / "empty.db"
    with manager(db, "--status-interval", "0.2", "--quiet") as (address, lines, proc):
        run("fleet", "--to", address, "--amphorae", "1", "--count", "1")
        assert lines.next().startswith("warning: all 1 heartbeats so far")
        _stop(proc)


def test_the_how_tos_seeding_recipe_lets_the_manager_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The how-to's recipe seeds the fleet's amphorae: the manager writes all, warns of none."""
    monkeypatch.chdir(tmp_path)
    exec(compile(_seeding_recipe(), HOWTO, "exec"), {})
    with manager(tmp_path / "health.db", "--status-interval", "0.2") as (address, lines, proc):
        sent = run("fleet", "--to", address, "--amphorae", "100", "--count", "100", "--rate", "max")
        assert sent.returncode == 0, sent.stderr
        seen = lines.until("written 100,")
        counters = _stop(proc)
    assert not [line for line in seen if "warning" in line]
    assert counters["unknown_amphora"] == 0
    assert counters["heartbeats_recorded"] == 100


def test_status_line_counts_since_the_last_line() -> None:
    """StatusLine: due every interval; '+N' counts since the last line; stale sums the held."""
    status = StatusLine(5.0, quiet=False, start=100.0)
    assert not status.due(104.9)
    assert status.due(105.0)
    counters = {"received": 10, "accepted": 9, "heartbeats_recorded": 8, "backlog": 1}
    (line,) = status.lines(counters, 105.0)
    assert line == (
        "received 10 (+10), rejected 1, written 8, unknown 0, stale 0, failed over 0, backlog 1"
    )
    assert not status.due(109.0)
    counters.update(received=25, failovers_started=2, failovers_held_back=1)
    counters.update(failovers_held_overloaded=4, stale_not_failed_over=8)
    (line,) = status.lines(counters, 110.0)
    assert re.search(r"received 25 \(\+15\).* stale 15, ", line)


def test_status_line_warns_once_and_only_when_every_heartbeat_is_unknown() -> None:
    """The warning needs every judged heartbeat unknown; it comes once; quiet keeps it."""
    status = StatusLine(1.0, quiet=True, start=0.0)
    assert status.lines({"heartbeats_judged": 0, "unknown_amphora": 0}, 1.0) == []
    assert status.lines({"heartbeats_judged": 4, "unknown_amphora": 3}, 2.0) == []
    (warning,) = status.lines({"heartbeats_judged": 5, "unknown_amphora": 5}, 3.0)
    assert warning.startswith("warning: all 5 heartbeats so far")
    assert status.lines({"heartbeats_judged": 6, "unknown_amphora": 6}, 4.0) == []
