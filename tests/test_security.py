"""Each claim of docs/explanation/security.md, tested (the page says so; keep them in step)."""

from __future__ import annotations

import json
import logging
import socket
import time
import zlib
from pathlib import Path

import pytest
import zstandard
from _net import DEADLINE, HOSTS, needs_ipv6

from amphora_heartbeat import (
    Codec,
    Digest,
    Heartbeat,
    HeartbeatError,
    Limits,
    Unwrapper,
    get_hmac,
    unwrap_envelope,
    wrap_envelope,
)
from amphora_heartbeat.envelope import DEFAULT_MAX_DECOMPRESSED
from amphora_heartbeat.errors import (
    REASONS,
    BadIdError,
    InvalidHMACError,
    MalformedError,
    NotJSONError,
    TooLargeError,
)
from amphora_heartbeat.getter import UDPStatusGetter, normalize_host
from amphora_heartbeat.manager import HealthManager
from amphora_heartbeat.sender import UDPStatusSender
from amphora_heartbeat.store import SQLiteStore
from amphora_heartbeat.testing import build_message, make_fleet
from amphora_heartbeat.tracker import DEFAULT_SEQ_WINDOW, SeqGuard

KEY = "fleet-key"
MESSAGE = {"id": "amp-1", "seq": 3, "ver": 3, "listeners": {}, "pools": {}}


def _signed(payload: bytes, key: str | bytes = KEY) -> bytes:
    return payload + get_hmac(payload, key)


# --- what the HMAC protects ----------------------------------------------------------


@pytest.mark.parametrize("digest", list(Digest))
def test_every_altered_byte_is_refused(digest: Digest) -> None:
    """Changing any single byte of payload or trailer makes the packet invalid_hmac."""
    packet = wrap_envelope(MESSAGE, KEY, digest=digest)
    for i in range(len(packet)):
        altered = bytearray(packet)
        altered[i] ^= 0x01
        with pytest.raises(InvalidHMACError):
            unwrap_envelope(bytes(altered), KEY)


@pytest.mark.parametrize("codec", list(Codec))
def test_wrong_key_is_refused(codec: Codec) -> None:
    """A packet signed with another key is invalid_hmac, for each codec."""
    with pytest.raises(InvalidHMACError):
        unwrap_envelope(wrap_envelope(MESSAGE, "other-key", codec=codec), KEY)


def test_upper_case_hex_trailer_is_refused() -> None:
    """An upper-case copy of a valid hex trailer does not verify."""
    packet = wrap_envelope(MESSAGE, KEY)
    assert unwrap_envelope(packet, KEY) == MESSAGE
    with pytest.raises(InvalidHMACError):
        unwrap_envelope(packet[:-64] + packet[-64:].upper(), KEY)


@pytest.mark.parametrize(
    "payload",
    [
        zlib.compress(b"[" * 10_000_000, 9),  # a zlib bomb: 10 MB of nesting
        zstandard.ZstdCompressor().compress(b"\0" * 10_000_000),  # a zstd bomb
        b"\x78\x9c not zlib at all",  # not decompressible
    ],
    ids=["zlib-bomb", "zstd-bomb", "garbage"],
)
def test_unauthenticated_payload_never_reaches_the_decompressor(payload: bytes) -> None:
    """Without the key, bombs and garbage are refused as invalid_hmac, not inspected further."""
    with pytest.raises(InvalidHMACError):
        unwrap_envelope(_signed(payload, "attacker-key"), KEY)
    # With the key, the same payloads would have reached the later checks.
    with pytest.raises(HeartbeatError) as excinfo:
        unwrap_envelope(_signed(payload), KEY)
    assert excinfo.value.reason in {"too_large", "not_decompressible"}


