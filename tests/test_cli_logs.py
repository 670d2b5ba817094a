"""Tests of the command line's log output: ``--log-format text|json`` and ``--log-level``.

Named apart from tests/test_logs.py (the rate limiter's tests).  The process tests
run a real manager and flood it with bad datagrams on 127.0.0.1.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
from pathlib import Path

import pytest
from _proc import KEY, Manager, sqlite_url, wait_for

from amphora_heartbeat.cli.logs import JSONFormatter, configure_logging
from amphora_heartbeat.envelope import wrap_envelope
from amphora_heartbeat.store import SQLiteStore
from amphora_heartbeat.testing import make_fleet


def _record(**extra: object) -> logging.LogRecord:
    logger = logging.getLogger("amphora_heartbeat.test")
    record = logger.makeRecord(
        logger.name, logging.WARNING, __file__, 1, "amphora %s: %d\nlines", ("a-1", 2), None,
        func="_stop_storm", extra=extra,
    )  # fmt: skip
    return record


def test_json_line_carries_time_level_logger_event_message_and_fields() -> None:
    """One JSON object on one line: the standard keys, the extra= fields, nothing else."""
    line = JSONFormatter().format(_record(event="failover_started", amphora_id="a-1", count=2))
    assert "\n" not in line
    out = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", out.pop("time"))
    assert out == {
        "level": "WARNING",
        "logger": "amphora_heartbeat.test",
        "event": "failover_started",
        "message": "amphora a-1: 2\nlines",
        "amphora_id": "a-1",
        "count": 2,
    }


def test_json_event_defaults_to_the_logging_function_and_keeps_the_traceback() -> None:
    """Without an event field the function names it; an exception goes in one field."""
    record = _record(when=object())
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    out = json.loads(JSONFormatter().format(record))
    assert out["event"] == "stop_storm"
    assert out["exception"].startswith("Traceback")
    assert "ValueError: boom" in out["exception"]
    assert out["when"].startswith("<object object")  # anything else as its str()


def test_configure_logging_replaces_the_root_handlers_and_sets_the_level() -> None:
    """configure_logging installs one handler on the root logger, in the format and level asked."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    try:
        configure_logging("text", "WARNING", stream)
        assert len(root.handlers) == 1
        logging.getLogger("amphora_heartbeat.x").info("not shown")
        logging.getLogger("amphora_heartbeat.x").warning("shown %d", 1)
        configure_logging("json", "DEBUG", stream)
        logging.getLogger("amphora_heartbeat.x").debug("as json")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    text, js = stream.getvalue().splitlines()
    assert re.fullmatch(r"\S+ \S+ WARNING amphora_heartbeat\.x: shown 1", text)
    assert json.loads(js)["message"] == "as json"


def _send_then_wait(path: Path, port: int, bad: list[bytes]) -> None:
    """Add one amphora to the manager's database, send ``bad`` then its heartbeat; wait for it.

    Datagrams are handled in order, so once the heartbeat is stored every bad one was logged.
    """
    store = SQLiteStore(str(path))
    fleet = make_fleet(1, seed=4)
    store.add_fleet(fleet)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram in bad:
            sock.sendto(datagram, ("127.0.0.1", port))
        good = wrap_envelope(fleet[0].message(), KEY)
        # Sent again until stored: the kernel may drop it at the end of a flood.
        wait_for(
            lambda: sock.sendto(good, ("127.0.0.1", port)) and store.read_health(),
            "the good heartbeat after the bad ones",
        )
    store.close()


def test_json_logs_stay_within_the_rate_limit_under_a_flood(tmp_path: Path) -> None:
    """3,000 bad datagrams of two reasons: every line is JSON, and only a handful are logged."""
    path = tmp_path / "m.db"
    manager = Manager(
        sqlite_url(path),
        "--log-format",
        "json",
        "--log-level",
        "INFO",
        "--tick",
        "0.02",
        "--status-interval",
        "0.1",
    )
    try:
        _send_then_wait(path, manager.port, [b"x" * 40, b"short"] * 1500)
    finally:
        counters, err = manager.stop()
    rejected = counters["rejected.too_short"] + counters["rejected.invalid_hmac"]
    assert rejected >= 200  # the kernel drops part of a flood (its buffer is full)
    events = [json.loads(line) for line in err.splitlines()]  # one JSON object per line
    assert {"time", "level", "logger", "event", "message"} <= set(events[0])
    rejections = [e for e in events if e["logger"] == "amphora_heartbeat.getter"]
    assert 1 <= len(rejections) <= 12  # at most a few per reason per 10 s, and summaries
    assert any(e["event"] == "create_schema" for e in events)  # INFO, as asked
    assert any(e["event"] == "status" for e in events)  # the status line, as JSON too


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_level_warning_hides_info_lines(tmp_path: Path, fmt: str) -> None:
    """--log-level WARNING drops the INFO lines a start writes; each format as asked."""
    path = tmp_path / "m.db"
    manager = Manager(sqlite_url(path), "--log-format", fmt, "--log-level", "WARNING")
    try:
        _send_then_wait(path, manager.port, [b"short"])
    finally:
        _, err = manager.stop()
    assert "created tables" not in err
    lines = err.splitlines()
    assert len(lines) == 1
    if fmt == "json":
        assert json.loads(lines[0])["level"] == "WARNING"
    else:
        assert " WARNING amphora_heartbeat.getter: rejected heartbeat datagram" in lines[0]


def test_with_workers_every_stderr_line_is_json_and_names_its_worker(tmp_path: Path) -> None:
    """--workers 2 --log-format json: the parent passes each worker's record on with "worker"."""
    path = tmp_path / "m.db"
    manager = Manager(sqlite_url(path), "--workers", "2", "--log-format", "json", "--quiet")
    try:
        _send_then_wait(path, manager.port, [b"short"])
    finally:
        counters, err = manager.stop()
    events = [json.loads(line) for line in err.splitlines()]
    rejected = [e for e in events if e["logger"] == "amphora_heartbeat.getter"]
    assert len(rejected) == 1
    assert rejected[0]["worker"] in (0, 1)
    assert counters["rejected.too_short"] == 1
