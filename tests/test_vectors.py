"""Octavia 19's own envelopes: unwrap, parse, and re-wrap to the same bytes."""

from __future__ import annotations

from typing import Any

from amphora_heartbeat import Codec, Digest, Heartbeat, Unwrapper, unwrap_envelope, wrap_envelope


def _has_list_members(message: dict[str, Any]) -> bool:
    pools: list[Any] = list(message.get("pools", {}).values())
    for listener in message["listeners"].values():
        pools.extend(listener.get("pools", {}).values())
    return any(isinstance(p.get("members"), list) for p in pools)


def test_vector_file_covers_what_the_issue_promises(vectors: list[Any]) -> None:
    """The golden file has hex and raw trailers, both key kinds and every version."""
    assert len(vectors) == 28
    assert {v.trailer for v in vectors} == {"hex", "raw"}
    assert any(not v.key.isascii() for v in vectors)
    versions = {v.message.get("ver", 0) for v in vectors}
    assert versions == {0, 1, 2, 3}
    assert any(_has_list_members(v.message) for v in vectors)


def test_vector_unwraps_to_its_message(vector: Any) -> None:
    """Every Octavia envelope unwraps to exactly the message it was made from."""
    assert unwrap_envelope(vector.envelope, vector.key) == vector.message


def test_vector_inspect_reports_trailer_and_codec(vector: Any) -> None:
    """inspect() names the trailer form the vector was made with, and zlib."""
    got = Unwrapper(vector.key).inspect(vector.envelope)
    assert got.digest is Digest(vector.trailer)
    assert got.codec is Codec.ZLIB
    assert got.key_index == 0


def test_vector_key_as_bytes_verifies(vector: Any) -> None:
    """The key UTF-8 encoded to bytes verifies the same envelope."""
    assert unwrap_envelope(vector.envelope, vector.key.encode("utf-8")) == vector.message


def test_vector_parses(vector: Any) -> None:
    """Every Octavia message parses into a Heartbeat of its version."""
    hb = Heartbeat.from_dict(unwrap_envelope(vector.envelope, vector.key), recv_time=1.0)
    assert hb.amphora_id == vector.message["id"]
    assert hb.version == vector.message.get("ver", 0)
    assert hb.versioned is ("ver" in vector.message)
    assert set(hb.listeners) == set(vector.message["listeners"])


def test_vector_rewraps_to_identical_bytes(vector: Any) -> None:
    """wrap_envelope reproduces Octavia's bytes exactly (zlib 9, json.dumps defaults)."""
    again = wrap_envelope(vector.message, vector.key, digest=Digest(vector.trailer))
    assert again == vector.envelope


def test_vector_to_dict_is_unchanged_except_list_form(vector: Any) -> None:
    """to_dict gives back each canonical message unchanged; the list form is normalised."""
    hb = Heartbeat.from_dict(vector.message)
    if _has_list_members(vector.message) or vector.name == "v0_seed_list_members":
        # Older documentation example: list members, missing counters.
        assert hb.to_dict() != vector.message
        assert Heartbeat.from_dict(hb.to_dict()) == hb
    else:
        assert hb.to_dict() == vector.message
