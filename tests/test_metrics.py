"""Tests of the Prometheus metrics: the manager's collector and ``--metrics``, the library adapter.

The end-to-end test runs a real manager process with ``--metrics`` on 127.0.0.1,
a real fleet process sending to it, scrapes ``/metrics`` with a real HTTP client
and parses it with ``prometheus_client``'s own parser.
"""

from __future__ import annotations

import json
import shlex
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from _proc import KEY, Manager, sqlite_url, wait_for
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from amphora_heartbeat.envelope import wrap_envelope
from amphora_heartbeat.getter import UDPStatusGetter
from amphora_heartbeat.manager import DelayHistogram, HealthManager
from amphora_heartbeat.manager.metrics import ManagerCollector, WorkersCollector
from amphora_heartbeat.metrics import CountersCollector, register_counters
from amphora_heartbeat.models import Heartbeat
from amphora_heartbeat.sender import UDPStatusSender
from amphora_heartbeat.store import SQLiteStore, TickWrite
from amphora_heartbeat.testing import make_fleet

T0 = 1_800_000_000.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Return the samples of an exposition, by name and sorted labels, and each family's type."""
    samples: Samples = {}
    types = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def scrape(url: str) -> Samples:
    """GET ``url`` and parse it."""
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        return parse(response.read().decode())[0]


def value(samples: Samples, name: str, **labels: str) -> float:
    """Return one sample's value (0 when absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


P = "amphora_heartbeat_"


# --- end to end ------------------------------------------------------------------------


@pytest.fixture
def fleet_process(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """Yield a list to put fleet processes in; terminate them afterwards."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.terminate()
        proc.communicate(timeout=60)


