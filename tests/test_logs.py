"""Tests for amphora_heartbeat.logs: rate-limited lines, counted summaries, time passed in."""

from __future__ import annotations

import logging
import threading

import pytest

from amphora_heartbeat.logs import OTHER_REASONS, RateLimitedLogger

NAME = "amphora_heartbeat.test_logs"


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture this test logger's records at every level."""
    caplog.set_level(logging.DEBUG, logger=NAME)
    return caplog


def _mine(records: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in records.records if r.name == NAME]


def _messages(records: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in _mine(records)]


def test_one_line_per_reason_per_interval_then_the_count(records: pytest.LogCaptureFixture) -> None:
    """A flood of one reason logs one line per window, then one line with the count held back."""
    limited = RateLimitedLogger(logging.getLogger(NAME), interval=10.0)
    logged = [
        limited.warning("member_status", "member %s reported %r", i, "X", now=100.0)
        for i in range(500)
    ]
    assert logged == [True] + [False] * 499
    assert limited.suppressed == {"member_status": 499}
    assert limited.warning("member_status", "member %s reported %r", 500, "X", now=110.0)
    assert _messages(records) == [
        "member 0 reported 'X'",
        "499 more member_status lines not logged (at most 1 per 10 s)",
        "member 500 reported 'X'",
    ]


def test_reasons_are_limited_separately(records: pytest.LogCaptureFixture) -> None:
    """A flood of one reason does not hide the first line of another."""
    limited = RateLimitedLogger(logging.getLogger(NAME), interval=10.0, burst=2)
    for i in range(5):
        limited.warning("a", "a%d", i, now=1.0)
        limited.warning("b", "b%d", i, now=1.0)
    assert _messages(records) == ["a0", "b0", "a1", "b1"]
    assert limited.suppressed == {"a": 3, "b": 3}


def test_window_ends_at_interval_exactly(records: pytest.LogCaptureFixture) -> None:
    """A line just inside the window is held back; one at start + interval opens a new window."""
    limited = RateLimitedLogger(logging.getLogger(NAME), interval=5.0)
    assert limited.warning("r", "first", now=0.0)
    assert not limited.warning("r", "held", now=4.999)
    assert limited.warning("r", "next", now=5.0)
    assert _messages(records)[-1] == "next"


def test_clock_is_read_only_without_now(records: pytest.LogCaptureFixture) -> None:
    """With no now, the injected clock decides the windows; no sleeping needed."""
    ticks = iter([0.0, 1.0, 30.0])
    limited = RateLimitedLogger(logging.getLogger(NAME), interval=10.0, clock=lambda: next(ticks))
    assert limited.warning("r", "one")
    assert not limited.warning("r", "two")
    assert limited.warning("r", "three")
    assert _messages(records) == ["one", "1 more r lines not logged (at most 1 per 10 s)", "three"]


def test_a_clock_stepped_back_starts_a_new_window(records: pytest.LogCaptureFixture) -> None:
    """A now before the window's start (wall clock stepped back) is not held back for ever."""
    limited = RateLimitedLogger(logging.getLogger(NAME), interval=10.0)
    assert limited.warning("r", "late", now=1_000_000.0)
    assert limited.warning("r", "after the step", now=5.0)
    assert not limited.warning("r", "held", now=6.0)


def test_flush_reports_counts_of_windows_that_are_over(records: pytest.LogCaptureFixture) -> None:
    """flush writes the held-back count of each finished window once, and only those."""
    limited = RateLimitedLogger(logging.getLogger(NAME), interval=10.0)
    limited.warning("done", "d", now=0.0)
    limited.warning("done", "d", now=1.0)
    limited.warning("quiet", "q", now=0.0)
    limited.warning("live", "l", now=8.0)
    limited.warning("live", "l", now=9.0)
    assert limited.flush(now=12.0) == 1
    assert limited.flush(now=12.0) == 0
    assert _messages(records)[-1] == "1 more done lines not logged (at most 1 per 10 s)"
    assert limited.suppressed == {"live": 1}


