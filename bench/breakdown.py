"""Where an idle fleet's CPU goes in the gateway, by component, from py-spy's folded stacks.

Each sampled stack is put in the first component one of its frames belongs to, in the order of
COMPONENTS (a pong handled inside `data_received` is a ping, not a heartbeat; the frame parsing
before it cannot be told apart and counts as heartbeat handling). The cyclic garbage
collector is no frame of its own: its time comes from the gateway's opamp_gateway_gc_seconds_total,
and the sampled shares divide what is left.
"""

from __future__ import annotations

import logging
from collections import Counter

from bench.profile import _frame_name

logger = logging.getLogger("bench.breakdown")

# (component, markers): a frame belongs to the component if its name contains one of the markers.
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "pings",
        (
            "send_keepalive_ping",
            "handle_pong",
            "handle_ping",
            "keepalive_timeout",
            "schedule_ping",
            "Keepalive.sweep",
            "_Protocol.ping",
            "WebSocketProtocol.ping",
        ),
    ),
    ("presence", ("node/presence.py)", "bus/redis.py)", "bus/local.py)", "redis/")),
    ("writer", ("store/", "node/liveness.py)", "sqlite3/")),
    (
        "timers",
        (
            "_check_idle",
            "_send_expired",
            "gateway/periodic.py)",
            "node/command_sweep.py)",
            "node/config_cache.py)",
        ),
    ),
    (
        "heartbeat handling",
        (
            "transport/websocket.py)",
            "transport/pipeline.py)",
            "opamp/",
            "fleet/",
            "starlette/",
            "prometheus_client/",
            "data_received",
            "transport/ws_protocol.py)",
            "transport/ws_frames.py)",
            "handle_bytes",
            "websockets_sansio_impl.py",
        ),
    ),
)
NAMES = (*(name for name, _ in COMPONENTS), "GC", "other")


def _component(frames: list[str]) -> str:
    for name, markers in COMPONENTS:
        if any(marker in frame for frame in frames for marker in markers):
            return name
    return "other"


def shares(folded: str) -> tuple[int, dict[str, float]]:
    """(samples, share of the samples per component, GC left out)."""
    counts: Counter[str] = Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [_frame_name(f) for f in stack.split(";") if f.strip()]
        counts[_component(frames)] += int(count_text)
        total += int(count_text)
    return total, {name: counts[name] / total if total else 0.0 for name in NAMES if name != "GC"}


def per_agent_interval(folded: str, cpu_us: float, gc_us: float) -> dict[str, object]:
    """The components' µs per agent-interval: GC as measured, the rest of `cpu_us` by sampled share."""
    samples, share = shares(folded)
    rest = max(0.0, cpu_us - gc_us)
    components = {name: share[name] * rest for name in share}
    components["GC"] = gc_us
    return {"samples": samples, "shares": share, "us_per_agent_interval": {n: components[n] for n in NAMES}}