def test_scraped_metrics_move_with_heartbeats_rejections_and_a_failover(
    tmp_path: Path, fleet_process: list[subprocess.Popen[str]]
) -> None:
    """A real scrape during a fleet run: heartbeats, rows, rejections and a failover all show."""
    db = tmp_path / "m.db"
    store = SQLiteStore(str(db))
    store.create_schema()
    fleet = make_fleet(5, seed=7, listeners=1, pools=1, members=1)
    store.add_fleet(fleet)
    store.close()
    failovers = tmp_path / "failovers"
    failovers.touch()
    script = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10))"
    command = shlex.join([sys.executable, "-c", script, str(failovers)])
    manager = Manager(sqlite_url(db), "--heartbeat-timeout", "1.5", "--health-check-interval",
                      "0.1", "--tick", "0.05", "--failover-command", command,
                      "--log-format", "json", metrics=True)  # fmt: skip
    try:
        url = manager.metrics_url
        assert url.startswith("http://127.0.0.1:")
        first = scrape(url)
        assert value(first, P + "heartbeats_received_total") == 0
        fleet_argv = [sys.executable, "-m", "amphora_heartbeat", "fleet", "--to",
                      f"127.0.0.1:{manager.port}", "--key", KEY, "--amphorae", "5",
                      "--listeners", "1", "--pools", "1", "--members", "1", "--seed", "7",
                      "--interval", "0.2", "--silent", "0.2", "--silent-after", "0.5",
                      "--duration", "120"]  # fmt: skip
        fleet_process.append(
            subprocess.Popen(
                fleet_argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
        )
        wait_for(
            lambda: value(scrape(url), P + "failovers_total", outcome="succeeded") >= 1,
            "a failover to succeed",
        )
        before = scrape(url)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(30):
                sock.sendto(b"x" * 40, ("127.0.0.1", manager.port))  # invalid_hmac
            for _ in range(20):
                sock.sendto(b"short", ("127.0.0.1", manager.port))  # too_short

        def rejected(reason: str, s: Samples) -> float:
            return value(s, P + "heartbeats_rejected_total", reason=reason)

        wait_for(
            lambda: rejected("too_short", scrape(url)) - rejected("too_short", before) >= 20,
            "the rejections to be counted",
        )
        wait_for(
            lambda: (
                value(scrape(url), P + "heartbeats_recorded_total")
                > value(before, P + "heartbeats_recorded_total")
            ),
            "more heartbeats recorded",
        )
        after = scrape(url)
    finally:
        counters, err = manager.stop()
    assert rejected("invalid_hmac", after) - rejected("invalid_hmac", before) == 30
    assert rejected("too_short", after) - rejected("too_short", before) == 20
    assert value(after, P + "received_bytes_total") - value(before, P + "received_bytes_total") > (
        30 * 40 + 20 * 5
    )
    assert value(after, P + "heartbeats_accepted_total") > 0
    assert value(after, P + "rows_written_total", table="amphora_health") > 0
    assert value(after, P + "rows_written_total", table="listener_statistics") > 0
    assert value(after, P + "failovers_total", outcome="started") >= 1
    assert value(after, P + "amphorae_known") == 5
    assert 0 < value(after, P + "last_commit_timestamp_seconds") <= time.time()
    commits = value(after, P + "receive_to_commit_delay_seconds_count")
    assert commits == value(after, P + "heartbeats_judged_total")
    assert commits == value(after, P + "receive_to_commit_delay_seconds_bucket", le="+Inf")
    assert value(after, P + "tick_duration_seconds_count") >= 1
    # The final counters agree with the last scrape where nothing moves after it.
    assert counters["failovers_succeeded"] >= value(
        after, P + "failovers_total", outcome="succeeded"
    )
    silent = failovers.read_text().split()
    assert len(silent) >= 1
    # JSON logs of the same run: the failover's line names its amphora.
    events = [json.loads(line) for line in err.splitlines()]
    started = [e for e in events if e["event"] == "failover_started"]
    assert {e["amphora_id"] for e in started} == set(silent)


def test_metrics_types_and_names_follow_prometheus_conventions(tmp_path: Path) -> None:
    """Counters end in _total, gauges and histograms carry base units; every family documented."""
    store = SQLiteStore(str(tmp_path / "m.db"))
    store.create_schema()
    with UDPStatusGetter("k", "127.0.0.1", 0) as getter:
        registry = CollectorRegistry()
        registry.register(ManagerCollector(HealthManager(getter, store)))
        text = generate_latest(registry).decode()
    samples, types = parse(text)
    assert types[P + "heartbeats_rejected"] == "counter"
    assert types[P + "failovers_held_back"] == "counter"
    assert types[P + "backlog_heartbeats"] == "gauge"
    assert types[P + "receive_to_commit_delay_seconds"] == "histogram"
    assert types[P + "tick_duration_seconds"] == "histogram"
    assert all(name.startswith(P) for name in types)
    for sample, _ in samples:
        family = max((n for n in types if sample.startswith(n)), key=len)
        if types[family] == "counter":
            assert sample == family + "_total"
    documented = Path(__file__).parent.parent.joinpath("docs/reference/errors.md").read_text()
    for name in types:
        shown = name + ("_total" if types[name] == "counter" else "")
        assert f"`{shown}" in documented, shown
    store.close()


# --- what the collector reads ---------------------------------------------------------


def test_held_back_by_startup_and_by_a_store_error_are_counted_once_per_hold(
    tmp_path: Path,
) -> None:
    """Stale amphorae held by the start-up grace, then after a store error, each counted once."""
    path = tmp_path / "m.db"
    store = SQLiteStore(str(path), timeout=0.05)
    store.create_schema()
    fleet = make_fleet(3, seed=3)
    store.add_fleet(fleet)
    first = HealthManager(None, store, heartbeat_timeout=10)
    for amp in fleet:
        first.submit(Heartbeat.from_dict(amp.message(), recv_time=T0))
    first.step(T0)
    # A manager started at T0 + 20 finds all three stale during its grace (to T0 + 30).
    fresh = HealthManager(
        None, store, heartbeat_timeout=10, health_check_interval=1, started=T0 + 20
    )
    for t in (T0 + 21, T0 + 22, T0 + 23):
        fresh.step(t)
    assert fresh.counters["failovers_held_startup"] == 3
    assert fresh.counters["failovers_held_paused"] == 0
    # A store error (the database locked by another connection) pauses, and holds again.
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    fresh.submit(Heartbeat.from_dict(fleet[0].message(), recv_time=T0 + 31))
    fresh.step(T0 + 31)
    locker.execute("ROLLBACK")
    locker.close()
    assert fresh.paused_at == T0 + 31
    for t in (T0 + 33, T0 + 34):
        fresh.step(t)
    assert fresh.counters["failovers_held_paused"] == 2  # the one that reported is not stale
    assert fresh.counters["failovers_held_startup"] == 3
    assert fresh.counters["store_errors"] == 1
    store.close()


def test_rows_by_table_add_up_to_what_write_tick_returns(tmp_path: Path) -> None:
    """TickWrite.rows_by_table sums to the rows write_tick reports, table by table."""
    store = SQLiteStore(str(tmp_path / "m.db"))
    store.create_schema()
    fleet = make_fleet(2, seed=5, listeners=2, pools=1, members=2)
    store.add_fleet(fleet)
    manager = HealthManager(None, store)
    for amp in fleet:
        manager.submit(Heartbeat.from_dict(amp.message(), recv_time=T0))
    manager.step(T0)
    counters = manager.counters
    by_table = {k.split(".", 1)[1]: v for k, v in counters.items() if k.startswith("rows_written.")}
    assert sum(by_table.values()) == counters["rows_written"] > 0
    assert by_table["amphora_health"] == 2
    assert by_table["listener_statistics"] == 4
    write = TickWrite(now=T0, health={"a": T0}, members={"m": "ONLINE"}, reallocated=["a"])
    assert write.rows_by_table()["amphora"] == 1
    assert sum(write.rows_by_table().values()) == len(write)
    store.close()


def test_delay_histogram_cumulative_counts_at_bucket_bounds() -> None:
    """cumulative() counts delays at or below each bound, the total count, and the exact sum."""
    h = DelayHistogram()
    for delay in (0.0004, 0.003, 0.003, 0.02, 0.7, 100.0):
        h.add(delay)
    counts, count, total = h.cumulative([0.001, 0.005, 0.05, 1.0])
    assert counts == [1, 3, 4, 5]
    assert count == 6
    assert total == pytest.approx(100.7264)
    assert h.snapshot().since(DelayHistogram()).total == pytest.approx(100.7264)
    other = DelayHistogram()
    other.add(0.5, 2)
    h.merge(other)
    assert h.cumulative([1.0])[1:] == (8, pytest.approx(101.7264))


def test_workers_counters_take_the_latest_commit_and_the_stale_count_not_their_sum() -> None:
    """Summed over workers, a commit time and a stale count (one database) are the largest."""
    from amphora_heartbeat.manager.supervisor import sum_counters

    total = sum_counters(
        [
            {"last_commit_seconds": T0, "stale_amphorae": 3, "amphorae_heard": 2},
            {"last_commit_seconds": T0 + 5, "stale_amphorae": 3, "amphorae_heard": 4},
        ]
    )
    assert total == {"last_commit_seconds": T0 + 5, "stale_amphorae": 3, "amphorae_heard": 6}


def test_received_bytes_counts_every_datagram_accepted_or_not() -> None:
    """The getter's received_bytes adds the size of every datagram it handled."""
    good = wrap_envelope(make_fleet(1, seed=1)[0].message(), "k")
    with UDPStatusGetter("k", "127.0.0.1", 0) as getter:
        getter.handle_datagram(good, ("127.0.0.1", 1), now=T0)
        with pytest.raises(Exception, match="short"):
            getter.handle_datagram(b"tiny", ("127.0.0.1", 1), now=T0)
        assert getter.counters["received_bytes"] == len(good) + 4


# --- the library adapter --------------------------------------------------------------


def test_register_counters_exports_a_getters_and_a_senders_counters() -> None:
    """Two lines export a getter's and a sender's counters; keyed ones become a reason label."""
    registry = CollectorRegistry()
    with (
        UDPStatusGetter("k", "127.0.0.1", 0, timeout=5) as getter,
        UDPStatusSender("k", [f"127.0.0.1:{getter.address[1]}"]) as sender,
    ):
        register_counters(getter, prefix="lb_heartbeat", registry=registry)
        register_counters(sender, prefix="lb_sender", registry=registry)
        sender.dosend(make_fleet(1, seed=2)[0].message())
        getter.dorecv()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"x" * 40, getter.address)
        with pytest.raises(Exception, match="no key"):
            getter.dorecv()
        samples, types = parse(generate_latest(registry).decode())
    assert value(samples, "lb_heartbeat_received_total") == 2
    assert value(samples, "lb_heartbeat_accepted_total") == 1
    assert value(samples, "lb_heartbeat_rejected_total", reason="invalid_hmac") == 1
    assert value(samples, "lb_heartbeat_rejected_total", reason="too_short") == 0
    assert value(samples, "lb_sender_sent_total") == 1
    assert types["lb_heartbeat_rejected"] == "counter"


