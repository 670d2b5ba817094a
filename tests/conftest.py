"""Shared fixtures: Octavia's golden envelopes and a hypothesis profile for a shared machine."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, settings

# The machine running the suite is shared and noisy: wall-clock deadlines would
# make property tests flaky without finding anything.
settings.register_profile(
    "amphora",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("amphora")

DATA = Path(__file__).parent / "data"
VECTORS_FILE = DATA / "octavia-19-envelopes.jsonl"


@attrs.frozen
class Vector:
    """One envelope made by Octavia 19's own wrap_envelope, and what it holds."""

    name: str
    key: str
    trailer: str
    envelope: bytes
    message: dict[str, Any]

    @property
    def id(self) -> str:
        """Return a readable test id (the key is shown only by its kind)."""
        kind = "ascii" if self.key.isascii() else "unicode"
        return f"{self.name}-{self.trailer}-{kind}key"


def load_vectors() -> list[Vector]:
    """Return every golden vector from tests/data."""
    vectors = []
    with VECTORS_FILE.open(encoding="utf-8") as f:
        for line in f:
            raw = json.loads(line)
            vectors.append(
                Vector(
                    name=raw["name"],
                    key=raw["key"],
                    trailer=raw["trailer"],
                    envelope=base64.b64decode(raw["envelope_b64"]),
                    message=raw["message"],
                )
            )
    return vectors


VECTORS = load_vectors()


@pytest.fixture(params=VECTORS, ids=[v.id for v in VECTORS])
def vector(request: pytest.FixtureRequest) -> Vector:
    """Yield each golden vector in turn."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def vectors() -> list[Vector]:
    """Return every golden vector."""
    return list(VECTORS)