def test_disabled_level_logs_and_counts_nothing(records: pytest.LogCaptureFixture) -> None:
    """Below the logger's level nothing is formatted, logged or counted."""
    logger = logging.getLogger(NAME)
    limited = RateLimitedLogger(logger)
    logger.setLevel(logging.ERROR)
    try:
        assert not limited.warning("r", "hidden %s", object(), now=0.0)
        assert limited.suppressed == {}
        assert limited.error("r", "shown", now=0.0)
    finally:
        logger.setLevel(logging.NOTSET)
    assert _messages(records) == ["shown"]


def test_reasons_are_bounded(records: pytest.LogCaptureFixture) -> None:
    """Beyond max_reasons, new reasons share one window; finished ones make room again."""
    limited = RateLimitedLogger(logging.getLogger(NAME), interval=10.0, max_reasons=2)
    assert limited.warning("a", "a", now=0.0)
    assert limited.warning("b", "b", now=0.0)
    assert limited.warning("c", "c", now=0.0)  # first line of the shared window
    assert not limited.warning("d", "d", now=0.0)
    assert limited.suppressed == {OTHER_REASONS: 1}
    assert limited.warning("e", "e", now=20.0)  # a and b are over: e gets its own window
    assert "e" in limited._windows
    assert len(limited._windows) <= 3


def test_exc_info_and_caller_location(records: pytest.LogCaptureFixture) -> None:
    """error(exc_info=True) attaches the traceback; records name the caller's line, not logs.py."""
    limited = RateLimitedLogger(logging.getLogger(NAME))
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        limited.error("handler", "handler failed", now=0.0, exc_info=True)
    limited.log(logging.INFO, "info", "plain", now=0.0)
    mine = _mine(records)
    assert mine[0].exc_info is not None
    assert mine[0].exc_info[0] is RuntimeError
    assert all(r.filename == "test_logs.py" for r in mine)


def test_summary_line_names_the_caller_too(records: pytest.LogCaptureFixture) -> None:
    """The held-back count, logged on the next line or by flush, names the caller's file."""
    limited = RateLimitedLogger(logging.getLogger(NAME), interval=1.0)
    limited.warning("r", "x", now=0.0)
    limited.warning("r", "x", now=0.5)
    limited.warning("r", "x", now=2.0)
    limited.warning("r", "x", now=2.5)
    limited.flush(now=10.0)
    summaries = [r for r in _mine(records) if "more r lines" in r.getMessage()]
    assert len(summaries) == 2
    assert all(r.filename == "test_logs.py" for r in summaries)


def test_threads_lose_no_count() -> None:
    """Lines from many threads are logged or counted exactly once each."""
    limited = RateLimitedLogger(logging.getLogger(NAME), burst=3)
    results: list[bool] = []
    lock = threading.Lock()

    def work() -> None:
        mine = [limited.warning("r", "x", now=0.0) for _ in range(1000)]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 3
    assert limited.suppressed == {"r": 3997}


@pytest.mark.parametrize(
    "options", [{"interval": 0.0}, {"interval": -1.0}, {"burst": 0}, {"max_reasons": 0}]
)
def test_bad_settings_are_value_errors(options: dict[str, float]) -> None:
    """A non-positive interval, burst or max_reasons is the caller's mistake."""
    with pytest.raises(ValueError, match=r"interval|burst"):
        RateLimitedLogger(logging.getLogger(NAME), **options)  # type: ignore[arg-type]


def test_never_configures_logging() -> None:
    """Making and using one adds no handler anywhere and leaves levels alone."""
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    limited = RateLimitedLogger(logging.getLogger(NAME))
    limited.warning("r", "x", now=0.0)
    assert (list(root.handlers), root.level) == before
    assert logging.getLogger(NAME).handlers == []
    assert "1 per reason per 10 s" in repr(limited)


def test_without_a_clock_now_is_required() -> None:
    """The module reads no clock of its own: with none given, a call without now is an error."""
    limited = RateLimitedLogger(logging.getLogger(NAME))
    assert limited.warning("r", "x", now=0.0)
    with pytest.raises(TypeError, match="now="):
        limited.warning("r", "x")
    with pytest.raises(TypeError, match="now="):
        limited.flush()