@pytest.mark.parametrize("digest", list(Digest))
@pytest.mark.parametrize("size", ["small", "large"])
def test_a_refused_packet_costs_one_hmac_per_key(
    digest: Digest, size: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused packet costs one HMAC per key, each compared in constant time."""
    import hmac as hmac_module

    from amphora_heartbeat import envelope

    calls: list[int] = []
    compares: list[int] = []
    real = hmac_module.digest
    real_method = hmac_module.HMAC.digest
    real_compare = hmac_module.compare_digest

    # Every HMAC the standard library computes ends in one of these two: the
    # one-shot function, or the digest of an HMAC object (the unwrapper copies
    # one keyed object per key for each packet).
    def counting(key: bytes, msg: bytes, name: str) -> bytes:
        calls.append(1)
        return real(key, msg, name)

    def counting_method(self: hmac_module.HMAC) -> bytes:
        calls.append(1)
        return real_method(self)

    def counting_compare(a: bytes, b: bytes) -> bool:
        compares.append(1)
        return real_compare(a, b)

    message = MESSAGE if size == "small" else build_message(listeners=4, members=50)
    packet = wrap_envelope(message, "outsider", digest=digest)
    monkeypatch.setattr(envelope, "_hmac", counting, raising=False)
    monkeypatch.setattr(hmac_module, "digest", counting)
    monkeypatch.setattr(hmac_module.HMAC, "digest", counting_method)
    monkeypatch.setattr(envelope, "_compare", counting_compare, raising=False)
    monkeypatch.setattr(hmac_module, "compare_digest", counting_compare)
    with pytest.raises(InvalidHMACError):
        Unwrapper(["k1", "k2", "k3"]).unwrap(packet)
    assert len(calls) == len(compares) == 3
    calls.clear()
    assert Unwrapper(["k1", "outsider", "k3"]).unwrap(packet) == message
    assert len(calls) == 2


# --- what the HMAC does not protect --------------------------------------------------


def test_any_key_holder_can_speak_for_any_amphora() -> None:
    """The fleet key signs heartbeats for every amphora id: the signature names no sender."""
    for amphora_id in ("amp-1", "amp-2", "someone-else"):
        message = build_message()
        message["id"] = amphora_id
        heartbeat = Heartbeat.from_dict(unwrap_envelope(wrap_envelope(message, KEY), KEY))
        assert heartbeat.amphora_id == amphora_id


def test_payload_is_readable_without_the_key() -> None:
    """No confidentiality: anyone can decompress the payload and read the message."""
    message = build_message(member_status="DOWN")
    packet = wrap_envelope(message, KEY)
    assert json.loads(zlib.decompress(packet[:-64])) == message
    zpacket = wrap_envelope(message, KEY, codec=Codec.ZSTD)
    assert json.loads(zstandard.ZstdDecompressor().decompress(zpacket[:-64])) == message


def test_a_captured_packet_is_accepted_again() -> None:
    """No replay protection in the format: the same datagram unwraps every time it is sent."""
    packet = wrap_envelope(MESSAGE, KEY)
    unwrapper = Unwrapper(KEY)
    assert unwrapper.unwrap(packet) == unwrapper.unwrap(packet) == MESSAGE


def test_seq_is_signed() -> None:
    """seq is covered by the HMAC: a replay cannot be renumbered without the key."""
    packet = wrap_envelope(MESSAGE, KEY)
    forged = wrap_envelope(dict(MESSAGE, seq=1_000), "attacker-key")
    assert unwrap_envelope(packet, KEY)["seq"] == 3
    with pytest.raises(InvalidHMACError):
        unwrap_envelope(forged, KEY)


def test_seq_guard_catches_duplicates_and_recent_replays() -> None:
    """Without boot: the same seq again, or one less than the window below, is refused."""
    guard = SeqGuard(window=3)
    assert guard.check("amp-1", 100)
    assert guard.check("amp-1", 101)
    assert not guard.check("amp-1", 101)  # the same datagram delivered twice
    assert not guard.check("amp-1", 99)  # a recent heartbeat replayed
    assert guard.check("amp-2", 99)  # per amphora
    assert SeqGuard().window == DEFAULT_SEQ_WINDOW == 3


def test_seq_guard_without_boot_takes_older_replays_for_restarts() -> None:
    """Without boot: a capture window or more below passes as a restart, as do pre-restart ones."""
    guard = SeqGuard(window=3)
    assert guard.check("amp-1", 500)
    assert guard.check("amp-1", 90)  # a replay from long ago: cannot be told from a restart
    assert guard.check("amp-1", 0)  # a real restart: passes too
    assert guard.check("amp-1", 91)  # a pre-restart capture now looks newer: passes


def test_seq_guard_without_boot_delays_an_early_restart() -> None:
    """Without boot: an agent restarting before its window-th heartbeat waits to pass the newest."""
    guard = SeqGuard(window=3)
    assert guard.check("amp-1", 1)
    assert not guard.check("amp-1", 0)  # restarted: its first heartbeats are refused...
    assert not guard.check("amp-1", 1)
    assert guard.check("amp-1", 2)  # ...until its seq passes the newest seen


def test_boot_closes_replays_across_restarts() -> None:
    """With boot: every replay is refused, whatever its seq, before or after a restart."""
    guard = SeqGuard(window=3)
    first, second = 1_700_000_000, 1_700_000_600
    assert guard.check("amp-1", 500, first)
    assert not guard.check("amp-1", 90, first)  # far below, same boot: a replay, not a restart
    assert guard.check("amp-1", 0, second)  # a later boot: the agent restarted
    assert not guard.check("amp-1", 501, first)  # a pre-restart capture, even with a higher seq
    assert not guard.check("amp-1", 0, second)
    assert not guard.check("amp-1", 502)  # a capture without boot after boots were seen
    assert guard.check("amp-1", 1, second)


def test_a_forged_later_boot_locks_the_real_agent_out() -> None:
    """The documented limit: a key holder's later boot makes the real agent's heartbeats refused."""
    guard = SeqGuard()
    assert guard.check("amp-1", 10, 1_700_000_000)
    assert guard.check("amp-1", 0, 4_000_000_000)  # forged by a key holder
    assert not guard.check("amp-1", 11, 1_700_000_000)  # the real agent, from now on


def test_seq_guard_never_refuses_gaps() -> None:
    """With N controllers each sees every N-th seq: gaps are normal and pass."""
    guard = SeqGuard()
    assert all(guard.check("amp-1", seq) for seq in range(0, 300, 3))
    assert all(guard.check("amp-2", seq, 7) for seq in range(0, 300, 3))
    assert len(guard) == 2
    guard.forget("amp-1")
    assert len(guard) == 1


def test_a_library_sender_stamps_boot_and_octavias_message_shape_still_parses() -> None:
    """next_heartbeat adds boot; the message is Octavia's plus one key a receiver may ignore."""
    with UDPStatusSender(KEY, ["127.0.0.1:9"], boot=1_700_000_000) as sender:
        stamped = sender.next_heartbeat(build_message())
    assert stamped["boot"] == 1_700_000_000
    assert set(stamped) - set(build_message()) == {"boot"}
    heartbeat = Heartbeat.from_dict(unwrap_envelope(wrap_envelope(stamped, KEY), KEY))
    assert heartbeat.boot == 1_700_000_000
    assert heartbeat.to_dict() == stamped


# --- key handling --------------------------------------------------------------------


def test_unwrapper_repr_hides_keys() -> None:
    """An Unwrapper's repr shows how many keys it holds, never the keys."""
    secret = "s3cr3t-key-value"
    text = repr(Unwrapper([secret, secret.encode() + b"-2"]))
    assert secret not in text
    assert "2 key" in text


def test_rejections_never_contain_the_key() -> None:
    """No rejection message names the key, whatever the reason."""
    secret = "s3cr3t-key-value"
    packets = _bad_packets(secret)
    for packet in packets:
        with pytest.raises(HeartbeatError) as excinfo:
            Heartbeat.from_dict(unwrap_envelope(packet, [secret, secret.encode("utf-16")]))
        assert secret not in str(excinfo.value)
        assert secret not in repr(excinfo.value)


def test_str_key_is_utf8_encoded() -> None:
    """A str key equals its UTF-8 bytes; other encodings are other keys."""
    key = "clé-🔑"
    packet = wrap_envelope(MESSAGE, key)
    assert unwrap_envelope(packet, key.encode("utf-8")) == MESSAGE
    assert unwrap_envelope(wrap_envelope(MESSAGE, key.encode("utf-8")), key) == MESSAGE
    with pytest.raises(InvalidHMACError):
        unwrap_envelope(packet, "clé".encode("latin-1") + "-🔑".encode())


@pytest.mark.parametrize("bad", [None, 42, [b"ok", 3]])
def test_a_key_of_another_type_is_a_type_error(bad: object) -> None:
    """A key that is neither str nor bytes fails at construction with TypeError."""
    with pytest.raises(TypeError):
        Unwrapper(bad)  # type: ignore[arg-type]


def test_an_empty_key_ring_is_a_value_error() -> None:
    """An empty key ring fails at construction with ValueError."""
    with pytest.raises(ValueError, match="at least one key"):
        Unwrapper([])


def test_key_ring_accepts_both_keys() -> None:
    """A key ring verifies packets signed with any of its keys."""
    ring = Unwrapper(["new", b"old"])
    assert ring.inspect(wrap_envelope(MESSAGE, "old")).key_index == 1
    assert ring.inspect(wrap_envelope(MESSAGE, "new")).key_index == 0


def test_unwrap_envelope_forgets_a_key_after_eight_other_key_rings() -> None:
    """The one-call unwrap keeps a key only until eight other key rings were used after it."""
    import threading

    from amphora_heartbeat import envelope as envelope_module

    held: list[bool] = []

    def worker() -> None:
        # A thread of its own: its cache starts empty and dies with it.
        secret = "retained-secret"
        unwrap_envelope(wrap_envelope(MESSAGE, secret), secret)
        cache = envelope_module._local.unwrappers
        held.append(any(secret.encode() in u.keys for u in cache.values()))
        for i in range(8):
            other = f"other-{i}"
            unwrap_envelope(wrap_envelope(MESSAGE, other), other)
        held.append(any(secret.encode() in u.keys for u in cache.values()))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert held == [True, False]


# --- resource bounds -----------------------------------------------------------------


def test_default_decompressed_cap_is_one_mib() -> None:
    """The default cap on a decompressed payload is 1 MiB."""
    assert DEFAULT_MAX_DECOMPRESSED == 1 << 20
    assert Unwrapper(KEY).max_decompressed == 1 << 20


@pytest.mark.parametrize("codec", list(Codec))
def test_payload_at_the_cap_is_accepted_and_one_byte_more_refused(codec: Codec) -> None:
    """A payload of exactly the cap inflates; one byte beyond is too_large."""
    cap = 4096
    head = b'{"id": "amp-1", "listeners": {}, "pad": "'
    fits = head + b"x" * (cap - len(head) - 2) + b'"}'
    assert len(fits) == cap
    over = head + b"x" * (cap - len(head) - 1) + b'"}'
    compress = zlib.compress if codec is Codec.ZLIB else zstandard.ZstdCompressor().compress
    unwrapper = Unwrapper(KEY, max_decompressed=cap)
    assert unwrapper.unwrap(_signed(compress(fits)))["id"] == "amp-1"
    with pytest.raises(TooLargeError):
        unwrapper.unwrap(_signed(compress(over)))


def test_zstd_frame_declaring_a_huge_size_is_refused_before_inflating() -> None:
    """A zstd frame whose header declares 2 GiB is too_large without allocating it."""
    frame = bytearray(zstandard.ZstdCompressor().compress(b"{}"))
    # Forge the frame header: single-segment flag with an 8-byte content size field.
    params = zstandard.get_frame_parameters(bytes(frame))
    assert params.content_size == 2
    forged = _forge_zstd_content_size(bytes(frame), 2 << 30)
    assert zstandard.get_frame_parameters(forged).content_size == 2 << 30
    with pytest.raises(TooLargeError, match="declares"):
        unwrap_envelope(_signed(forged), KEY)


def _forge_zstd_content_size(frame: bytes, size: int) -> bytes:
    # Frame header: magic (4), descriptor (1), [window descriptor], [dict id], content size.
    descriptor = frame[4]
    fcs_flag = descriptor >> 6
    single_segment = (descriptor >> 5) & 1
    fcs_len = {0: single_segment, 1: 2, 2: 4, 3: 8}[fcs_flag]
    start = 5 + (0 if single_segment else 1)
    body = frame[start + fcs_len :]
    new_descriptor = (3 << 6) | (1 << 5) | (descriptor & 0x1F & ~(1 << 5))
    return frame[:4] + bytes([new_descriptor]) + size.to_bytes(8, "little") + body


@pytest.mark.parametrize(
    "document",
    [b"[" * 200_000 + b"]" * 200_000, b'{"a": ' * 100_000 + b"1" + b"}" * 100_000],
    ids=["lists", "objects"],
)
def test_deep_nesting_is_not_json(document: bytes) -> None:
    """Nesting deeper than the parser handles is a not_json rejection, not RecursionError."""
    with pytest.raises(NotJSONError):
        unwrap_envelope(_signed(zlib.compress(document)), KEY)


def test_huge_integer_is_not_json() -> None:
    """An integer of tens of thousands of digits is a not_json rejection, not ValueError."""
    document = b'{"id": "amp-1", "seq": ' + b"9" * 50_000 + b', "listeners": {}}'
    with pytest.raises(NotJSONError):
        unwrap_envelope(_signed(zlib.compress(document)), KEY)


def _listener(**stats: int) -> dict[str, object]:
    counters = {"rx": 0, "tx": 0, "conns": 0, "totconns": 0, "ereq": 0}
    counters.update(stats)
    return {"status": "OPEN", "stats": counters}


def test_default_limits() -> None:
    """The documented defaults: 1024 listeners, 2048 pools, 8192 members, 36-char ids."""
    assert Limits() == Limits(
        max_listeners=1024, max_pools=2048, max_members=8192, max_id_length=36
    )


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (
            Limits(max_listeners=2),
            {
                "id": "a",
                "ver": 3,
                "pools": {},
                "listeners": {f"l{i}": _listener() for i in range(3)},
            },
        ),
        (
            Limits(max_pools=2),
            {
                "id": "a",
                "ver": 3,
                "listeners": {},
                "pools": {f"p{i}": {"status": "UP", "members": {}} for i in range(3)},
            },
        ),
        (
            Limits(max_pools=2),
            {
                "id": "a",
                "ver": 1,
                "listeners": {
                    "l1": dict(_listener(), pools={f"p{i}": {"members": {}} for i in range(2)}),
                    "l2": dict(_listener(), pools={"p9": {"members": {}}}),
                },
            },
        ),
        (
            Limits(max_members=3),
            {
                "id": "a",
                "ver": 3,
                "listeners": {},
                "pools": {"p": {"status": "UP", "members": {f"m{i}": "UP" for i in range(4)}}},
            },
        ),
        (
            Limits(max_members=3),
            {
                "id": "a",
                "listeners": {
                    "l": dict(
                        _listener(), pools={"p": {"members": [{f"m{i}": "UP"} for i in range(4)]}}
                    )
                },
            },
        ),
        (Limits(max_id_length=8), {"id": "a" * 9, "listeners": {}}),
        (Limits(max_id_length=8), {"id": "a", "listeners": {"l" * 9: _listener()}}),
        (
            Limits(max_id_length=8),
            {"id": "a", "ver": 2, "listeners": {}, "pools": {"p" * 9: {"members": {}}}},
        ),
        (
            Limits(max_id_length=8),
            {"id": "a", "ver": 2, "listeners": {}, "pools": {"p": {"members": {"m" * 9: "UP"}}}},
        ),
    ],
    ids=[
        "listeners",
        "pools-top",
        "pools-nested",
        "members",
        "members-list",
        "amphora-id",
        "listener-id",
        "pool-key",
        "member-id",
    ],
)
def test_each_limit_is_malformed_beyond_and_configurable(
    limits: Limits, message: dict[str, object]
) -> None:
    """Beyond each Limits bound the message is malformed; the default limits accept it."""
    with pytest.raises(MalformedError):
        Heartbeat.from_dict(message, limits=limits)
    Heartbeat.from_dict(message)


