"""Typed rejections for heartbeats that arrive from the network.

Every reason a packet can be refused has one subclass of :class:`HeartbeatError`
with a stable :attr:`~HeartbeatError.reason` string, used as a counter name
(``rejected.<reason>``) by the getter, the asyncio adapter and the health manager.

Bad input from the network raises only this family.  A caller's own mistakes
(a wrong argument type, a negative limit) raise ordinary :class:`TypeError` or
:class:`ValueError`, and the operating system's problems stay :class:`OSError`.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "REASONS",
    "BadIdError",
    "HeartbeatError",
    "InvalidHMACError",
    "MalformedError",
    "NotDecompressibleError",
    "NotJSONError",
    "NotObjectError",
    "TooLargeError",
    "TooShortError",
]


class HeartbeatError(Exception):
    """Refuse a heartbeat packet or message that came from the network.

    Catch this one class to handle every rejection; read :attr:`reason` to tell
    them apart without matching on class names.
    """

    #: Stable, machine-readable name of the rejection (a counter name).
    reason: ClassVar[str] = "invalid"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TooShortError(HeartbeatError):
    """Refuse an envelope too short to hold a payload and a trailer."""

    reason = "too_short"


class InvalidHMACError(HeartbeatError):
    """Refuse an envelope whose trailer matches no key (or is no digest at all)."""

    reason = "invalid_hmac"


class NotDecompressibleError(HeartbeatError):
    """Refuse an authenticated payload that is neither a valid zlib nor zstd stream."""

    reason = "not_decompressible"


class TooLargeError(HeartbeatError):
    """Refuse a payload that would inflate beyond the configured size cap."""

    reason = "too_large"


class NotJSONError(HeartbeatError):
    """Refuse a decompressed payload that is not UTF-8 JSON a parser can read safely."""

    reason = "not_json"


class NotObjectError(HeartbeatError):
    """Refuse a JSON document whose top level is not an object."""

    reason = "not_object"


class MalformedError(HeartbeatError):
    """Refuse a message with a wrong type, a missing field or a value over a limit.

    :attr:`path` names the offending place, e.g. ``listeners.<id>.stats.rx``.
    """

    reason = "malformed"

    def __init__(self, path: str, problem: str) -> None:
        # Paths hold ids the sender chose: escape what could forge a log line
        # (newlines, control characters) or break an encoder (lone surrogates).
        if not path.isprintable():
            path = path.encode("unicode_escape").decode("ascii")
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


class BadIdError(MalformedError):
    """Refuse a message naming an amphora, listener, pool or member by an id no database can hold.

    An id must be 1 to :attr:`Limits.max_id_length <amphora_heartbeat.models.Limits>`
    (36) visible ASCII characters, ``!`` to ``~``: a UUID's text form and
    Octavia's ``VARCHAR(36)`` id columns.  A subclass of :class:`MalformedError`
    (so ``except MalformedError`` still catches it) with a reason, and a
    counter, of its own: a receiver that refuses ids it would once have taken
    shows it at once.
    """

    reason = "bad_id"


#: Every rejection reason, in the order a packet meets the checks (``malformed``
#: and ``bad_id`` both while parsing: whichever problem comes first in the message).
REASONS: tuple[str, ...] = tuple(
    cls.reason
    for cls in (
        TooShortError,
        InvalidHMACError,
        NotDecompressibleError,
        TooLargeError,
        NotJSONError,
        NotObjectError,
        MalformedError,
        BadIdError,
    )
)
