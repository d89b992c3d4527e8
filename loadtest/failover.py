"""The mid-hold gateway kill (`--kill-gateway-after`): the runner's last gateway, its own child,
gets SIGKILL by its pid, as a crashed node would end; its agents must be connected to the other
gateways again within `--reconnect-within` seconds (60 by default), and no agent record may be
lost. Watched once a second on its own thread (the runner's progress lines go on meanwhile): the
reconnect curve is the agents connected to the surviving gateways, by seconds since the kill."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.admin import admin
from harness.gateway import GatewayProcess
from loadtest.monitor import gateway_counters

logger = logging.getLogger("loadtest.failover")

# Curve points taken after every agent is back, to show that they stay connected.
_SETTLE_POINTS = 3


@dataclass
class GatewayKill:
    expected: int
    within: float
    victim: str = ""
    status: str = "not run"
    # Locust's failed requests when the gateway was killed: the steady fleet's own failures.
    failures_before: int = 0
    connected_before: int | None = None
    # Agent records in the admin API (fleet summary total) before the kill and once all are back.
    records_before: int | None = None
    records_after: int | None = None
    # (seconds since the kill, agents connected to the surviving gateways), once a second.
    curve: list[tuple[float, int]] = field(default_factory=list)
    # Seconds from the kill until every agent was connected to the surviving gateways.
    recovered_s: float | None = None
    killed_at: float | None = None
    _thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def records_kept(self) -> bool:
        return self.records_before is not None and self.records_after == self.records_before

    @property
    def passed(self) -> bool:
        return self.recovered_s is not None and self.recovered_s <= self.within and self.records_kept

    def start(self, victim: GatewayProcess, survivors: Sequence[GatewayProcess], failures: int) -> None:
        self.victim, self.failures_before = victim.name, failures
        args = (victim, list(survivors))
        self._thread = threading.Thread(target=self._run, args=args, name="gateway-kill", daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(self.within + 60)

    def _run(self, victim: GatewayProcess, survivors: list[GatewayProcess]) -> None:
        try:
            self._kill(victim, survivors)
        except OSError as exc:
            # A surviving gateway too busy to answer its admin API in time is a result, not a crash.
            self.status = f"admin API failed: {exc!r}"

    def _kill(self, victim: GatewayProcess, survivors: list[GatewayProcess]) -> None:
        self.records_before = _records(survivors[0])
        self.connected_before = int(gateway_counters([victim, *survivors]).connected)
        killed = time.monotonic()
        victim.kill()
        self.killed_at, self.status = killed, "reconnecting"
        settled = 0
        while time.monotonic() < killed + self.within and settled < _SETTLE_POINTS:
            time.sleep(max(0.0, killed + len(self.curve) + 1 - time.monotonic()))
            connected = int(gateway_counters(survivors).connected)
            since = round(time.monotonic() - killed, 1)
            self.curve.append((since, connected))
            if self.recovered_s is None and connected >= self.expected:
                self.recovered_s = since
            settled += self.recovered_s is not None
        self.status = (
            f"all back after {self.recovered_s:g} s"
            if self.recovered_s is not None
            else f"not all back in {self.within:g} s"
        )
        self.records_after = _records(survivors[0])

    def summary(self) -> dict[str, Any]:
        return {
            "victim": self.victim,
            "status": self.status,
            "passed": self.passed,
            "reconnect_within_s": self.within,
            "recovered_s": self.recovered_s,
            "connected_before": self.connected_before,
            "records_before": self.records_before,
            "records_after": self.records_after,
            "records_kept": self.records_kept,
            "failures_before": self.failures_before,
            "curve": [{"since_kill_s": since, "connected": connected} for since, connected in self.curve],
        }

    def verdict(self) -> str:
        return (
            f"{'PASS' if self.passed else 'FAIL'}: {self.victim} killed; {self.status}"
            f" (aim: within {self.within:g} s); agent records {self.records_before} before,"
            f" {self.records_after} after"
        )


def _records(gateway: GatewayProcess) -> int | None:
    status, body = admin(gateway.admin_port, "GET", "/api/v1/fleet/summary")
    return int(body["total"]) if status == 200 and isinstance(body, dict) and "total" in body else None
