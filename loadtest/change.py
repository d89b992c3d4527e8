"""The mid-run config change: one PUT through the admin API, then the gateways' counters of APPLIED
reports watched until every agent has sent one. Runs on its own thread so the runner's progress
lines go on meanwhile.

The rollout (`GET /api/v1/configs/{name}`) is read once, at the end, as a cross-check: it reads
every matched agent's record, which at tens of thousands of agents costs a node seconds of CPU,
so polling it would slow down the very convergence it measures."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from harness.admin import admin
from harness.agent import CHANGED_AT_MARKER, SERVICE_NAME
from harness.gateway import GatewayProcess
from loadtest.monitor import gateway_counters

logger = logging.getLogger("loadtest.change")

CONFIG_NAME = "loadtest"


@dataclass
class ConfigChange:
    expected: int
    timeout: float
    started: float = 0.0
    status: str = "not run"
    # Seconds from just before the PUT until the rollout showed every expected agent applied.
    server_seconds: float | None = None
    put_seconds: float | None = None
    # APPLIED reports the gateways received since the PUT.
    applied: int = 0
    # Agent rows the gateways committed from just before the PUT until every agent had applied.
    rows_written: int | None = None
    rollout: dict[str, Any] = field(default_factory=dict)
    _thread: threading.Thread | None = None

    def start(self, gateways: list[GatewayProcess]) -> None:
        self._thread = threading.Thread(target=self._run, args=(gateways,), name="config-change", daemon=True)
        self._thread.start()

    @property
    def matched(self) -> int:
        return int(self.rollout.get("matched", 0))

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(self.timeout + 30)

    def _run(self, gateways: list[GatewayProcess]) -> None:
        self.started = time.monotonic()
        try:
            self._change(gateways)
        except OSError as exc:
            # A gateway too busy to answer its admin API within the timeout is a result, not a crash.
            self.status = f"admin API failed: {exc!r}"

    def _change(self, gateways: list[GatewayProcess]) -> None:
        counters = gateway_counters(gateways)
        before, rows_before = counters.applied_reports, counters.rows_written
        status, stored = admin(
            gateways[0].admin_port, "PUT", f"/api/v1/configs/{CONFIG_NAME}", body(time.time())
        )
        self.put_seconds = round(time.monotonic() - self.started, 2)
        if status not in (200, 201):
            self.status = f"PUT answered {status}: {stored}"
            return
        self.status = "converging"
        deadline = self.started + self.timeout
        while time.monotonic() < deadline:
            counters = gateway_counters(gateways)
            self.applied = int(counters.applied_reports - before)
            if self.applied >= self.expected:
                self.server_seconds = round(time.monotonic() - self.started, 2)
                self.rows_written = int(counters.rows_written - rows_before)
                self.status = "converged"
                break
            time.sleep(0.5)
        else:
            self.status = f"not converged in {self.timeout:g} s"
        status, got = admin(gateways[0].admin_port, "GET", f"/api/v1/configs/{CONFIG_NAME}")
        if status == 200:
            self.rollout = got.get("rollout", {})


def body(written: float) -> dict[str, Any]:
    """A config for every simulated agent, stamped with the time it was written."""
    text = (
        f"{CHANGED_AT_MARKER.decode()}{written:.6f}\n"
        "receivers:\n  otlp: {protocols: {grpc: {endpoint: 0.0.0.0:4317}}}\n"
        "processors:\n  batch: {}\n"
        "exporters:\n  otlphttp: {endpoint: https://collector.example.com:4318}\n"
        "service:\n  pipelines:\n"
        "    traces: {receivers: [otlp], processors: [batch], exporters: [otlphttp]}\n"
    )
    return {
        "selector": {"match": {"service.name": SERVICE_NAME}},
        "priority": 10,
        "files": {"collector.yaml": {"content_type": "text/yaml", "body": text}},
    }
