"""Wrap and unwrap heartbeat envelopes: JSON, compressed, HMAC-SHA256 signed.

An envelope is ``payload || trailer`` where ``payload`` is the compressed UTF-8
JSON text of the message and ``trailer`` the HMAC-SHA256 of the payload, either
as 64 lower-case hex characters (what current amphorae send) or as 32 raw bytes
(older amphorae).  Payloads are zlib streams (what Octavia's amphora agent
sends) or zstandard frames; a receiver tells them apart by their first bytes.

Everything here is pure: no sockets, no clock, no logging.  The unwrap path
authenticates first, computes one HMAC per key tried, decompresses with a hard
cap on the output size and maps every failure to a :class:`~.errors.HeartbeatError`.
"""

from __future__ import annotations

import enum
import hmac
import json
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import attrs
import zstandard

from .errors import (
    InvalidHMACError,
    NotDecompressibleError,
    NotJSONError,
    NotObjectError,
    TooLargeError,
    TooShortError,
)
from .models import Heartbeat

__all__ = [
    "DEFAULT_MAX_DECOMPRESSED",
    "HEX_TRAILER_SIZE",
    "RAW_TRAILER_SIZE",
    "ZSTD_MAGIC",
    "Codec",
    "Digest",
    "KeyRing",
    "Unwrapped",
    "Unwrapper",
    "get_hmac",
    "unwrap_envelope",
    "wrap_envelope",
]

#: Default cap on a decompressed payload, in bytes.  A real heartbeat of a
#: large load balancer is a few tens of KiB; 1 MiB leaves ample room while
#: keeping a decompression bomb harmless.
DEFAULT_MAX_DECOMPRESSED = 1 << 20

#: Size of a hex trailer, in bytes (64 lower-case hex characters).
HEX_TRAILER_SIZE = 64
#: Size of a raw trailer, in bytes (the binary SHA-256 digest).
RAW_TRAILER_SIZE = 32
#: The four bytes every zstandard frame starts with.
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# zstandard reports an unknown content size as 2**64 - 1 (its docstring says -1).
_ZSTD_UNKNOWN_SIZE = (1 << 64) - 1
_HEX_CHARS = b"0123456789abcdef"
# Deflate's largest expansion: one 258-byte match per 2 bits of input (zlib's
# documentation gives 1032:1).  Rounded up for the margin.
_DEFLATE_MAX_RATIO = 1040
# Envelopes no longer than this take the careful path (they are too short to be
# a real heartbeat with a hex trailer, and may be too short for any trailer).
_FAST_MIN_SIZE = HEX_TRAILER_SIZE + 1
_compare = hmac.compare_digest
# The C scanner json.loads uses, without the wrapper's two regular-expression
# passes for surrounding whitespace (json.dumps writes none).
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
# zlib level 9 is what the amphora agent uses; equal bytes for equal input.
_ZLIB_LEVEL = 9
_ZSTD_LEVEL = 3

Key = str | bytes
KeyRing = str | bytes | Sequence[str | bytes]


class Codec(enum.Enum):
    """Compression of an envelope's payload."""

    ZLIB = "zlib"
    ZSTD = "zstd"


class Digest(enum.Enum):
    """Encoding of an envelope's HMAC trailer."""

    HEX = "hex"
    RAW = "raw"


class Unwrapped(NamedTuple):
    """A verified, decoded envelope and how it was encoded."""

    message: dict[str, Any]
    codec: Codec
    digest: Digest
    key_index: int


def _key_bytes(key: object) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, bytes):
        return key
    raise TypeError(f"a heartbeat key must be str or bytes, not {type(key).__name__}")


def _encode_keys(key: KeyRing) -> tuple[bytes, ...]:
    """Return the key ring as a non-empty tuple of byte strings."""
    if isinstance(key, (str, bytes)):
        return (_key_bytes(key),)
    if not isinstance(key, Sequence):
        raise TypeError(
            f"a heartbeat key must be str, bytes or a sequence of them, not {type(key).__name__}"
        )
    keys = tuple(_key_bytes(k) for k in key)
    if not keys:
        raise ValueError("a key ring needs at least one key")
    return keys


def get_hmac(payload: bytes, key: Key, *, digest: Digest = Digest.HEX) -> bytes:
    """Return the HMAC-SHA256 trailer of ``payload`` under ``key``.

    With :attr:`Digest.HEX` the trailer is 64 lower-case ASCII hex characters,
    with :attr:`Digest.RAW` the 32-byte binary digest.
    """
    mac = hmac.digest(_key_bytes(key), payload, "sha256")
    if digest is Digest.HEX:
        return mac.hex().encode("ascii")
    if digest is Digest.RAW:
        return mac
    raise TypeError(f"digest must be a Digest, not {digest!r}")


