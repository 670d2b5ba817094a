"""Export the counters of a getter, an asyncio server or a sender to Prometheus.

For a controller that embeds the library rather than running its manager::

    from amphora_heartbeat.metrics import register_counters
    register_counters(getter, prefix="octavia_heartbeat")

Each scrape reads ``source.counters`` once; nothing is counted twice and the
receive path does no metric work.  A counter ``name`` becomes
``<prefix>_<name>_total``; counters ``name.<value>`` (``rejected.<reason>``)
become one metric ``<prefix>_<name>_total`` labelled ``reason="<value>"``.

Needs the ``metrics`` extra (``pip install amphora_heartbeat[metrics]``, which
installs ``prometheus_client``); it is imported only when a function here is
called.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

__all__ = ["CountersCollector", "CountersSource", "register_counters"]

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")


class CountersSource(Protocol):
    """Anything with a ``counters`` mapping of name to count (getter, aio server, sender)."""

    @property
    def counters(self) -> Mapping[str, float]:
        """A snapshot of the counters."""
        ...


def _client() -> Any:
    try:  # the optional extra, imported only when asked for
        import prometheus_client.core  # noqa: PLC0415
        import prometheus_client.registry  # noqa: PLC0415
    except ImportError:
        raise ImportError(
            "amphora_heartbeat.metrics needs prometheus_client: "
            "pip install 'amphora_heartbeat[metrics]'"
        ) from None
    return prometheus_client


class CountersCollector:
    """A ``prometheus_client`` collector of ``source.counters``, read at each scrape.

    :param prefix: the start of every metric name.
    :param label: the label name of keyed counters (``name.<value>``).
    :raises ValueError: ``prefix`` or ``label`` is no valid Prometheus name.
    :raises ImportError: ``prometheus_client`` is not installed.
    """

    def __init__(
        self, source: CountersSource, *, prefix: str = "amphora_heartbeat", label: str = "reason"
    ) -> None:
        if not _NAME.match(prefix) or not _NAME.match(label):
            raise ValueError(f"not a Prometheus metric or label name: {prefix!r}, {label!r}")
        self._family = _client().core.CounterMetricFamily
        self.source = source
        self.prefix = prefix
        self.label = label

    def describe(self) -> list[Any]:
        """Return the families (read now), so a registry refuses names already taken."""
        return list(self.collect())

    def collect(self) -> Iterator[Any]:
        """Yield one counter family per counter name (keyed ones labelled), read now."""
        family = self._family
        kind = type(self.source).__name__
        keyed: dict[str, Any] = {}
        for name, value in self.source.counters.items():
            base, dot, key = name.partition(".")
            metric = f"{self.prefix}_{base}"
            if not dot:
                yield family(metric, f"{base} of {kind}", value=value)
                continue
            if base not in keyed:
                doc = f"{base} of {kind}, by {self.label}"
                keyed[base] = family(metric, doc, labels=[self.label])
            keyed[base].add_metric([key], value)
        yield from keyed.values()


def register_counters(
    source: CountersSource,
    *,
    prefix: str = "amphora_heartbeat",
    label: str = "reason",
    registry: Any = None,
) -> CountersCollector:
    """Register a collector of ``source.counters`` in ``registry``; return the collector.

    ``registry`` defaults to ``prometheus_client.REGISTRY`` (the one its
    ``start_http_server`` serves).  Use a distinct ``prefix`` per source when
    registering several (two sources with a ``received`` counter would collide).

    :raises ValueError: a bad name, or names already registered.
    :raises ImportError: ``prometheus_client`` is not installed.
    """
    collector = CountersCollector(source, prefix=prefix, label=label)
    if registry is None:
        registry = _client().REGISTRY
    registry.register(collector)
    return collector
