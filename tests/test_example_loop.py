"""The worked example (docs/how-to/judge-heartbeats-in-a-loop.md) runs on real sockets."""

from __future__ import annotations

import time

from _docs import run_page

from amphora_heartbeat import Heartbeat, LoadBalancerView
from amphora_heartbeat.getter import UDPStatusGetter
from amphora_heartbeat.models import ListenerStats
from amphora_heartbeat.sender import UDPStatusSender
from amphora_heartbeat.testing import make_fleet

EXAMPLE = "how-to/judge-heartbeats-in-a-loop.md"
EXPLANATION = "explanation/rules.md"


def test_example_loop_judges_folds_and_fails_over() -> None:
    """The page's controller and loop, over 127.0.0.1, apply rules, fold deltas, fail over."""
    ns = run_page(EXAMPLE)
    assert callable(ns["main"])  # defined, and not run on import
    live, silent = make_fleet(2, seed=5, listeners=1, pools=1, members=2)
    views = {a.amphora_id: LoadBalancerView.from_dict(a.view()) for a in (live, silent)}
    # The controller has been up a full timeout: the start-up grace is over.
    started = time.time() - 60.0
    controller = ns["InMemoryController"](views, started=started, heartbeat_timeout=60.0)
    controller.tracker.record(silent.amphora_id, started - 3600.0)  # loaded from a store

    listener = live.listeners[0].listener_id
    pool = live.pools[0]
    down = pool.members[0]
    delta = ListenerStats(bytes_in=100, bytes_out=200, active_connections=3, total_connections=4)
    getter = UDPStatusGetter(
        "example-key",
        "127.0.0.1",
        0,
        timeout=0.05,
        health_handler=controller.update_health,
        stats_handler=controller.update_stats,
    )
    with getter, UDPStatusSender("example-key", [f"127.0.0.1:{getter.address[1]}"]) as sender:
        for seq in (1, 2):
            message = live.message(seq=seq, stats={listener: delta}, member_status={down: "DOWN"})
            assert sender.dosend(message)
        give_up = time.monotonic() + 30.0

        def stop() -> bool:
            done = getter.counters["accepted"] >= 2 and bool(controller.failed_over)
            return done or time.monotonic() > give_up

        ns["serve"](getter, controller, stop=stop)
        assert getter.counters["accepted"] == 2

    view = controller.views[live.amphora_id]
    assert view.pools[pool.pool_id].members[down].operating_status == "ERROR"
    assert view.pools[pool.pool_id].operating_status == "DEGRADED"
    assert view.operating_status == "DEGRADED"
    assert controller.stats == {
        (listener, live.amphora_id): ListenerStats(
            bytes_in=200, bytes_out=400, active_connections=3, total_connections=8
        )
    }
    assert controller.failed_over == [silent.amphora_id]
    assert controller.tracker.last_seen(live.amphora_id) is not None
    assert silent.amphora_id not in controller.tracker


def test_example_controller_ignores_unknown_amphorae() -> None:
    """The example stores no statistics and records no health for an amphora it does not know."""
    ns = run_page(EXAMPLE)
    (stranger,) = make_fleet(1, seed=9)
    controller = ns["InMemoryController"]({}, started=time.time())
    heartbeat = Heartbeat.from_dict(stranger.message(), recv_time=time.time())
    controller.update_health(heartbeat, "127.0.0.1")
    controller.update_stats(heartbeat, "127.0.0.1")
    assert controller.stats == {}
    assert stranger.amphora_id not in controller.tracker
    assert controller.views == {}


def test_rules_page_examples_run() -> None:
    """The python blocks of docs/explanation/rules.md run and their assertions hold."""
    run_page(EXPLANATION)