@pytest.mark.parametrize(
    "bad_id",
    ["amp\x00", "amp\ud800", "a" * 37, "", "amp\nforged", "amp\x7f", "ampé", "amp\u202e", "amp 1"],
    ids=["nul", "surrogate", "37-chars", "empty", "newline", "del", "non-ascii", "bidi", "space"],
)
def test_ids_no_database_can_hold_are_bad_id(bad_id: str) -> None:
    """An id Octavia's VARCHAR(36), PostgreSQL, UTF-8 or a log line cannot take is bad_id."""
    for message in (
        {"id": bad_id, "listeners": {}},
        {"id": "amp-1", "ver": 3, "listeners": {bad_id: _listener()}, "pools": {}},
        {"id": "amp-1", "ver": 3, "listeners": {}, "pools": {f"{bad_id}:l1": {"members": {}}}},
        {"id": "amp-1", "ver": 3, "listeners": {}, "pools": {"p1": {"members": {bad_id: "UP"}}}},
    ):
        # Through the wire, as a key holder would send it: the JSON escapes what it must.
        with pytest.raises(BadIdError) as info:
            Heartbeat.from_dict(unwrap_envelope(wrap_envelope(message, KEY), KEY))
        assert info.value.reason == "bad_id"
        str(info.value).encode("utf-8")
    assert Heartbeat.from_dict({"id": "8d723104-f773-43c1-b458-a748e9bb17bc", "listeners": {}})


