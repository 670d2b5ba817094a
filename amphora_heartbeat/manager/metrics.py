"""Prometheus metrics of a running :class:`~amphora_heartbeat.manager.HealthManager`.

:class:`ManagerCollector` reads :attr:`HealthManager.counters
<amphora_heartbeat.manager.HealthManager.counters>` and the manager's two delay
histograms when Prometheus scrapes, so the heartbeat path does no metric work
at all: the counters it already keeps are the metrics.  :func:`serve_metrics`
serves them, with the process's own (memory, CPU, open files), at ``/metrics``.

Needs the ``metrics`` extra (``pip install amphora_heartbeat[metrics]``, which
installs ``prometheus_client``).  Every metric is listed, with what to alert on,
on the errors-and-counters page of the documentation.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from .histogram import DelayHistogram

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .core import HealthManager

__all__ = ["PREFIX", "ManagerCollector", "WorkersCollector", "serve_collector", "serve_metrics"]

#: The prefix of every metric name.
PREFIX = "amphora_heartbeat"

# Counter key of HealthManager.counters -> (metric name, help); exported as <name>_total.
_COUNTERS: dict[str, tuple[str, str]] = {
    "received": ("heartbeats_received", "Datagrams read from the receive socket."),
    "received_bytes": ("received_bytes", "Bytes of the datagrams read."),
    "accepted": ("heartbeats_accepted", "Datagrams that verified and parsed as heartbeats."),
    "heartbeats_judged": ("heartbeats_judged", "Heartbeats run through the status rules."),
    "heartbeats_recorded": ("heartbeats_recorded", "Heartbeats whose health row was written."),
    "unknown_amphora": (
        "heartbeats_unknown_amphora",
        "Heartbeats of amphorae that belong to no live load balancer.",
    ),
    "dropped": ("heartbeats_dropped", "Heartbeats dropped unwritten (backlog full, failed tick)."),
    "status_changes": ("status_changes", "Operating statuses changed."),
    "store_errors": ("store_errors", "Ticks whose database work failed (retried with backoff)."),
    "tick_errors": ("tick_errors", "Ticks that failed for another reason (batch dropped)."),
    "socket_drops": ("socket_drops", "Datagrams the kernel dropped on the receive socket."),
    "overloads": ("overloads", "Stale checks that found heartbeats lost."),
    "failovers_waiting": ("failovers_waiting", "Stale amphorae waiting for a failover thread."),
    "stale_not_failed_over": (
        "stale_not_failed_over",
        "Stale amphorae only logged: no failover is configured.",
    ),
}

# Counter keys "<key>.<value>" -> (metric name, label, help).
_KEYED: dict[str, tuple[str, str, str]] = {
    "rejected": ("heartbeats_rejected", "reason", "Datagrams refused, by rejection reason."),
    "not_recorded": (
        "heartbeats_not_recorded",
        "reason",
        "Heartbeats judged but whose health was not recorded, by reason.",
    ),
    "rows_written": ("rows_written", "table", "Rows written by committed ticks, by table."),
}

# One labelled counter from several counter keys: (metric, label, help, {value: key}).
_GROUPED: tuple[tuple[str, str, str, dict[str, str]], ...] = (
    (
        "failovers",
        "outcome",
        "Failovers started, and how they ended.",
        {
            "started": "failovers_started",
            "succeeded": "failovers_succeeded",
            "failed": "failovers_failed",
        },
    ),
    (
        "failovers_held_back",
        "reason",
        "Stale amphorae not failed over, each once per hold, by reason.",
        {
            "storm": "failovers_held_back",
            "startup": "failovers_held_startup",
            "losses": "failovers_held_overloaded",
            "paused": "failovers_held_paused",
        },
    ),
)

# Gauge key -> (metric name, help).
_GAUGES: dict[str, tuple[str, str]] = {
    "backlog": ("backlog_heartbeats", "Heartbeats received and not yet committed."),
    "lag_seconds": ("tick_lag_seconds", "Age of the oldest heartbeat at the last tick's start."),
    "max_lag_seconds": ("tick_lag_max_seconds", "The largest tick lag since the start."),
    "last_commit_seconds": (
        "last_commit_timestamp_seconds",
        "When a tick last committed, seconds since the epoch (0: none yet).",
    ),
    "stale_amphorae": ("amphorae_stale", "Stale amphorae found by the last stale check."),
    "amphorae_heard": (
        "amphorae_known",
        "Distinct amphorae whose heartbeat this manager recorded since it started.",
    ),
}

#: Bucket bounds (seconds) of the receive-to-commit delay histogram.
DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Bucket bounds (seconds) of the tick duration histogram.
TICK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


def _histogram(
    suffix: str, doc: str, histogram: DelayHistogram, bounds: Sequence[float]
) -> HistogramMetricFamily:
    counts, count, total = histogram.cumulative(bounds)
    buckets = [(repr(float(b)), float(n)) for b, n in zip(bounds, counts, strict=True)]
    buckets.append(("+Inf", float(count)))
    return HistogramMetricFamily(_name(suffix), doc, buckets=buckets, sum_value=total)


class ManagerCollector(Collector):
    """A Prometheus collector that reads a manager's counters at each scrape.

    Register it in a :class:`prometheus_client.CollectorRegistry`; each scrape
    takes one snapshot of :attr:`HealthManager.counters
    <amphora_heartbeat.manager.HealthManager.counters>` (safe from the HTTP
    server's thread) and the two histograms.
    """

    def __init__(self, manager: HealthManager) -> None:
        """Collect ``manager``'s metrics."""
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family, read now."""
        counters = self.manager.counters
        for key, (suffix, doc) in _COUNTERS.items():
            if key in counters:
                yield CounterMetricFamily(_name(suffix), doc, value=counters[key])
        yield from _keyed(counters)
        for suffix, label, doc, keys in _GROUPED:
            family = CounterMetricFamily(_name(suffix), doc, labels=[label])
            for value, key in keys.items():
                family.add_metric([value], counters.get(key, 0))
            yield family
        for key, (suffix, doc) in _GAUGES.items():
            yield GaugeMetricFamily(_name(suffix), doc, value=counters.get(key, 0))
        manager = self.manager
        yield _histogram(
            "receive_to_commit_delay_seconds",
            "Seconds from a heartbeat's receipt to the commit of its tick.",
            manager.delays,
            DELAY_BUCKETS,
        )
        yield _histogram(
            "tick_duration_seconds",
            "Seconds each committed tick took (read views, judge, write); its count is the ticks.",
            manager.tick_durations,
            TICK_BUCKETS,
        )


def _keyed(counters: Mapping[str, float]) -> Iterator[Metric]:
    """Yield the labelled counters built from ``<key>.<value>`` counter names."""
    families = {
        key: CounterMetricFamily(_name(suffix), doc, labels=[label])
        for key, (suffix, label, doc) in _KEYED.items()
    }
    for name, value in counters.items():
        key, dot, label = name.partition(".")
        if dot and key in families:
            families[key].add_metric([label], value)
    yield from families.values()


# Gauges of several workers that are not added up but taken at their largest.
_WORKER_MAXIMA = frozenset(
    _name(g)
    for g in (
        "last_commit_timestamp_seconds",
        "tick_lag_seconds",
        "tick_lag_max_seconds",
        "amphorae_stale",
    )
)


class WorkersCollector(Collector):
    """Add up the metrics of several manager processes (``manager --workers N``).

    Each scrape fetches every worker's ``/metrics`` over HTTP (the URLs in
    :attr:`urls`, by worker) and sums each sample across workers: counters and
    histogram buckets add up, and so do the backlog and known amphorae; the last
    commit time, the lags and the stale count are the largest of any worker (one
    database).  A worker that does not answer is left out of that scrape.  The
    workers' ``process_*`` metrics are not merged.

    :param urls: worker index to its metrics URL; the caller keeps it current.
    :param supervisor: returns ``workers`` and ``worker_restarts`` (also exported).
    :param timeout: seconds to wait for each worker.
    """

    def __init__(
        self,
        urls: Mapping[int, str],
        supervisor: Callable[[], Mapping[str, float]],
        *,
        timeout: float = 5.0,
    ) -> None:
        self.urls = urls
        self.supervisor = supervisor
        self.timeout = timeout

    def collect(self) -> Iterator[Metric]:
        """Yield the workers' metric families, added up, and the supervisor's."""
        merged: dict[str, Metric] = {}
        values: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
        for url in list(dict(self.urls).values()):
            try:
                with urllib.request.urlopen(url, timeout=self.timeout) as response:
                    text = response.read().decode()
            except (OSError, ValueError):
                continue  # a worker restarting: its share is missing from this scrape
            for family in text_string_to_metric_families(text):
                if not family.name.startswith(PREFIX):
                    continue
                merged.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for sample in family.samples:
                    key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
                    old = values.get(key)
                    if old is None:
                        values[key] = sample.value
                    elif family.name in _WORKER_MAXIMA:
                        values[key] = max(old, sample.value)
                    else:
                        values[key] = old + sample.value
        for (family_name, sample_name, labels), value in values.items():
            merged[family_name].add_sample(sample_name, dict(labels), value)
        yield from merged.values()
        counts = self.supervisor()
        yield GaugeMetricFamily(
            _name("workers"), "Manager worker processes.", value=counts.get("workers", 0)
        )
        yield CounterMetricFamily(
            _name("worker_restarts"),
            "Worker processes started again after they died.",
            value=counts.get("worker_restarts", 0),
        )


def serve_collector(
    collector: Collector, host: str, port: int
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``collector``'s metrics and the process's at ``http://host:port/metrics``.

    Starts a daemon thread (``prometheus_client``'s own server) and returns it
    with its server; read the bound port from ``server.server_address`` (port 0
    picks a free one); ``server.shutdown()`` stops it.

    :raises OSError: the address cannot be bound.
    """
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    registry.register(collector)
    return start_http_server(port, addr=host, registry=registry)


def serve_metrics(
    manager: HealthManager, host: str, port: int
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``manager``'s metrics and the process's at ``http://host:port/metrics``.

    As :func:`serve_collector` with a :class:`ManagerCollector`.

    :raises OSError: the address cannot be bound.
    """
    return serve_collector(ManagerCollector(manager), host, port)