def _compress(data: bytes, codec: Codec) -> bytes:
    if codec is Codec.ZLIB:
        return zlib.compress(data, _ZLIB_LEVEL)
    if codec is Codec.ZSTD:
        # One-shot compress() writes the content size into the frame header,
        # which lets receivers check the size before inflating anything.
        return _zstd_compressor().compress(data)
    raise TypeError(f"codec must be a Codec, not {codec!r}")


def wrap_envelope(
    obj: Mapping[str, Any] | Heartbeat,
    key: Key,
    *,
    codec: Codec = Codec.ZLIB,
    digest: Digest = Digest.HEX,
) -> bytes:
    """Serialise, compress and sign a heartbeat message; return the datagram.

    ``obj`` is a mapping (the message as an amphora sends it) or a
    :class:`~.models.Heartbeat`.  The JSON text is exactly what :func:`json.dumps`
    writes with its defaults, so with :attr:`Codec.ZLIB` the bytes equal those
    Octavia's amphora agent sends for the same message.
    """
    if isinstance(obj, Heartbeat):
        message: Mapping[str, Any] = obj.to_dict()
    elif isinstance(obj, dict):
        message = obj
    elif isinstance(obj, Mapping):
        # json.dumps serialises only dicts; keep the mapping's own key order.
        message = dict(obj)
    else:
        raise TypeError(f"wrap_envelope needs a mapping or a Heartbeat, not {type(obj).__name__}")
    payload = _compress(json.dumps(message).encode("utf-8"), codec)
    return payload + get_hmac(payload, key, digest=digest)


_local = threading.local()


def _zstd_compressor() -> zstandard.ZstdCompressor:
    # zstandard contexts are not thread-safe; one per thread is ~4x cheaper
    # than one per call.
    cctx: zstandard.ZstdCompressor | None = getattr(_local, "cctx", None)
    if cctx is None:
        cctx = _local.cctx = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    return cctx


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