def test_from_dict_refuses_any_python_value_as_malformed() -> None:
    """Values JSON cannot hold raise MalformedError, never ValueError or RecursionError."""
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    for message in (
        {"id": "amp-1", "seq": 10**5000, "listeners": {}},
        {"id": "amp-1", "seq": deep, "listeners": {}},
        {"id": "amp-1", "listeners": {7: _listener()}},
        {"id": "amp-1", "listeners": {b"l1": _listener()}},
        {"id": ("amp-1",), "listeners": {}},
        {"id": "amp-1", "ver": 3, "listeners": {}, "pools": {"p": {"members": {None: "UP"}}}},
    ):
        with pytest.raises(MalformedError):
            Heartbeat.from_dict(message)


@pytest.mark.parametrize("field", ["seq", "ver", "boot"])
def test_seq_ver_and_boot_are_bounded_to_bigint(field: str) -> None:
    """seq, ver and boot fit a BIGINT column: 2**63 - 1 parses, 2**63 or -1 is malformed."""
    message: dict[str, object] = {"id": "amp-1", "ver": 3, "listeners": {}, "pools": {}}
    Heartbeat.from_dict(dict(message, **{field: (1 << 63) - 1}))
    for bad in (1 << 63, -1):
        with pytest.raises(MalformedError, match=field):
            Heartbeat.from_dict(dict(message, **{field: bad}))


