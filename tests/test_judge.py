"""The judge's view cache: reuse while the stored view is unchanged, bounded in size."""

from __future__ import annotations

import copy

from amphora_heartbeat.manager.judge import VIEW_CACHE_SIZE, ViewCache
from amphora_heartbeat.rules import LoadBalancerView
from amphora_heartbeat.store import StoredView
from amphora_heartbeat.testing import make_fleet


def _stored(index: int = 0, **view_options: str) -> StoredView:
    amp = make_fleet(index + 1, seed=7)[index]
    return StoredView(amp.amphora_id, "ALLOCATED", amp.load_balancer_id, amp.view(**view_options))


def test_an_unchanged_view_is_reused_and_equals_a_fresh_build() -> None:
    cache = ViewCache()
    sv = _stored()
    first = cache.view(sv)
    # An equal mapping read again in a later tick (a new object) reuses the build.
    again = cache.view(
        StoredView(sv.amphora_id, "ALLOCATED", sv.load_balancer_id, copy.deepcopy(sv.view))
    )
    assert again is first
    assert first == LoadBalancerView.from_dict(sv.view, udp_listeners_down=frozenset())


def test_a_changed_view_is_built_again() -> None:
    cache = ViewCache()
    sv = _stored()
    first = cache.view(sv)
    changed = _stored(provisioning_status="PENDING_UPDATE")
    second = cache.view(changed)
    assert second is not first
    assert second == LoadBalancerView.from_dict(changed.view, udp_listeners_down=frozenset())


def test_a_change_in_the_udp_listeners_down_is_built_again() -> None:
    cache = ViewCache()
    sv = _stored()
    first = cache.view(sv)
    listener = next(iter(sv.view["listeners"]))
    down = StoredView(
        sv.amphora_id, "ALLOCATED", sv.load_balancer_id, sv.view, frozenset({listener})
    )
    second = cache.view(down)
    assert second is not first
    assert second == LoadBalancerView.from_dict(sv.view, udp_listeners_down=frozenset({listener}))


def test_the_cache_forgets_everything_when_full() -> None:
    cache = ViewCache(size=3)
    views = [_stored(i) for i in range(4)]
    built = [cache.view(sv) for sv in views[:3]]
    assert cache.view(views[0]) is built[0]
    cache.view(views[3])  # the fourth: full, so all three are forgotten
    assert cache.view(views[0]) is not built[0]


def test_the_default_bound_keeps_memory_flat_for_large_fleets() -> None:
    # A 100,000-amphora fleet must not keep 100,000 views (about 4.5 KB each).
    assert ViewCache().size == VIEW_CACHE_SIZE <= 20_000
