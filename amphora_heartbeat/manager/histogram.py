"""Receive-to-commit delays in bounded memory, with exact quantiles to the bucket width."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["DelayHistogram"]


class DelayHistogram:
    """Receive-to-commit delays in fixed 1 ms buckets up to ``limit`` seconds.

    Bounded memory whatever the traffic; quantiles are exact to the bucket width.
    """

    def __init__(self, *, limit: float = 60.0, width: float = 0.001) -> None:
        """Make an empty histogram of ``limit / width`` buckets (seconds)."""
        self.width = width
        self._counts = [0] * (int(limit / width) + 1)
        self.count = 0
        self.maximum = 0.0
        #: The sum of every delay counted, seconds.
        self.total = 0.0

    def add(self, delay: float, n: int = 1) -> None:
        """Count ``n`` delays of ``delay`` seconds."""
        i = min(max(int(delay / self.width), 0), len(self._counts) - 1)
        self._counts[i] += n
        self.count += n
        self.total += delay * n
        self.maximum = max(self.maximum, delay)

    def quantile(self, q: float) -> float:
        """Return the least bucket bound (seconds) at or below which a ``q`` share falls."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self._counts):
            seen += n
            if seen >= rank and n:
                return (i + 1) * self.width
        return self.maximum  # pragma: no cover - rank never exceeds count

    def cumulative(self, bounds: Sequence[float]) -> tuple[list[int], int, float]:
        """Return the counts at or below each of ``bounds`` (seconds, ascending), count and sum.

        Consistent with itself when another thread adds meanwhile: the counts
        are copied first and the count is their sum.  A bound counts the delays
        in the buckets that end at or below it (exact to the bucket width).
        """
        counts = list(self._counts)
        out = []
        seen = 0
        done = 0
        for bound in bounds:
            end = min(max(round(bound / self.width), done), len(counts))
            seen += sum(counts[done:end])
            done = end
            out.append(seen)
        return out, seen + sum(counts[done:]), self.total

    def snapshot(self) -> DelayHistogram:
        """Return a copy (subtract two with :meth:`since` to measure a window)."""
        copy = DelayHistogram.__new__(DelayHistogram)
        copy.width = self.width
        copy._counts = list(self._counts)
        copy.count = self.count
        copy.maximum = self.maximum
        copy.total = self.total
        return copy

    def merge(self, other: DelayHistogram) -> None:
        """Add the delays ``other`` counted (same buckets), e.g. another process's."""
        if other.width != self.width or len(other._counts) != len(self._counts):
            raise ValueError("only histograms of the same buckets merge")
        self._counts = [a + b for a, b in zip(self._counts, other._counts, strict=True)]
        self.count += other.count
        self.total += other.total
        self.maximum = max(self.maximum, other.maximum)

    def since(self, earlier: DelayHistogram) -> DelayHistogram:
        """Return the delays counted after ``earlier`` (a snapshot of this histogram)."""
        diff = self.snapshot()
        diff._counts = [a - b for a, b in zip(self._counts, earlier._counts, strict=True)]
        diff.count = self.count - earlier.count
        diff.total = self.total - earlier.total
        return diff
