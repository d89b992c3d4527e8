"""`python -m bench es` end to end, tiny: a few agents for a few seconds, and the numbers must add up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize(("transport", "reads"), [("websocket", False), ("http", True)])
def test_es_bench_counts_requests_per_message(tmp_path: Path, transport: str, reads: bool) -> None:
    output = tmp_path / "latest-es.json"
    command = [
        sys.executable,
        "-m",
        "bench",
        "es",
        "--agents=30",
        f"--transport={transport}",
        "--interval=0.5",
        "--flush-interval=0.2",
        "--warmup=1",
        "--duration=3",
        f"--output={output}",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "per message" in done.stdout
    result = json.loads(output.read_text())
    assert result["valid"] is True and result["problems"] == []
    # 30 agents, one heartbeat each per 0.5 s, for 3 s: at most 180 (+ slack for the window's edges);
    # on a busy machine fewer, but every agent gets at least one in (speed is not what this checks).
    assert 30 <= result["messages"] <= 240
    by_endpoint = result["es_requests_by_endpoint"]
    assert result["es_requests"] == sum(by_endpoint.values())
    assert result["requests_per_message"] == pytest.approx(
        result["es_requests"] / result["messages"], abs=1e-5
    )
    # A WebSocket agent's heartbeat reads nothing; an HTTP poll reads the record (batched per turn).
    assert ("mget" in by_endpoint) is reads
    if reads:
        # HTTP heartbeats are written, batched per flush.
        assert by_endpoint["bulk"] == result["bulk_requests"] > 0
        assert 0 < result["bulk_actions"]["p50"] <= result["bulk_actions"]["max"] <= 30
    else:
        # A WebSocket agent's heartbeats stay in memory while its socket is open (3 s here, far less
        # than the --offline-after / 2 after which the node writes them).
        assert by_endpoint.get("bulk", 0) == result["bulk_requests"] == 0