@attrs.define(init=False)
class Unwrapper:
    """Verify and decode envelopes with a fixed key ring and size cap.

    Set-up happens once (keys encoded, decompression context made), so each
    packet takes a straight path.  One instance is not thread-safe: give each
    thread its own.  :func:`unwrap_envelope` is the one-call form.

    :param key: a key (str, UTF-8 encoded, or bytes) or a sequence of keys;
        the first key that verifies wins, so keys rotate without loss.
    :param max_decompressed: largest decompressed payload accepted, in bytes.
    """

    keys: tuple[bytes, ...]
    max_decompressed: int
    _macs: tuple[hmac.HMAC, ...]
    _dctx: zstandard.ZstdDecompressor
    _zlib_direct: int

    def __init__(self, key: KeyRing, *, max_decompressed: int = DEFAULT_MAX_DECOMPRESSED) -> None:
        if not isinstance(max_decompressed, int) or isinstance(max_decompressed, bool):
            raise TypeError(
                f"max_decompressed must be an int, not {type(max_decompressed).__name__}"
            )
        if max_decompressed < 1:
            raise ValueError("max_decompressed must be a positive number of bytes")
        self.keys = _encode_keys(key)
        self.max_decompressed = max_decompressed
        # One keyed HMAC per key, copied for each packet: hmac.digest() would
        # derive the padded key blocks again every time (about 1.8 us a packet
        # here, against 1.25 us for copy + update + digest).
        self._macs = tuple(hmac.new(k, digestmod="sha256") for k in self.keys)
        self._dctx = zstandard.ZstdDecompressor()
        self._zlib_direct = max_decompressed // _DEFLATE_MAX_RATIO

    def __repr__(self) -> str:
        # Never show keys.
        return f"Unwrapper(<{len(self.keys)} key(s)>, max_decompressed={self.max_decompressed})"

    def unwrap(self, envelope: bytes) -> dict[str, Any]:
        """Return the message of a verified envelope; raise a HeartbeatError if it is bad."""
        if len(envelope) <= _FAST_MIN_SIZE:
            payload, _, _ = self._verify(envelope)
            return _loads(self._inflate(payload)[0])
        # _verify inlined: the same decision, one HMAC per key tried.
        trailer = envelope[-HEX_TRAILER_SIZE:]
        if not trailer.translate(None, _HEX_CHARS):
            payload = envelope[:-HEX_TRAILER_SIZE]
            expected = bytes.fromhex(trailer.decode("ascii"))
        else:
            payload = envelope[:-RAW_TRAILER_SIZE]
            expected = envelope[-RAW_TRAILER_SIZE:]
        for keyed in self._macs:
            mac = keyed.copy()
            mac.update(payload)
            if _compare(mac.digest(), expected):
                # The fast decode, inlined: a small zlib or zstd payload holding a
                # JSON object.  Anything else, and every error, goes the careful
                # way, which names the rejection reason.
                try:
                    if payload[:4] == ZSTD_MAGIC:
                        data = self._zstd_fast(payload)
                    elif len(payload) <= self._zlib_direct:
                        # Deflate expands at most 1032:1: this payload cannot
                        # inflate beyond the cap, so no output bound is needed.
                        data = zlib.decompress(payload)
                    else:
                        data = None
                    if data is not None:
                        text = data.decode("utf-8")
                        message, end = _scan_json(text, 0)
                        if type(message) is dict and end == len(text):
                            return message
                except (zlib.error, zstandard.ZstdError, ValueError, StopIteration, RecursionError):
                    pass
                return _loads(self._inflate(payload)[0])
        digest = Digest.HEX if len(envelope) - len(payload) == HEX_TRAILER_SIZE else Digest.RAW
        raise InvalidHMACError(
            f"{digest.value} trailer matches no key (wrong key or altered packet)"
        )

    def _zstd_fast(self, payload: bytes) -> bytes | None:
        """Inflate a zstd frame that declares a size within the cap; None for any other."""
        size = zstandard.get_frame_parameters(payload).content_size
        if size > self.max_decompressed:  # also the unknown size, 2**64 - 1
            return None
        data: bytes = self._dctx.decompress(payload, max_output_size=self.max_decompressed + 1)
        return data

    def inspect(self, envelope: bytes) -> Unwrapped:
        """Like :meth:`unwrap`, and also tell the codec, trailer and key used."""
        payload, digest, index = self._verify(envelope)
        data, codec = self._inflate(payload)
        return Unwrapped(_loads(data), codec, digest, index)

    def _verify(self, envelope: bytes) -> tuple[bytes, Digest, int]:
        size = len(envelope)
        if size <= RAW_TRAILER_SIZE:
            raise TooShortError(
                f"envelope of {size} bytes is too short to hold a payload and a trailer"
            )
        # Decide the trailer's form by looking at it, so that each key costs one
        # HMAC.  A raw digest whose last 64 bytes are all hex digits has a
        # probability of 2**-128; a hex trailer is only ever lower-case.
        trailer = envelope[-HEX_TRAILER_SIZE:]
        if size > HEX_TRAILER_SIZE and not trailer.translate(None, _HEX_CHARS):
            payload = envelope[:-HEX_TRAILER_SIZE]
            expected = bytes.fromhex(trailer.decode("ascii"))
            digest = Digest.HEX
        else:
            payload = envelope[:-RAW_TRAILER_SIZE]
            expected = envelope[-RAW_TRAILER_SIZE:]
            digest = Digest.RAW
        for index, keyed in enumerate(self._macs):
            mac = keyed.copy()
            mac.update(payload)
            if hmac.compare_digest(mac.digest(), expected):
                return payload, digest, index
        raise InvalidHMACError(
            f"{digest.value} trailer matches no key (wrong key or altered packet)"
        )

    def _inflate(self, payload: bytes) -> tuple[bytes, Codec]:
        cap = self.max_decompressed
        if payload[:4] == ZSTD_MAGIC:
            return self._inflate_zstd(payload, cap), Codec.ZSTD
        try:
            d = zlib.decompressobj()
            data = d.decompress(payload, cap + 1)
        except zlib.error as exc:
            raise NotDecompressibleError(f"payload is not a zlib stream: {exc}") from None
        if len(data) > cap:
            raise TooLargeError(f"payload inflates beyond the cap of {cap} bytes")
        if not d.eof:
            raise NotDecompressibleError("payload is a truncated zlib stream")
        # Bytes after the end of the stream are covered by the HMAC and ignored.
        return data, Codec.ZLIB

    def _inflate_zstd(self, payload: bytes, cap: int) -> bytes:
        try:
            size = zstandard.get_frame_parameters(payload).content_size
        except zstandard.ZstdError as exc:
            raise NotDecompressibleError(f"payload is not a valid zstd frame: {exc}") from None
        if size != _ZSTD_UNKNOWN_SIZE and size > cap:
            # decompress() trusts the declared size and ignores any output
            # limit, so check the declaration before allocating anything.
            raise TooLargeError(f"zstd frame declares {size} bytes, beyond the cap of {cap} bytes")
        try:
            # With a declared size this allocates exactly that (at most cap);
            # without one, max_output_size bounds the allocation.  Either way
            # only the first frame is read: later bytes are ignored, as for zlib.
            data = self._dctx.decompress(payload, max_output_size=cap + 1)
        except zstandard.ZstdError as exc:
            if size == _ZSTD_UNKNOWN_SIZE and self._inflates_beyond(payload, cap):
                raise TooLargeError(f"payload inflates beyond the cap of {cap} bytes") from None
            raise NotDecompressibleError(f"payload is not a valid zstd frame: {exc}") from None
        if len(data) > cap:
            raise TooLargeError(f"payload inflates beyond the cap of {cap} bytes")
        return data

    def _inflates_beyond(self, payload: bytes, cap: int) -> bool:
        """Tell whether a frame that failed to decompress yields over ``cap`` bytes first."""
        # decompress() reports a frame that outgrows max_output_size and a
        # truncated or corrupt one alike; a bounded stream read tells them apart.
        total = 0
        try:
            with self._dctx.stream_reader(payload) as reader:
                while total <= cap:
                    chunk = reader.read(cap + 1 - total)
                    if not chunk:
                        break
                    total += len(chunk)
        except zstandard.ZstdError:
            pass
        return total > cap


