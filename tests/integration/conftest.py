"""Real gateway processes (the installed `opamp-gateway` command, started by harness.gateway) sharing
one SQLite file, and real redis-servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.gateway import GatewayProcess, start_gateway


class GatewayFactory:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.sqlite_path = workdir / "shared.db"
        self.started: list[GatewayProcess] = []

    def __call__(self, node_id: str, redis_url: str = "", **flags: object) -> GatewayProcess:
        """Start node `node_id`; with a Redis URL it is ready once its bus is up."""
        gateway = start_gateway(
            self.workdir,
            node_id,
            {"flush_interval": 0.05, "log_level": "debug", **flags},
            sqlite_path=self.sqlite_path,
            redis_url=redis_url or None,
            ready="bus" if redis_url else "readyz",
        )
        self.started.append(gateway)
        return gateway

    def close(self) -> None:
        for gateway in self.started:
            gateway.kill()


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[GatewayFactory]:
    """Start gateway processes sharing one SQLite file; all are killed (by PID) after the test."""
    factory = GatewayFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()
