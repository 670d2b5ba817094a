"""amphora_heartbeat: the heartbeat path of load-balancer control planes.

Wrap and unwrap Octavia-compatible heartbeat envelopes, parse them into an
immutable model tree, and (in submodules) receive, judge and store them.
"""

from __future__ import annotations

from .envelope import Codec, Digest, Unwrapper, get_hmac, unwrap_envelope, wrap_envelope
from .errors import HeartbeatError
from .getter import UDPStatusGetter
from .models import (
    Heartbeat,
    Limits,
    ListenerReport,
    ListenerStats,
    MemberKind,
    MemberStatus,
    PoolReport,
)
from .rules import HealthUpdate, LoadBalancerView, derive
from .sender import UDPStatusSender
from .tracker import HealthTracker

__version__ = "0.1.0"

__all__ = [
    "Codec",
    "Digest",
    "HealthTracker",
    "HealthUpdate",
    "Heartbeat",
    "HeartbeatError",
    "Limits",
    "ListenerReport",
    "ListenerStats",
    "LoadBalancerView",
    "MemberKind",
    "MemberStatus",
    "PoolReport",
    "UDPStatusGetter",
    "UDPStatusSender",
    "Unwrapper",
    "__version__",
    "derive",
    "get_hmac",
    "unwrap_envelope",
    "wrap_envelope",
]
