"""The envelope codec: wrap, unwrap, trailers, key rings, codecs and every rejection."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import threading
import types
import zlib
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from amphora_heartbeat import (
    Codec,
    Digest,
    Heartbeat,
    HeartbeatError,
    Unwrapper,
    get_hmac,
    unwrap_envelope,
    wrap_envelope,
)
from amphora_heartbeat.envelope import (
    DEFAULT_MAX_DECOMPRESSED,
    HEX_TRAILER_SIZE,
    RAW_TRAILER_SIZE,
    ZSTD_MAGIC,
)
from amphora_heartbeat.errors import (
    InvalidHMACError,
    NotDecompressibleError,
    NotJSONError,
    NotObjectError,
    TooLargeError,
    TooShortError,
)
from amphora_heartbeat.testing import build_message

KEY = "insecure"
UNICODE_KEY = "ключ-ünïcode-🔑"
MESSAGE = build_message(version=3, listeners=2, members=3)


def sign(payload: bytes, key: str | bytes = KEY, digest: Digest = Digest.HEX) -> bytes:
    """Return ``payload`` with a valid trailer, whatever the payload holds."""
    return payload + get_hmac(payload, key, digest=digest)


def zstd_unknown_size(data: bytes) -> bytes:
    """Return a zstd frame whose header declares no content size (a streamed frame)."""
    buf = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(buf, closefd=False) as writer:
        writer.write(data)
    frame = buf.getvalue()
    assert zstandard.get_frame_parameters(frame).content_size == (1 << 64) - 1
    return frame


def zstd_declared(data: bytes) -> bytes:
    """Return a zstd frame whose header declares its content size."""
    frame = zstandard.ZstdCompressor().compress(data)
    assert zstandard.get_frame_parameters(frame).content_size == len(data)
    return frame


# --- wrap ------------------------------------------------------------------------------


def test_wrap_zlib_is_json_dumps_at_level_9() -> None:
    """A zlib envelope's payload is zlib level 9 of json.dumps with its defaults."""
    env = wrap_envelope(MESSAGE, KEY)
    payload = env[:-HEX_TRAILER_SIZE]
    assert payload == zlib.compress(json.dumps(MESSAGE).encode("utf-8"), 9)
    assert payload[0] == 0x78


def test_wrap_zstd_declares_content_size() -> None:
    """A zstd envelope is one frame that declares its size, so receivers can check it first."""
    env = wrap_envelope(MESSAGE, KEY, codec=Codec.ZSTD)
    payload = env[:-HEX_TRAILER_SIZE]
    assert payload.startswith(ZSTD_MAGIC)
    text = json.dumps(MESSAGE).encode("utf-8")
    assert zstandard.get_frame_parameters(payload).content_size == len(text)
    assert zstandard.ZstdDecompressor().decompress(payload) == text


@pytest.mark.parametrize("digest", list(Digest))
def test_wrap_appends_the_trailer_of_the_payload(digest: Digest) -> None:
    """The trailer is the HMAC-SHA256 of the payload: 64 lower-case hex chars or 32 bytes."""
    env = wrap_envelope(MESSAGE, KEY, digest=digest)
    size = HEX_TRAILER_SIZE if digest is Digest.HEX else RAW_TRAILER_SIZE
    payload, trailer = env[:-size], env[-size:]
    mac = hmac.new(KEY.encode(), payload, hashlib.sha256)
    assert trailer == (mac.hexdigest().encode("ascii") if digest is Digest.HEX else mac.digest())


def test_wrap_heartbeat_equals_wrap_of_its_dict() -> None:
    """Wrapping a Heartbeat wraps its to_dict()."""
    hb = Heartbeat.from_dict(MESSAGE)
    assert wrap_envelope(hb, KEY) == wrap_envelope(hb.to_dict(), KEY)


def test_wrap_accepts_any_mapping() -> None:
    """A read-only mapping wraps like the dict it views (json.dumps alone would refuse it)."""
    proxy = types.MappingProxyType(MESSAGE)
    assert wrap_envelope(proxy, KEY) == wrap_envelope(MESSAGE, KEY)


