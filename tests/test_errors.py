"""The rejection family: one class per reason, stable reason strings, safe messages."""

from __future__ import annotations

import pytest

from amphora_heartbeat import errors
from amphora_heartbeat.errors import (
    REASONS,
    BadIdError,
    HeartbeatError,
    InvalidHMACError,
    MalformedError,
    NotDecompressibleError,
    NotJSONError,
    NotObjectError,
    TooLargeError,
    TooShortError,
)

CLASSES = [
    (TooShortError, "too_short"),
    (InvalidHMACError, "invalid_hmac"),
    (NotDecompressibleError, "not_decompressible"),
    (TooLargeError, "too_large"),
    (NotJSONError, "not_json"),
    (NotObjectError, "not_object"),
    (MalformedError, "malformed"),
    (BadIdError, "bad_id"),
]


@pytest.mark.parametrize(("cls", "reason"), CLASSES)
def test_each_class_has_its_stable_reason(cls: type[HeartbeatError], reason: str) -> None:
    """Each rejection class carries the counter name the issue fixes."""
    assert issubclass(cls, HeartbeatError)
    assert cls.reason == reason


def test_reasons_list_every_reason_once_in_pipeline_order() -> None:
    """REASONS is every reason, in the order a packet meets the checks, without repeats."""
    assert tuple(reason for _, reason in CLASSES) == REASONS
    assert len(set(REASONS)) == len(REASONS)


def test_every_exported_subclass_is_in_reasons() -> None:
    """No rejection class exists without a counter name in REASONS."""
    exported = [getattr(errors, name) for name in errors.__all__]
    subclasses = {c for c in exported if isinstance(c, type) and issubclass(c, HeartbeatError)}
    assert {c.reason for c in subclasses if c is not HeartbeatError} == set(REASONS)


def test_bad_id_is_a_malformed_error_with_its_own_counter() -> None:
    """BadIdError is caught by except MalformedError, keeps path and problem, counts apart."""
    exc = BadIdError("listeners.l\x00", "listener id must be visible ASCII")
    assert isinstance(exc, MalformedError)
    assert exc.reason == "bad_id" != MalformedError.reason
    assert exc.path == "listeners.l\\x00"
    assert str(exc) == "listeners.l\\x00: listener id must be visible ASCII"


def test_heartbeat_error_keeps_its_message() -> None:
    """A rejection's message is its str() and its .message."""
    exc = NotJSONError("payload is not valid JSON")
    assert str(exc) == exc.message == "payload is not valid JSON"
    assert exc.reason == "not_json"


def test_malformed_error_names_the_path() -> None:
    """MalformedError puts the path before the problem and keeps both."""
    exc = MalformedError("listeners.l1.stats.rx", "expected a non-negative integer")
    assert str(exc) == "listeners.l1.stats.rx: expected a non-negative integer"
    assert exc.path == "listeners.l1.stats.rx"
    assert exc.problem == "expected a non-negative integer"


def test_malformed_error_without_path_is_just_the_problem() -> None:
    """A message-level problem has no path prefix."""
    assert str(MalformedError("", "a message must be an object")) == "a message must be an object"


@pytest.mark.parametrize("bad", ["l\n2024 forged log line", "l\x1b[31m", "l\ud800"])
def test_malformed_error_escapes_sender_chosen_ids(bad: str) -> None:
    """Ids with newlines, control characters or lone surrogates are escaped in messages."""
    exc = MalformedError(f"listeners.{bad}", "expected a listener object")
    text = str(exc)
    assert "\n" not in text
    assert "\x1b" not in text
    text.encode("utf-8")  # no lone surrogate left to break a log file
    assert text.startswith("listeners.l\\")


def test_printable_unicode_ids_are_kept_verbatim() -> None:
    """Printable non-ASCII ids stay readable in messages."""
    assert MalformedError("listeners.ключ", "x").path == "listeners.ключ"