def test_unknown_statuses_are_logged_a_line_per_kind_per_window(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """500 heartbeats of unknown statuses write a handful of lines, not one per member."""
    from amphora_heartbeat import rules
    from amphora_heartbeat.logs import RateLimitedLogger

    monkeypatch.setattr(rules, "_STATUS_WARNINGS", RateLimitedLogger(rules._LOG))
    (amphora,) = make_fleet(1, seed=4, listeners=2, pools=2, members=10)
    heartbeat = Heartbeat.from_dict(
        amphora.message(
            listener_status={lst.listener_id: "LISTENING" for lst in amphora.listeners},
            pool_status={p.pool_id: "MAYBE" for p in amphora.pools},
            member_status={m: "??" for p in amphora.pools for m in p.members},
        )
    )
    view = rules.LoadBalancerView.from_dict(amphora.view())
    with caplog.at_level(logging.WARNING, logger="amphora_heartbeat"):
        for i in range(500):
            rules.derive(heartbeat, view, now=1000.0 + i * 0.01)
    assert len(caplog.records) == 3  # one listener, one pool, one member line
    assert all("reported status" in r.getMessage() for r in caplog.records)


def test_every_test_this_page_names_exists() -> None:
    """The security page names tests for its claims: each one is there to be run."""
    import re

    page = (Path(__file__).parent.parent / "docs" / "explanation" / "security.md").read_text()
    named = set(re.findall(r"`(test_\w+)`", page))
    sources = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    defined = set(re.findall(r"^def (test_\w+)", sources, re.MULTILINE))
    assert named
    assert named <= defined, named - defined


@pytest.mark.parametrize(
    ("counter", "bound"),
    [
        ("rx", (1 << 63) - 1),
        ("tx", (1 << 63) - 1),
        ("totconns", (1 << 63) - 1),
        ("ereq", (1 << 63) - 1),
        ("conns", (1 << 31) - 1),
    ],
)
def test_counters_are_bounded_to_their_columns(counter: str, bound: int) -> None:
    """A counter at its column's bound parses; one beyond, or negative, is malformed."""
    for value, ok in ((bound, True), (bound + 1, False), (-1, False)):
        message = {"id": "a", "listeners": {"l": _listener(**{counter: value})}}
        if ok:
            Heartbeat.from_dict(message)
        else:
            with pytest.raises(MalformedError, match=counter):
                Heartbeat.from_dict(message)


# --- the receiver: source address, logs, bounds, floods ------------------------------


def _wait_for(
    getter: UDPStatusGetter, counter: str, value: int, deadline: float = DEADLINE
) -> None:
    """Call check() until the counter reaches value (a readiness wait with a deadline)."""
    end = time.monotonic() + deadline
    while getter.counters[counter] < value:
        assert time.monotonic() < end, f"{counter} stuck at {getter.counters[counter]}"
        getter.check()


@pytest.mark.parametrize("ip", HOSTS)
def test_handlers_get_the_source_address(ip: str) -> None:
    """Handlers receive the sender's IP, so a controller can compare it to lb_network_ip."""
    seen: list[tuple[str, str]] = []
    known_ips = {"amp-1": ip}

    def handler(heartbeat: Heartbeat, srcaddr: str) -> None:
        if known_ips.get(heartbeat.amphora_id) == srcaddr:
            seen.append((heartbeat.amphora_id, srcaddr))

    with UDPStatusGetter(KEY, ip, 0, timeout=5.0, health_handler=handler) as getter:
        host, port = getter.address
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        with UDPStatusSender(KEY, [target]) as sender:
            sender.dosend(MESSAGE)
            _wait_for(getter, "accepted", 1)
    assert seen == [("amp-1", ip)]


@needs_ipv6
def test_source_check_compares_addresses_not_spellings() -> None:
    """An IPv4 amphora heard on an IPv6 socket passes the check only once normalised."""
    heard: list[str] = []
    with UDPStatusGetter(
        KEY, "::ffff:127.0.0.1", 0, timeout=5.0, health_handler=lambda hb, src: heard.append(src)
    ) as getter:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.sendto(wrap_envelope(MESSAGE, KEY), ("127.0.0.1", getter.address[1]))
        _wait_for(getter, "accepted", 1)
    lb_network_ip = "127.0.0.1"
    assert heard == ["::ffff:127.0.0.1"]
    assert heard[0] != lb_network_ip  # a plain comparison would drop a genuine heartbeat
    assert normalize_host(heard[0]) == normalize_host(lb_network_ip)


def _bad_packets(secret: str) -> list[bytes]:
    return [
        b"short",
        wrap_envelope(MESSAGE, "other"),
        _signed(b"\x78 garbage", secret),
        _signed(zlib.compress(b"x" * (DEFAULT_MAX_DECOMPRESSED + 1)), secret),
        _signed(zlib.compress(b"{not json"), secret),
        _signed(zlib.compress(b"[]"), secret),
        wrap_envelope({"id": 1, "listeners": {}}, secret),
        wrap_envelope({"id": "amp\u0000", "listeners": {}}, secret),
    ]


def test_keys_never_appear_in_logs_or_reprs(caplog: pytest.LogCaptureFixture) -> None:
    """Rejections of every reason are logged without the key; reprs hide it too."""
    secret = "s3cr3t-key-value"
    caplog.set_level(logging.DEBUG, logger="amphora_heartbeat")
    with UDPStatusGetter([secret, "second-" + secret], "127.0.0.1", 0, timeout=0) as getter:
        for i, packet in enumerate(_bad_packets(secret)):
            with pytest.raises(HeartbeatError):
                getter.handle_datagram(packet, ("127.0.0.1", 40000), now=1000.0 + 60 * i)
        assert secret not in repr(getter)
        counters = getter.counters
    with UDPStatusSender(secret, ["127.0.0.1:9"]) as sender:
        assert secret not in repr(sender)
    assert {f"rejected.{r}" for r in REASONS} <= {k for k, v in counters.items() if v}
    assert len(caplog.records) == len(REASONS)
    assert all(secret not in r.getMessage() for r in caplog.records)
    assert secret not in caplog.text


def test_rejection_log_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    """A flood logs a few warnings per window and one summary; the counters stay exact."""
    caplog.set_level(logging.WARNING, logger="amphora_heartbeat")
    bad = wrap_envelope(MESSAGE, "wrong-key")
    with UDPStatusGetter(KEY, "127.0.0.1", 0, timeout=0) as getter:
        for _ in range(10_000):
            with pytest.raises(InvalidHMACError):
                getter.handle_datagram(bad, ("192.0.2.1", 5555), now=1000.0)
        first_window = len(caplog.records)
        # One more rejection after the window: a summary of what was left out, then it.
        with pytest.raises(InvalidHMACError):
            getter.handle_datagram(bad, ("192.0.2.1", 5555), now=1000.0 + 3600)
        assert getter.counters["rejected.invalid_hmac"] == 10_001
    assert first_window == 5  # the documented burst per 10-second window
    messages = [r.getMessage() for r in caplog.records[first_window:]]
    assert messages[0].startswith(f"{10_000 - first_window} more")
    assert "192.0.2.1" in messages[1]
    assert "invalid_hmac" in messages[1]


def test_good_packets_are_accepted_through_a_flood_of_bad_ones() -> None:
    """Bad packets interleaved with good ones: every good one is accepted, every bad counted."""
    rounds, per_round = 20, 50
    bad = [wrap_envelope(MESSAGE, "wrong-key"), b"\x00" * 100, _signed(b"\x78junk")]
    with UDPStatusGetter(KEY, "127.0.0.1", 0, timeout=5.0) as getter:
        target = "{}:{}".format(*getter.address)
        with UDPStatusSender(KEY, [target]) as sender:
            for i in range(rounds):
                for j in range(per_round):
                    sender.send_envelope(bad[j % len(bad)])
                sender.dosend(dict(MESSAGE, seq=i))
                _wait_for(getter, "accepted", i + 1)
        _wait_for(getter, "received", rounds * (per_round + 1))
        counters = getter.counters
    assert counters["accepted"] == rounds
    assert counters["received"] == rounds * (per_round + 1)
    assert sum(counters[f"rejected.{r}"] for r in REASONS) == rounds * per_round


def test_check_never_raises_for_a_bad_packet() -> None:
    """check() returns None for a refused datagram and counts it."""
    with UDPStatusGetter(KEY, "127.0.0.1", 0, timeout=5.0) as getter:
        with UDPStatusSender("wrong-key", ["{}:{}".format(*getter.address)]) as sender:
            sender.dosend(MESSAGE)
        end = time.monotonic() + DEADLINE
        while getter.counters["received"] < 1 and time.monotonic() < end:
            assert getter.check() is None
        assert getter.counters["rejected.invalid_hmac"] == 1


def test_the_largest_udp_datagram_is_read_whole() -> None:
    """A valid envelope of 65,507 bytes (the IPv4 UDP maximum) is accepted, not cut."""
    target = 65_507 - 64  # the payload, before its hex trailer
    head = b'{"id": "amp-1", "listeners": {}, "pad": "'
    # Stored (level 0) zlib grows with the document; find the size that fills the datagram.
    for size in range(target, target - 200, -1):
        payload = zlib.compress(head + b"a" * (size - len(head) - 2) + b'"}', 0)
        if len(payload) == target:
            break
    datagram = _signed(payload)
    assert len(datagram) == 65_507
    with UDPStatusGetter(KEY, "127.0.0.1", 0, timeout=5.0) as getter:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.sendto(datagram, getter.address)
        heartbeat, _ = getter.dorecv()
    assert heartbeat.amphora_id == "amp-1"


def test_getter_applies_its_bounds() -> None:
    """max_decompressed and limits given to the getter refuse what lies beyond them."""
    big = _signed(zlib.compress(json.dumps(dict(MESSAGE, pad="x" * 5000)).encode()))
    many = wrap_envelope(build_message(version=3, listeners=1, members=5), KEY)
    with UDPStatusGetter(
        KEY, "127.0.0.1", 0, timeout=0, max_decompressed=4096, limits=Limits(max_members=4)
    ) as getter:
        with pytest.raises(TooLargeError):
            getter.handle_datagram(big, ("127.0.0.1", 1), now=0.0)
        with pytest.raises(MalformedError):
            getter.handle_datagram(many, ("127.0.0.1", 1), now=0.0)
        counters = getter.counters
    assert counters["rejected.too_large"] == counters["rejected.malformed"] == 1


def test_rcvbuf_sets_the_socket_receive_buffer() -> None:
    """The getter's rcvbuf (Octavia's sock_rlimit) sets SO_RCVBUF on its socket."""
    sizes = {}
    for rcvbuf in (None, 65_536):
        with (
            UDPStatusGetter(KEY, "127.0.0.1", 0, timeout=0, rcvbuf=rcvbuf) as getter,
            socket.fromfd(getter.fileno(), socket.AF_INET, socket.SOCK_DGRAM) as view,
        ):
            sizes[rcvbuf] = view.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    # Linux reports twice the size asked for (its bookkeeping overhead).
    assert sizes[65_536] in (65_536, 2 * 65_536)
    assert sizes[None] != sizes[65_536]


def test_manager_writes_nothing_for_an_amphora_it_does_not_know(tmp_path: Path) -> None:
    """A signed heartbeat naming an unknown amphora adds no health and no statistics rows."""
    store = SQLiteStore(str(tmp_path / "health.db"))
    store.create_schema()
    known, invented = make_fleet(2, seed=9)
    store.add_fleet([known])
    manager = HealthManager(None, store)
    now = time.time()
    for amphora in (known, invented):
        manager.submit(Heartbeat.from_dict(amphora.message(seq=1), recv_time=now))
    manager.step(now)
    assert set(store.read_health()) == {known.amphora_id}
    assert {amphora_id for _, amphora_id in store.read_statistics()} == {known.amphora_id}
    assert manager.counters["unknown_amphora"] == 1
    manager.close()
    store.close()


@pytest.mark.parametrize("signed_with", ["s3cr3t-key-value", "another-key"])
@pytest.mark.parametrize("key_from", ["env", "file", "argv"])
def test_command_line_never_prints_the_key(signed_with: str, key_from: str, tmp_path: Path) -> None:
    """decode, accepting or refusing, prints neither the key nor the key file's contents."""
    import os
    import subprocess
    import sys

    secret = "s3cr3t-key-value"
    packet = tmp_path / "packet.bin"
    packet.write_bytes(wrap_envelope(MESSAGE, signed_with))
    env = {k: v for k, v in os.environ.items() if k != "AMPHORA_HEARTBEAT_KEY"}
    args = [sys.executable, "-m", "amphora_heartbeat", "decode", str(packet)]
    if key_from == "env":
        env["AMPHORA_HEARTBEAT_KEY"] = secret
    elif key_from == "file":
        (tmp_path / "key").write_text(secret + "\n", encoding="utf-8")
        args += ["--key-file", str(tmp_path / "key")]
    else:
        args += ["--key", secret]
    result = subprocess.run(
        args, check=False, capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == (0 if signed_with == secret else 1)
    assert ("invalid_hmac" in result.stdout + result.stderr) is (signed_with != secret)
    assert secret not in result.stdout
    assert secret not in result.stderr
