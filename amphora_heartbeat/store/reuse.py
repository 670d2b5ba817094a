"""Views read as text, parsed again only when the text changed.

PostgreSQL and MySQL build each load balancer's view on the server and send it
as JSON text.  Between two ticks that hear the same load balancer the text is
almost always the same, and comparing two strings costs a small fraction of
parsing one and comparing the mappings it gives.  So an engine keeps, per load
balancer, the text (or the tuple of texts and values) it last read and the
mapping it parsed from it, and hands out that same mapping while the text stays
the same.  The judge's :class:`~amphora_heartbeat.manager.judge.ViewCache`
then finds the very object it built its view from.

A reused mapping is shared between reads: nothing may change it (the
:class:`~amphora_heartbeat.store.StoredView` type says ``Mapping``).  Equal
text is equal JSON, so a reuse never changes a result; a text that differs
(whatever the reason, a new member or keys in another order) is parsed.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

__all__ = ["REUSED_VIEWS", "ParsedViews"]

#: Views kept by an engine between reads (by load balancer id); all are forgotten
#: when this many, as the judge's views are.  A kept entry costs the text (about
#: 0.8 KB for the benchmarks' load balancer) besides the mapping the judge keeps too.
REUSED_VIEWS = 20_000


class ParsedViews:
    """The last text read and the mapping parsed from it, per load balancer."""

    def __init__(self, size: int = REUSED_VIEWS) -> None:
        """Keep at most ``size`` load balancers' views."""
        self.size = size
        self._kept: dict[str, tuple[Hashable, Mapping[str, Any]]] = {}

    def reuse(self, lb_id: str, text: Hashable) -> Mapping[str, Any] | None:
        """Return the mapping parsed from ``text`` for ``lb_id`` last time, or None."""
        kept = self._kept.get(lb_id)
        if kept is not None and kept[0] == text:
            return kept[1]
        return None

    def keep(self, lb_id: str, text: Hashable, view: Mapping[str, Any]) -> Mapping[str, Any]:
        """Remember ``view`` as what ``text`` gives for ``lb_id``; return it."""
        if len(self._kept) >= self.size:
            self._kept.clear()
        self._kept[lb_id] = (text, view)
        return view
