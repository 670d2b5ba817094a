"""Parsed views kept by text: the same mapping while the text is the same, bounded."""

from __future__ import annotations

from amphora_heartbeat.store.reuse import REUSED_VIEWS, ParsedViews


def test_the_same_text_gives_the_same_mapping_object() -> None:
    views = ParsedViews()
    kept = views.keep("lb", '{"id": "lb"}', {"id": "lb"})
    assert views.reuse("lb", '{"id": "lb"}') is kept
    # Another load balancer with the same text is not this one's.
    assert views.reuse("other", '{"id": "lb"}') is None


def test_a_changed_text_is_not_reused() -> None:
    views = ParsedViews()
    views.keep("lb", ("ONLINE", 1), {"operating_status": "ONLINE"})
    assert views.reuse("lb", ("ERROR", 1)) is None
    assert views.reuse("lb", ("ONLINE", 1)) == {"operating_status": "ONLINE"}


def test_everything_is_forgotten_when_full() -> None:
    views = ParsedViews(size=2)
    views.keep("a", "1", {"a": 1})
    views.keep("b", "2", {"b": 2})
    views.keep("c", "3", {"c": 3})  # full: a and b are forgotten
    assert views.reuse("a", "1") is None
    assert views.reuse("b", "2") is None
    assert views.reuse("c", "3") == {"c": 3}


def test_the_default_bound_keeps_memory_flat() -> None:
    assert ParsedViews().size == REUSED_VIEWS <= 20_000
