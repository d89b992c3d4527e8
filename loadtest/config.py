"""What a scale run is asked to do (`RunConfig`) and how many processes it takes: gateways and
Locust workers sized to the agents, the gateways' flags, the run's time bound."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from loadtest.cluster import REPO

# Sockets per process: gateways and Locust workers must stay under the 20,000 open files a process
# may have here, with room for the store, logs and Redis.
PER_PROCESS = 15_000
# A gateway's unfinished connections (handshakes, requests being read): a few hundred at most while
# Locust connects 500 agents a second over all gateways. Each may hold two files (gateway/file_limit.py),
# so with the WebSockets and the node's reserve of 512 it all fits under the 20,000 files.
MAX_UNFINISHED = 1024
MAX_CONNECTIONS = 20_000 - 512 - 2 * MAX_UNFINISHED
# Locust warns that more than 100 new users per second per worker "is known to cause issues": a
# worker busy connecting falls behind on everything else.
SPAWN_PER_WORKER = 100.0
# --transport: the Locust user class. "websocket-greenlet" (each agent waiting in its own greenlet) and
# "websocket-client" (loadtest/websocket_client_user.py) are former WebSocket users, kept to compare
# the load generator's cost.
USER_CLASS = {
    "websocket": "WebSocketAgent",
    "websocket-greenlet": "WebSocketGreenletAgent",
    "websocket-client": "WebSocketClientAgent",
    "http": "HttpAgent",
}


@dataclass(frozen=True)
class RunConfig:
    agents: int = 1000
    transport: str = "websocket"
    heartbeat: float = 30.0
    spawn_rate: float = 500.0
    hold: float = 60.0
    # Seconds into the hold when the config changes; None: half way. Negative: no change.
    config_change_after: float | None = None
    converge_timeout: float = 120.0
    gateways: int = 0
    workers: int = 0
    sample_every: float = 5.0
    results: Path = REPO / "loadtest" / "results"
    gateway_args: tuple[str, ...] = ()
    profile_seconds: float = 0.0
    label: str = ""
    # Seconds into the hold when the last gateway is killed (SIGKILL); None: never.
    kill_gateway_after: float | None = None
    # How long its agents may take to be connected to the other gateways again.
    reconnect_within: float = 60.0

    @property
    def request_type(self) -> str:
        """Locust's request type of this run's messages."""
        return "POST" if self.transport == "http" else "WS"

    @property
    def ramp(self) -> float:
        return self.agents / self.spawn_rate

    @property
    def change_at(self) -> float | None:
        if self.config_change_after is not None and self.config_change_after < 0:
            return None
        return self.hold / 2 if self.config_change_after is None else self.config_change_after


def processes(agents: int, asked: int) -> int:
    return asked if asked > 0 else max(1, math.ceil(agents / PER_PROCESS))


def gateways(cfg: RunConfig) -> int:
    """Gateway processes: as asked, else one per PER_PROCESS agents (two at least when one is to be
    killed: its agents need somewhere to go)."""
    if cfg.gateways > 0:
        return cfg.gateways
    return max(processes(cfg.agents, 0), 2 if cfg.kill_gateway_after is not None else 1)


def workers(cfg: RunConfig) -> int:
    if cfg.workers > 0:
        return cfg.workers
    return max(processes(cfg.agents, 0), math.ceil(cfg.spawn_rate / SPAWN_PER_WORKER))


def bound(cfg: RunConfig) -> float:
    """Seconds the whole run may take: a slow ramp (three times the nominal), the hold, the config
    change's own timeout, the wait for a killed gateway's agents and a minute to stop."""
    reconnect = cfg.reconnect_within if cfg.kill_gateway_after is not None else 0.0
    return cfg.ramp * 3 + cfg.hold + cfg.converge_timeout + reconnect + 60


def gateway_args(cfg: RunConfig) -> list[str]:
    # With a gateway to be killed, the others must take its agents too.
    survivors = gateways(cfg) - (1 if cfg.kill_gateway_after is not None else 0)
    per_gateway = math.ceil(cfg.agents / max(1, survivors))
    return [
        # A scale run enrolls its fleet as fast as Locust spawns it.
        "--enrollment-rate", "0",
        "--max-connections", str(min(MAX_CONNECTIONS, int(per_gateway * 1.2) + 100)),
        "--max-unfinished", str(MAX_UNFINISHED),
        "--idle-timeout", str(max(600.0, 4 * cfg.heartbeat)),
        *cfg.gateway_args,
    ]  # fmt: skip
