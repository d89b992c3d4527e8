"""The Locust users against a real gateway: a few hundred agents over both transports for ~20 s,
a config change in the middle; no failure, every agent in the admin API, the config applied."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.agent import CHANGED_AT_MARKER, SERVICE_NAME
from harness.waiting import wait_until
from tests.support.process import GatewayFactory

REPO = Path(__file__).resolve().parents[2]


def _locust(
    users: str, count: int, seconds: int, target: str, workdir: Path, *extra: str
) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "locust", "-f", str(REPO / "loadtest" / "locustfile.py"), *users.split(),
        "--headless", "-u", str(count), "-r", "100", "-t", f"{seconds}s", "--stop-timeout", "5",
        "--opamp-targets", target, "--heartbeat-interval", "2", "--loglevel", "WARNING",
        "--csv", str(workdir / "locust"), "--only-summary", "--uid-file", str(workdir / "uids.txt"),
        *extra,
    ]  # fmt: skip
    with (workdir / "locust.log").open("wb") as log:
        return subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))


def _stats(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as file:
        return {f"{row['Type']} {row['Name']}".strip(): row for row in csv.DictReader(file)}


def _count(stats: dict[str, dict[str, str]], name: str) -> int:
    """Requests named `name`, made while spawning (`name (ramp)`) or after."""
    return sum(int(row["Request Count"]) for key, row in stats.items() if key in (name, f"{name} (ramp)"))


@pytest.mark.slow
def test_a_few_hundred_agents_heartbeat_apply_a_config_and_appear_in_the_admin_api(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    gateway = gateway_factory(enrollment_rate=0)
    target = f"127.0.0.1:{gateway.opamp_port}"
    locust = _locust(
        "WebSocketAgent WebSocketClientAgent HttpAgent",
        300,
        20,
        target,
        tmp_path,
        "--request-uid-ratio",
        "0.1",
    )
    try:
        wait_until(lambda: gateway.admin.summary()["total"] >= 300 or None, 30, "300 agents enrolled")
        body = f"{CHANGED_AT_MARKER.decode()}{time.time():.6f}\nreceivers: {{}}\n"
        stored = gateway.admin.put_config(
            "smoke",
            {
                "selector": {"match": {"service.name": SERVICE_NAME}},
                "files": {"collector.yaml": {"content_type": "text/yaml", "body": body}},
            },
        )
        assert locust.wait(60) == 0, (tmp_path / "locust.log").read_text()
    finally:
        if locust.poll() is None:
            locust.kill()
            locust.wait()
    stats = _stats(tmp_path / "locust_stats.csv")
    log = (tmp_path / "locust.log").read_text()
    assert stats["Aggregated"]["Failure Count"] == "0", log
    for name in ("WS full report", "WS heartbeat", "POST full report", "POST heartbeat"):
        assert _count(stats, name) > 0, (name, log)
    # Heartbeats after the ramp have their own rows: the steady fleet's figures.
    assert (
        int(stats["WS heartbeat"]["Request Count"]) > 0 and int(stats["POST heartbeat"]["Request Count"]) > 0
    )
    # Every agent applied the config: WebSocket agents at once, HTTP agents on their next poll.
    assert int(stats["CONFIG convergence"]["Request Count"]) == 300, log
    assert (
        int(stats["WS config applied"]["Request Count"]) + int(stats["POST config applied"]["Request Count"])
        == 300
    )

    uids = (tmp_path / "uids.txt").read_text().split()
    assert len(set(uids)) == 300
    listed: set[str] = set()
    cursor = None
    while True:
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        page = gateway.admin.get_json("/api/v1/agents", params)
        listed |= {agent["instance_uid"] for agent in page["agents"]}
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert set(uids) <= listed, f"{len(set(uids) - listed)} agents missing from the admin API"
    rollout = gateway.admin.config("smoke")["rollout"]
    assert rollout["applied"] >= 300, rollout
    assert stored["hash"]