def _loads(data: bytes) -> dict[str, Any]:
    try:
        # Decode strictly first: json.loads(bytes) would also take UTF-16/32,
        # a byte-order mark and encoded surrogates, none of which is UTF-8 JSON.
        message = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad JSON, bad UTF-8 and over-long integers;
        # RecursionError, nesting deeper than the parser's stack allows.
        raise NotJSONError(f"payload is not valid JSON: {type(exc).__name__}: {exc}") from None
    if type(message) is not dict:
        raise NotObjectError(f"message is a JSON {type(message).__name__}, not an object")
    return message


def unwrap_envelope(
    envelope: bytes, key: KeyRing, *, max_decompressed: int = DEFAULT_MAX_DECOMPRESSED
) -> dict[str, Any]:
    """Verify, decompress and decode one envelope; return the message as a dict.

    Each thread keeps the unwrappers of the few key rings it used last, so a
    repeated call costs about what :meth:`Unwrapper.unwrap` does.

    :param envelope: the datagram as received.
    :param key: a key (str or bytes) or a sequence of keys (a key ring).
    :param max_decompressed: largest decompressed payload accepted, in bytes.
    :raises HeartbeatError: a subclass naming the reason the envelope is refused.
    """
    if not isinstance(envelope, (bytes, bytearray, memoryview)):
        raise TypeError(f"envelope must be bytes, not {type(envelope).__name__}")
    unwrapper = _cached_unwrapper(key, max_decompressed)
    return unwrapper.unwrap(bytes(envelope))


# Unwrappers kept per thread for unwrap_envelope, at most this many (key rings
# a process uses at once: usually one, two while keys rotate).
_UNWRAPPER_CACHE_SIZE = 8


def _cached_unwrapper(key: KeyRing, max_decompressed: int) -> Unwrapper:
    # Building an Unwrapper (keys encoded, one keyed HMAC each) costs about as
    # much as unwrapping a packet, so each thread keeps the few it used last,
    # keyed by the exact key ring and cap.  Only exact str/bytes keys and an
    # exact int cap are cached: anything else (bytes-like keys, bool caps,
    # wrong types) is judged afresh by the constructor, which raises for what
    # it refuses.
    if type(max_decompressed) is not int:
        return Unwrapper(key, max_decompressed=max_decompressed)
    ring: str | bytes | tuple[str | bytes, ...]
    if type(key) is str or type(key) is bytes:
        ring = key
    elif (type(key) is tuple or type(key) is list) and all(
        type(k) is str or type(k) is bytes for k in key
    ):
        ring = tuple(key)
    else:
        return Unwrapper(key, max_decompressed=max_decompressed)
    cache: dict[tuple[object, int], Unwrapper] | None = getattr(_local, "unwrappers", None)
    if cache is None:
        cache = _local.unwrappers = {}
    unwrapper = cache.get((ring, max_decompressed))
    if unwrapper is None:
        unwrapper = Unwrapper(ring, max_decompressed=max_decompressed)
        # Share the thread's decompression context rather than hold one per entry.
        unwrapper._dctx = _zstd_decompressor()
        if len(cache) >= _UNWRAPPER_CACHE_SIZE:
            del cache[next(iter(cache))]  # the oldest entry
        cache[ring, max_decompressed] = unwrapper
    return unwrapper
