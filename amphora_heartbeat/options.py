"""Values an operator types, shared by the command line and the configuration file.

Each parser takes text and returns a checked value or raises :class:`OptionError`
(a :class:`ValueError`) with a one-line message naming what is wrong, never the
value of a key.  Neither the command line nor the manager has its own copy.
"""

from __future__ import annotations

from .envelope import KeyRing
from .sender import format_address, parse_address

__all__ = [
    "MAX_SECONDS",
    "OptionError",
    "format_address",
    "parse_address",
    "parse_count",
    "parse_database_url",
    "parse_fraction",
    "parse_keys",
    "parse_seconds",
]


class OptionError(ValueError):
    """A value an operator gave cannot be used; the message says why in one line."""


def parse_keys(text: str) -> KeyRing:
    """Return the key (or key ring, one key a line) a key file or variable holds.

    One trailing newline is ignored; an empty key (an empty text, or an empty
    line between keys) is refused.
    """
    text = text[:-1] if text.endswith("\n") else text
    lines = text.split("\n")
    if any(not line for line in lines):
        raise OptionError("a key file (or variable) must not hold an empty key")
    return lines if len(lines) > 1 else lines[0]


#: The longest time an option takes, in seconds: a year.  Far above any sensible
#: timeout or interval, and far below what select() and datetime can hold.
MAX_SECONDS = 365 * 86400


def parse_seconds(text: str, *, zero: bool = False) -> float:
    """Return a number of seconds above zero (or at least zero, if ``zero``), at most a year.

    NaN, infinities and more than :data:`MAX_SECONDS` are refused.
    """
    value = _number(text, "a number of seconds")
    if not (0 <= value <= MAX_SECONDS) or (value == 0 and not zero):
        bound = "from 0" if zero else "above 0"
        raise OptionError(
            f"expected a number of seconds {bound} to {MAX_SECONDS} (a year), got {text!r}"
        )
    return value


def parse_fraction(text: str) -> float:
    """Return a fraction from 0 to 1 (a share of a fleet, say)."""
    value = _number(text, "a fraction from 0 to 1")
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise OptionError(f"expected a fraction from 0 to 1, got {text!r}")
    return value


def parse_database_url(text: str) -> str:
    """Return a database URL, refusing an empty one (SQLite would open a throwaway file)."""
    if not text.strip():
        raise OptionError(
            f"expected a database URL (sqlite:///PATH or postgresql://...), got {text!r}"
        )
    return text


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise OptionError(f"expected {what}, got {text!r}") from None


def parse_count(text: str, *, minimum: int = 1, maximum: int = 2**31 - 1) -> int:
    """Return a whole number between ``minimum`` and ``maximum``."""
    try:
        value = int(text)
    except ValueError:
        raise OptionError(f"expected a whole number, got {text!r}") from None
    if not minimum <= value <= maximum:
        raise OptionError(f"expected a whole number from {minimum} to {maximum}, got {text!r}")
    return value