def test_register_counters_refuses_bad_names_and_a_second_registration() -> None:
    """An invalid prefix or label is a ValueError, so is registering the same names twice."""
    registry = CollectorRegistry()
    with UDPStatusGetter("k", "127.0.0.1", 0) as getter:
        with pytest.raises(ValueError, match="not a Prometheus"):
            CountersCollector(getter, prefix="bad-name")
        with pytest.raises(ValueError, match="not a Prometheus"):
            CountersCollector(getter, label="1x")
        register_counters(getter, registry=registry)
        with pytest.raises(ValueError, match="Duplicated"):
            register_counters(getter, registry=registry)


def test_register_counters_defaults_to_the_global_registry() -> None:
    """Without a registry the collector goes to prometheus_client's REGISTRY (what it serves)."""
    from prometheus_client import REGISTRY

    with UDPStatusGetter("k", "127.0.0.1", 0) as getter:
        collector = register_counters(getter, prefix="ops_test_default")
        try:
            assert REGISTRY.get_sample_value("ops_test_default_received_total") == 0
        finally:
            REGISTRY.unregister(collector)


_NO_CLIENT = "import sys; sys.modules['prometheus_client'] = None; "


def test_without_prometheus_client_the_adapter_names_the_extra() -> None:
    """Without prometheus_client, the adapter raises ImportError naming the metrics extra."""
    code = _NO_CLIENT + (
        "from amphora_heartbeat.metrics import CountersCollector\n"
        "try:\n    CountersCollector(object())\n"
        "except ImportError as e:\n    print(e)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "amphora_heartbeat[metrics]" in done.stdout


def test_manager_metrics_option_without_prometheus_client_is_a_usage_error(tmp_path: Path) -> None:
    """`manager --metrics` without the extra: one line naming it, exit status 2."""
    code = _NO_CLIENT + ("from amphora_heartbeat.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run(
        [sys.executable, "-c", code, "manager", "--key", "k", "--db",
         sqlite_url(tmp_path / "m.db"), "--metrics", "127.0.0.1:0"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "amphora-heartbeat manager: error: --metrics needs prometheus_client: "
        "pip install 'amphora_heartbeat[metrics]'"
    ]


@pytest.mark.parametrize(
    ("address", "status", "message"),
    [
        ("127.0.0.1", 2, "argument --metrics:"),
        ("127.0.0.1:99999", 2, "argument --metrics:"),
        ("localhost:9435", 2, "argument --metrics:"),
        ("busy", 1, "cannot serve metrics on 127.0.0.1:"),
    ],
)
def test_manager_metrics_option_bad_or_busy_address(
    tmp_path: Path, address: str, status: int, message: str
) -> None:
    """A malformed --metrics is a usage error (exit 2); a port already in use is exit 1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        if address == "busy":
            address = f"127.0.0.1:{busy.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-m", "amphora_heartbeat", "manager", "--key", "k", "--db",
             sqlite_url(tmp_path / "m.db"), "--bind", "127.0.0.1:0", "--metrics", address,
             "--log-level", "WARNING"],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
    assert done.returncode == status
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(f"amphora-heartbeat manager: error: {message}")
    assert status == 2 or len(lines) == 1


def test_manager_bind_in_use_is_exit_1_naming_the_address(tmp_path: Path) -> None:
    """A --bind port already taken: one line naming it, exit status 1 (metrics or not)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        bind = f"127.0.0.1:{busy.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-m", "amphora_heartbeat", "manager", "--key", "k", "--db",
             sqlite_url(tmp_path / "m.db"), "--bind", bind, "--metrics", "127.0.0.1:0",
             "--log-level", "ERROR"],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"amphora-heartbeat manager: error: cannot receive on {bind}: "
        f"[Errno 98] cannot bind {bind}: Address already in use"
    ]


