"""Shared fixtures: Octavia's golden envelopes, a hypothesis profile for a shared machine,
and the database servers (tests/_servers.py) with their per-test databases."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import _servers
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


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test marked postgres or mysql at once if that server is not installed."""
    _servers.require_installed(item)


# The database servers and a fresh database per test, for every module.
database_servers = _servers.database_servers
pg_server = _servers.pg_server
pg_dsn = _servers.pg_dsn
mariadb_server = _servers.mariadb_server
mysql_url = _servers.mysql_url