@pytest.mark.parametrize("obj", [[1, 2], "text", b"bytes", None, 42])
def test_wrap_refuses_non_mappings(obj: Any) -> None:
    """Wrapping anything but a mapping or a Heartbeat is the caller's mistake: TypeError."""
    with pytest.raises(TypeError, match="mapping"):
        wrap_envelope(obj, KEY)


def test_wrap_refuses_bad_codec_digest_and_key() -> None:
    """Wrong codec, digest or key types are TypeErrors, never a half-made envelope."""
    with pytest.raises(TypeError):
        wrap_envelope(MESSAGE, KEY, codec="zlib")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        wrap_envelope(MESSAGE, KEY, digest="hex")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        wrap_envelope(MESSAGE, 1234)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        wrap_envelope(MESSAGE, [KEY])  # type: ignore[arg-type]


# --- get_hmac --------------------------------------------------------------------------


@pytest.mark.parametrize("key", [KEY, UNICODE_KEY, b"\x00\xffbinary"])
def test_get_hmac_both_digests(key: str | bytes) -> None:
    """get_hmac gives the lower-case hex digest or the raw digest of HMAC-SHA256."""
    kb = key.encode("utf-8") if isinstance(key, str) else key
    mac = hmac.new(kb, b"payload", hashlib.sha256)
    assert get_hmac(b"payload", key) == mac.hexdigest().encode("ascii")
    assert get_hmac(b"payload", key, digest=Digest.HEX) == mac.hexdigest().encode("ascii")
    assert get_hmac(b"payload", key, digest=Digest.RAW) == mac.digest()


def test_get_hmac_str_key_is_its_utf8_bytes() -> None:
    """A str key signs exactly as its UTF-8 encoding does."""
    assert get_hmac(b"p", UNICODE_KEY) == get_hmac(b"p", UNICODE_KEY.encode("utf-8"))