def test_with_workers_the_parent_serves_their_metrics_added_up(tmp_path: Path) -> None:
    """--workers 2 --metrics: one endpoint, each worker's counts added up, workers counted."""
    manager = Manager(sqlite_url(tmp_path / "m.db"), "--workers", "2", "--log-level", "ERROR",
                      metrics=True)  # fmt: skip
    try:
        workers = [x.rsplit(maxsplit=1)[-1] for x in manager.lines if "] metrics on " in x]
        assert len(workers) == 2
        assert manager.metrics_url not in workers
        sent = 40
        for _ in range(sent):  # each from its own source port: spread over the workers
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"x" * 40, ("127.0.0.1", manager.port))
        name = P + "heartbeats_rejected_total"
        wait_for(
            lambda: value(scrape(manager.metrics_url), name, reason="invalid_hmac") == sent,
            "every rejection counted",
        )
        total = scrape(manager.metrics_url)
        each = [value(scrape(url), name, reason="invalid_hmac") for url in workers]
    finally:
        counters, _ = manager.stop()
    assert sum(each) == sent
    assert value(total, P + "workers") == 2
    assert value(total, P + "worker_restarts_total") == 0
    assert value(total, P + "received_bytes_total") == sent * 40
    assert counters["rejected.invalid_hmac"] == sent


def test_workers_collector_leaves_out_a_worker_that_does_not_answer() -> None:
    """A worker whose metrics port is closed is skipped; the supervisor's figures still show."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/metrics"  # bound, not listening
        registry = CollectorRegistry()
        registry.register(
            WorkersCollector({0: url}, lambda: {"workers": 1, "worker_restarts": 3}, timeout=5)
        )
        samples, types = parse(generate_latest(registry).decode())
    assert set(types) == {P + "workers", P + "worker_restarts"}
    assert value(samples, P + "worker_restarts_total") == 3
