"""Tests for the option parsers the command line shares (amphora_heartbeat.options)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amphora_heartbeat.options import (
    MAX_SECONDS,
    OptionError,
    parse_count,
    parse_database_url,
    parse_fraction,
    parse_seconds,
)


@given(st.text())
def test_any_text_gives_a_usable_value_or_an_option_error(text: str) -> None:
    """Whatever an operator types, each parser returns a value in bounds or an OptionError."""
    for parse, check in (
        (parse_seconds, lambda v: 0 < v <= MAX_SECONDS),
        (parse_count, lambda v: 1 <= v <= 2**31 - 1),
        (parse_fraction, lambda v: 0 <= v <= 1),
        (parse_database_url, lambda v: bool(v.strip())),
    ):
        try:
            value = parse(text)
        except OptionError:
            continue
        assert check(value), (parse.__name__, text)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "0", "-1", "1e300", str(MAX_SECONDS + 1)])
def test_seconds_refuses_what_cannot_be_a_time(text: str) -> None:
    """NaN, infinities, zero, negatives and more than a year are refused."""
    with pytest.raises(OptionError, match="a year"):
        parse_seconds(text)


def test_seconds_bounds() -> None:
    """A year is the most; zero only where asked for; the message names a non-number."""
    assert parse_seconds(str(MAX_SECONDS)) == MAX_SECONDS
    assert parse_seconds("0", zero=True) == 0
    assert math.isclose(parse_seconds("0.001"), 0.001)
    with pytest.raises(OptionError, match="a number of seconds, got 'soon'"):
        parse_seconds("soon")


def test_fraction_and_database_url() -> None:
    """A fraction is 0 to 1 (NaN refused); a database URL is not empty or blank."""
    assert parse_fraction("0.25") == 0.25
    for text in ("nan", "1.5", "-0.1", "half"):
        with pytest.raises(OptionError, match="fraction"):
            parse_fraction(text)
    assert parse_database_url("sqlite:///x.db") == "sqlite:///x.db"
    for text in ("", "  "):
        with pytest.raises(OptionError, match="database URL"):
            parse_database_url(text)