def test_get_hmac_refuses_bad_key_and_digest() -> None:
    """get_hmac needs a str or bytes key and a Digest."""
    with pytest.raises(TypeError):
        get_hmac(b"p", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        get_hmac(b"p", KEY, digest="raw")  # type: ignore[arg-type]


# --- unwrap: the happy paths -----------------------------------------------------------


@pytest.mark.parametrize("codec", list(Codec))
@pytest.mark.parametrize("digest", list(Digest))
@pytest.mark.parametrize("key", [KEY, UNICODE_KEY, b"\x00\xffbinary", UNICODE_KEY.encode()])
def test_round_trip(codec: Codec, digest: Digest, key: str | bytes) -> None:
    """wrap then unwrap gives the message back for every codec, trailer and key kind."""
    env = wrap_envelope(MESSAGE, key, codec=codec, digest=digest)
    assert unwrap_envelope(env, key) == MESSAGE
    got = Unwrapper(key).inspect(env)
    assert got == (MESSAGE, codec, digest, 0)


def test_str_and_bytes_keys_are_interchangeable() -> None:
    """An envelope signed with a str key verifies with its UTF-8 bytes and vice versa."""
    env = wrap_envelope(MESSAGE, UNICODE_KEY)
    assert unwrap_envelope(env, UNICODE_KEY.encode("utf-8")) == MESSAGE
    env = wrap_envelope(MESSAGE, UNICODE_KEY.encode("utf-8"), digest=Digest.RAW)
    assert unwrap_envelope(env, UNICODE_KEY) == MESSAGE


@pytest.mark.parametrize("digest", list(Digest))
def test_key_ring_first_that_verifies_wins(digest: Digest) -> None:
    """With a key ring any key verifies, and inspect reports the first that does."""
    ring = ["old", "new", b"newest", "new"]
    for signer, index in [("old", 0), ("new", 1), (b"newest", 2)]:
        env = wrap_envelope(MESSAGE, signer, digest=digest)
        assert unwrap_envelope(env, ring) == MESSAGE
        assert Unwrapper(ring).inspect(env).key_index == index
    assert Unwrapper(("k", "k")).inspect(wrap_envelope(MESSAGE, "k")).key_index == 0


def test_key_ring_as_tuple_and_single_element() -> None:
    """A tuple or one-key list works like the bare key."""
    env = wrap_envelope(MESSAGE, KEY)
    assert unwrap_envelope(env, (KEY,)) == unwrap_envelope(env, [KEY]) == MESSAGE


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_unwrap_envelope_accepts_bytes_like(kind: type) -> None:
    """unwrap_envelope takes bytes, bytearray and memoryview."""
    env = wrap_envelope(MESSAGE, KEY)
    assert unwrap_envelope(kind(env), KEY) == MESSAGE


def test_raw_trailer_verifies_after_a_hex_looking_payload_tail() -> None:
    """One HMAC per key, chosen by the trailer's look, still verifies raw trailers.

    The payload ends in 32 hex digits (ignored bytes after the zlib stream), so
    only the raw digest's own bytes tell the trailer forms apart.
    """
    payload = zlib.compress(json.dumps(MESSAGE).encode()) + b"0123456789abcdef" * 2
    env = sign(payload, "k3", Digest.RAW)
    got = Unwrapper(["k1", "k2", "k3"]).inspect(env)
    assert got.message == MESSAGE
    assert got.digest is Digest.RAW
    assert got.key_index == 2


def test_hex_trailer_is_read_as_hex_not_raw() -> None:
    """A hex trailer is checked as hex, so its last 32 bytes are not taken as a raw digest."""
    env = wrap_envelope(MESSAGE, KEY, digest=Digest.HEX)
    assert Unwrapper(KEY).inspect(env).digest is Digest.HEX


def test_unwrapper_is_reusable_and_repr_hides_keys() -> None:
    """One Unwrapper serves many packets of both codecs; its repr never shows a key."""
    u = Unwrapper(["super-secret", b"other-secret"], max_decompressed=4096)
    for codec in Codec:
        for digest in Digest:
            for _ in range(3):
                assert u.unwrap(wrap_envelope(MESSAGE, "super-secret", codec=codec, digest=digest))
    text = repr(u)
    assert "secret" not in text
    assert "2 key(s)" in text
    assert "4096" in text


def test_unwrap_envelope_is_thread_safe() -> None:
    """Threads unwrapping zstd envelopes at once share no decompression context."""
    envs = [
        wrap_envelope(build_message(seed=i, members=20), KEY, codec=Codec.ZSTD) for i in range(8)
    ]
    expected = [unwrap_envelope(e, KEY) for e in envs]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(200):
                for env, want in zip(envs, expected, strict=True):
                    if unwrap_envelope(env, KEY) != want:
                        raise AssertionError("wrong message")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_unwrap_envelope_reuses_nothing_across_keys_or_caps() -> None:
    """Repeated calls give each key ring and cap its own verdict, whatever came before."""
    env = wrap_envelope(MESSAGE, KEY)
    big = sign(zlib.compress(_text_of_size(CAP + 1)))
    for _ in range(2):  # the second round runs on whatever the first left behind
        assert unwrap_envelope(env, KEY) == unwrap_envelope(env, [b"x", KEY]) == MESSAGE
        with pytest.raises(InvalidHMACError):
            unwrap_envelope(env, "other")
        with pytest.raises(InvalidHMACError):
            unwrap_envelope(env, [b"x"])
        assert unwrap_envelope(big, KEY, max_decompressed=CAP + 1)["pad"]
        with pytest.raises(TooLargeError):
            unwrap_envelope(big, KEY, max_decompressed=CAP)


def test_unwrap_envelope_still_refuses_bad_arguments_after_equal_good_ones() -> None:
    """A bool cap or a bytes-like key is refused even right after its equal int or bytes."""
    env = wrap_envelope(MESSAGE, KEY)
    assert unwrap_envelope(env, KEY.encode(), max_decompressed=1 << 20) == MESSAGE
    with pytest.raises(TypeError):
        unwrap_envelope(env, memoryview(KEY.encode()), max_decompressed=1 << 20)
    with pytest.raises(TypeError):
        unwrap_envelope(env, [memoryview(KEY.encode())])
    with pytest.raises(TooLargeError):
        unwrap_envelope(env, KEY, max_decompressed=1)
    with pytest.raises(TypeError):
        unwrap_envelope(env, KEY, max_decompressed=True)


def test_unwrap_envelope_keeps_few_unwrappers() -> None:
    """Calls with many different keys keep at most a few unwrappers per thread."""
    from amphora_heartbeat import envelope as envelope_module

    for i in range(3 * envelope_module._UNWRAPPER_CACHE_SIZE):
        env = wrap_envelope(MESSAGE, f"key-{i}")
        assert unwrap_envelope(env, f"key-{i}") == MESSAGE
    assert len(envelope_module._local.unwrappers) == envelope_module._UNWRAPPER_CACHE_SIZE


# --- too_short / invalid_hmac ----------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 31, 32])
def test_too_short(size: int) -> None:
    """An envelope of 32 bytes or fewer cannot hold a payload and a trailer: too_short."""
    with pytest.raises(TooShortError) as info:
        unwrap_envelope(b"x" * size, KEY)
    assert info.value.reason == "too_short"


def test_33_bytes_is_not_too_short() -> None:
    """One byte of payload plus a raw trailer is long enough to be checked."""
    with pytest.raises(InvalidHMACError):
        unwrap_envelope(b"x" * 33, KEY)
    # A valid 33-byte envelope passes the HMAC and fails only at decompression.
    with pytest.raises(NotDecompressibleError):
        unwrap_envelope(sign(b"x", KEY, Digest.RAW), KEY)


def test_upper_case_hex_trailer_is_invalid_hmac() -> None:
    """Only a lower-case hex trailer matches; an upper-case one is invalid_hmac."""
    env = wrap_envelope(MESSAGE, KEY)
    upper = env[:-HEX_TRAILER_SIZE] + env[-HEX_TRAILER_SIZE:].upper()
    assert upper != env
    with pytest.raises(InvalidHMACError) as info:
        unwrap_envelope(upper, KEY)
    assert info.value.reason == "invalid_hmac"


@pytest.mark.parametrize("digest", list(Digest))
@pytest.mark.parametrize("codec", list(Codec))
def test_wrong_key_is_invalid_hmac(digest: Digest, codec: Codec) -> None:
    """An envelope signed with another key is invalid_hmac, for a key and a key ring."""
    env = wrap_envelope(MESSAGE, "right", codec=codec, digest=digest)
    with pytest.raises(InvalidHMACError):
        unwrap_envelope(env, "wrong")
    with pytest.raises(InvalidHMACError):
        unwrap_envelope(env, ["wrong", b"also wrong", "Right"])


@pytest.mark.parametrize("digest", list(Digest))
def test_any_flipped_byte_is_invalid_hmac(digest: Digest) -> None:
    """Flipping any single bit of a valid envelope, payload or trailer, is invalid_hmac."""
    env = wrap_envelope(build_message(listeners=1, members=1), KEY, digest=digest)
    u = Unwrapper(KEY)
    for i in range(len(env)):
        for bit in (0x01, 0x80):
            bad = bytearray(env)
            bad[i] ^= bit
            with pytest.raises(InvalidHMACError):
                u.unwrap(bytes(bad))


def test_truncated_or_extended_envelope_is_invalid_hmac() -> None:
    """Cutting or appending bytes breaks the trailer."""
    env = wrap_envelope(MESSAGE, KEY)
    for bad in (env[:-1], env[1:], env + b"0", env + b"\x00"):
        with pytest.raises(InvalidHMACError):
            unwrap_envelope(bad, KEY)


# --- not_decompressible ----------------------------------------------------------------


def test_garbage_payload_is_not_decompressible() -> None:
    """An authenticated payload that is no zlib stream is not_decompressible."""
    with pytest.raises(NotDecompressibleError) as info:
        unwrap_envelope(sign(b"this is not a zlib stream at all"), KEY)
    assert info.value.reason == "not_decompressible"


def test_truncated_zlib_stream_is_not_decompressible() -> None:
    """A zlib stream cut short is not_decompressible, not silently partial."""
    full = zlib.compress(json.dumps(MESSAGE).encode(), 9)
    for cut in (1, 4, len(full) // 2):
        with pytest.raises(NotDecompressibleError, match="truncated"):
            unwrap_envelope(sign(full[:-cut]), KEY)


def test_bytes_after_zlib_stream_are_ignored() -> None:
    """Bytes after the end of a zlib stream are covered by the HMAC and ignored, as Octavia does."""
    payload = zlib.compress(json.dumps(MESSAGE).encode(), 9) + b"trailing junk \x00\xff"
    for digest in Digest:
        assert unwrap_envelope(sign(payload, digest=digest), KEY) == MESSAGE


def test_garbage_zstd_frame_is_not_decompressible() -> None:
    """A payload with zstd magic but a broken frame is not_decompressible."""
    for payload in (ZSTD_MAGIC, ZSTD_MAGIC + b"\x00" * 40, ZSTD_MAGIC + b"garbage garbage"):
        with pytest.raises(NotDecompressibleError):
            unwrap_envelope(sign(payload), KEY)


@pytest.mark.parametrize("frame", [zstd_declared, zstd_unknown_size])
def test_truncated_zstd_frame_is_not_decompressible(frame: Any) -> None:
    """A zstd frame cut short, with or without a declared size, is not_decompressible."""
    full = frame(json.dumps(MESSAGE).encode())
    for cut in (1, 3, len(full) // 2):
        with pytest.raises(NotDecompressibleError):
            unwrap_envelope(sign(full[:-cut]), KEY)


@pytest.mark.parametrize("frame", [zstd_declared, zstd_unknown_size])
def test_bytes_after_zstd_frame_are_ignored(frame: Any) -> None:
    """Only the first zstd frame is read; later bytes are ignored, as for zlib."""
    first = frame(json.dumps(MESSAGE).encode())
    for tail in (b"junk", frame(b'{"other": 1}')):
        assert unwrap_envelope(sign(first + tail), KEY) == MESSAGE


def test_zstd_unknown_size_round_trip() -> None:
    """A streamed zstd frame (no size in its header) unwraps like a one-shot one."""
    env = sign(zstd_unknown_size(json.dumps(MESSAGE).encode()))
    got = Unwrapper(KEY).inspect(env)
    assert got.message == MESSAGE
    assert got.codec is Codec.ZSTD


# --- too_large -------------------------------------------------------------------------

CAP = 4096


def _text_of_size(size: int) -> bytes:
    """Return a JSON object text of exactly ``size`` bytes."""
    text = b'{"pad": "' + b"x" * (size - 11) + b'"}'
    assert len(text) == size
    return text


COMPRESSORS = {
    "zlib": lambda data: zlib.compress(data, 9),
    "zstd-declared": zstd_declared,
    "zstd-unknown-size": zstd_unknown_size,
}


@pytest.mark.parametrize("compress", list(COMPRESSORS.values()), ids=list(COMPRESSORS))
def test_payload_of_exactly_the_cap_is_accepted(compress: Any) -> None:
    """A payload inflating to exactly max_decompressed bytes is accepted."""
    env = sign(compress(_text_of_size(CAP)))
    assert unwrap_envelope(env, KEY, max_decompressed=CAP)["pad"] == "x" * (CAP - 11)


@pytest.mark.parametrize("compress", list(COMPRESSORS.values()), ids=list(COMPRESSORS))
@pytest.mark.parametrize("extra", [1, 2, 1000, 10 * CAP])
def test_payload_over_the_cap_is_too_large(compress: Any, extra: int) -> None:
    """A payload inflating beyond max_decompressed is too_large, for every codec and frame kind."""
    env = sign(compress(_text_of_size(CAP + extra)))
    with pytest.raises(TooLargeError) as info:
        unwrap_envelope(env, KEY, max_decompressed=CAP)
    assert info.value.reason == "too_large"


def test_zstd_declared_size_over_cap_is_refused_before_inflating() -> None:
    """A zstd header declaring more than the cap is too_large even if the frame is broken."""
    frame = zstd_declared(b"0" * (CAP + 1))
    # Cut the frame after its header: only the declaration can be what refuses it.
    with pytest.raises(TooLargeError, match="declares"):
        unwrap_envelope(sign(frame[:12]), KEY, max_decompressed=CAP)


def test_default_cap_is_one_mebibyte() -> None:
    """The default cap is 1 MiB: a payload just over it is too_large, one at it is not."""
    assert DEFAULT_MAX_DECOMPRESSED == 1 << 20
    assert Unwrapper(KEY).max_decompressed == 1 << 20
    ok = sign(zlib.compress(_text_of_size(1 << 20)))
    assert unwrap_envelope(ok, KEY)
    with pytest.raises(TooLargeError):
        unwrap_envelope(sign(zlib.compress(_text_of_size((1 << 20) + 1))), KEY)


# --- not_json / not_object -------------------------------------------------------------

NOT_JSON = {
    "bad-json": b'{"id": ',
    "trailing-comma": b'{"id": "a",}',
    "nan-is-fine-but-this-is-not": b"{'id': 'a'}",
    "bad-utf8": b'{"id": "\xff\xfe"}',
    "encoded-surrogate": b'{"id": "\xed\xa0\x80"}',
    "utf16": '{"id": "a"}'.encode("utf-16"),
    "utf8-bom": b'\xef\xbb\xbf{"id": "a"}',
    "empty": b"",
    "deep-lists": b"[" * 100_000,
    "deep-objects": b'{"a": ' * 100_000,
    "deep-closed": b"[" * 100_000 + b"]" * 100_000,
    "long-integer": b"1" * 5000,
    "long-integer-inside": b'{"seq": ' + b"9" * 5000 + b"}",
}


@pytest.mark.parametrize("text", list(NOT_JSON.values()), ids=list(NOT_JSON))
@pytest.mark.parametrize("codec", ["zlib", "zstd"])
def test_not_json(text: bytes, codec: str) -> None:
    """Whatever json.loads chokes on is not_json: never RecursionError or ValueError."""
    payload = zlib.compress(text) if codec == "zlib" else zstd_declared(text)
    with pytest.raises(NotJSONError) as info:
        unwrap_envelope(sign(payload), KEY)
    assert info.value.reason == "not_json"


@pytest.mark.parametrize("text", [b"[]", b"[1, 2]", b"1", b'"string"', b"null", b"true", b"1.5"])
def test_not_object(text: bytes) -> None:
    """Valid JSON whose top level is not an object is not_object."""
    with pytest.raises(NotObjectError) as info:
        unwrap_envelope(sign(zlib.compress(text)), KEY)
    assert info.value.reason == "not_object"


def test_any_json_object_is_accepted_by_unwrap() -> None:
    """unwrap checks only that the message is an object; the model judges its contents."""
    assert unwrap_envelope(sign(zlib.compress(b"{}")), KEY) == {}


# --- caller mistakes -------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, 42, 4.2, [1, 2], [KEY, None], {"k": 1}])
def test_bad_key_is_type_error(key: Any) -> None:
    """Keys must be str, bytes or a sequence of them."""
    with pytest.raises(TypeError):
        Unwrapper(key)
    with pytest.raises(TypeError):
        unwrap_envelope(wrap_envelope(MESSAGE, KEY), key)


def test_empty_key_ring_is_value_error() -> None:
    """A key ring needs at least one key."""
    with pytest.raises(ValueError, match="at least one"):
        Unwrapper([])
    with pytest.raises(ValueError, match="at least one"):
        unwrap_envelope(wrap_envelope(MESSAGE, KEY), ())


@pytest.mark.parametrize("cap", [0, -1])
def test_non_positive_cap_is_value_error(cap: int) -> None:
    """max_decompressed must be a positive number of bytes."""
    with pytest.raises(ValueError, match="positive"):
        Unwrapper(KEY, max_decompressed=cap)
    with pytest.raises(ValueError, match="positive"):
        unwrap_envelope(wrap_envelope(MESSAGE, KEY), KEY, max_decompressed=cap)


@pytest.mark.parametrize("cap", ["1024", 1024.0, None, True])
def test_non_int_cap_is_type_error(cap: Any) -> None:
    """max_decompressed must be an int (not a float, str or bool)."""
    with pytest.raises(TypeError):
        Unwrapper(KEY, max_decompressed=cap)


@pytest.mark.parametrize("envelope", ["text", None, 123, [1, 2]])
def test_unwrap_envelope_refuses_non_bytes(envelope: Any) -> None:
    """The envelope must be bytes-like; anything else is the caller's mistake."""
    with pytest.raises(TypeError):
        unwrap_envelope(envelope, KEY)


# --- properties ------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=8)
keys = st.text(max_size=40) | st.binary(max_size=64)


@settings(max_examples=150)
@given(
    obj=json_objects,
    key=keys,
    codec=st.sampled_from(Codec),
    digest=st.sampled_from(Digest),
)
def test_property_round_trip(
    obj: dict[str, Any], key: str | bytes, codec: Codec, digest: Digest
) -> None:
    """Any JSON object survives wrap then unwrap, for both codecs, trailers and key kinds."""
    env = wrap_envelope(obj, key, codec=codec, digest=digest)
    got = Unwrapper(key).inspect(env)
    assert got.message == obj
    assert (got.codec, got.digest, got.key_index) == (codec, digest, 0)


def _unwrap_and_parse(envelope: bytes, key: str | bytes = KEY) -> None:
    """Run the whole receive path; only HeartbeatError may escape."""
    with contextlib.suppress(HeartbeatError):
        Heartbeat.from_dict(unwrap_envelope(envelope, key, max_decompressed=1 << 16))


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_property_arbitrary_bytes_raise_only_heartbeat_errors(data: bytes) -> None:
    """Random datagrams are rejected with a HeartbeatError, never anything else."""
    _unwrap_and_parse(data)


@settings(max_examples=200)
@given(
    payload=st.binary(max_size=300)
    | st.binary(max_size=300).map(lambda b: ZSTD_MAGIC + b)
    | st.binary(max_size=300).map(zlib.compress)
    | st.binary(max_size=300).map(zstd_declared)
    | st.text(max_size=100).map(lambda t: zlib.compress(t.encode("utf-8", "surrogatepass"))),
    digest=st.sampled_from(Digest),
)
def test_property_authenticated_garbage_raises_only_heartbeat_errors(
    payload: bytes, digest: Digest
) -> None:
    """Garbage that passes the HMAC still meets only HeartbeatErrors downstream."""
    _unwrap_and_parse(sign(payload, digest=digest))


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, value) edits: overwrite, insert or delete one byte."""
    buf = bytearray(data)
    for kind, pos, value in edits:
        if not buf:
            break
        i = pos % len(buf)
        if kind == 0:
            buf[i] = value
        elif kind == 1:
            buf.insert(i, value)
        else:
            del buf[i]
    return bytes(buf)


edits = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 1 << 16), st.integers(0, 255)),
    min_size=1,
    max_size=4,
)
VALID_TEXTS = [
    json.dumps(build_message(version=v, listeners=2, pools=2, members=2)).encode()
    for v in (0, 1, 2, 3)
]


@settings(max_examples=200)
@given(
    text=st.sampled_from(VALID_TEXTS),
    edits=edits,
    codec=st.sampled_from(["zlib", "zstd"]),
    where=st.sampled_from(["json", "compressed", "envelope"]),
)
def test_property_mutated_envelopes_raise_only_heartbeat_errors(
    text: bytes, edits: list[tuple[int, int, int]], codec: str, where: str
) -> None:
    """Valid envelopes mutated in their JSON, their compressed bytes or the datagram itself
    (re-signed where needed) raise only HeartbeatErrors or parse."""
    compress = (lambda b: zlib.compress(b, 9)) if codec == "zlib" else zstd_declared
    if where == "json":
        env = sign(compress(_mutate(text, edits)))
    elif where == "compressed":
        env = sign(_mutate(compress(text), edits))
    else:
        env = _mutate(sign(compress(text)), edits)
    _unwrap_and_parse(env)


# --- the fast path and the careful path agree -------------------------------------------
# Unwrapper.unwrap takes a quick route for what senders usually send and hands
# everything else to the careful route; these pin the hand-over points.


def test_deflate_expansion_bound_keeps_direct_zlib_under_the_cap() -> None:
    """The most compressible zlib payload the fast path inflates unbounded stays under the cap."""
    unwrapper = Unwrapper(KEY)
    limit = unwrapper._zlib_direct
    # Zeros at level 9 compress about as far as deflate allows (~1030:1).
    data = b"0" * 1_000_000
    payload = zlib.compress(data, 9)
    assert len(payload) <= limit
    assert len(zlib.decompress(payload)) <= unwrapper.max_decompressed


@pytest.mark.parametrize("digest", list(Digest))
def test_payload_beyond_the_direct_limit_takes_the_careful_path(digest: Digest) -> None:
    """A zlib payload too large for an unbounded inflate is still verified and capped."""
    unwrapper = Unwrapper(KEY, max_decompressed=CAP)
    assert unwrapper._zlib_direct < 10
    assert unwrapper.unwrap(sign(zlib.compress(b'{"a": 1}', 9), digest=digest)) == {"a": 1}
    big = sign(zlib.compress(_text_of_size(CAP + 1), 9), digest=digest)
    with pytest.raises(TooLargeError):
        unwrapper.unwrap(big)


@pytest.mark.parametrize("text", [b' {"a": 1}', b'{"a": 1} \n', b'\n{"a": 1}\t'])
@pytest.mark.parametrize("compress", list(COMPRESSORS.values()), ids=list(COMPRESSORS))
def test_whitespace_around_the_object_is_accepted(text: bytes, compress: Any) -> None:
    """JSON text with surrounding whitespace, which the fast scanner leaves aside, is accepted."""
    assert Unwrapper(KEY).unwrap(sign(compress(text))) == {"a": 1}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b'{"a": 1} x', "not_json"),
        (b'{"a": 1}{}', "not_json"),
        (b'{"a": 1', "not_json"),
        (b"\xff{}", "not_json"),
        (b"[1]", "not_object"),
    ],
)
@pytest.mark.parametrize("digest", list(Digest))
def test_fast_path_failures_get_the_careful_reason(
    text: bytes, reason: str, digest: Digest
) -> None:
    """Trailing text, truncation, bad UTF-8 and non-objects get the careful path's reason."""
    with pytest.raises(HeartbeatError) as info:
        Unwrapper(KEY).unwrap(sign(zlib.compress(text, 9), digest=digest))
    assert info.value.reason == reason


@pytest.mark.parametrize("digest", list(Digest))
def test_invalid_hmac_costs_one_hmac_per_key(
    digest: Digest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A packet no key verifies is refused after one HMAC per key, naming its trailer form."""
    envelope = wrap_envelope(MESSAGE, "other", digest=digest)
    calls: list[int] = []
    real = hmac.digest
    real_method = hmac.HMAC.digest

    # An HMAC from the standard library ends in the one-shot function or in the
    # digest of an HMAC object (the unwrapper copies one keyed object per key).
    def counting(key: bytes, msg: bytes, name: str) -> bytes:
        calls.append(1)
        return real(key, msg, name)

    def counting_method(self: hmac.HMAC) -> bytes:
        calls.append(1)
        return real_method(self)

    monkeypatch.setattr(hmac, "digest", counting)
    monkeypatch.setattr(hmac.HMAC, "digest", counting_method)
    with pytest.raises(InvalidHMACError, match=digest.value):
        Unwrapper([KEY, "second", "third"]).unwrap(envelope)
    assert len(calls) == 3
