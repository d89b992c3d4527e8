"""`python -m bench fleet` end to end, tiny: a few hundred agents heartbeating every second on both
targets, profiled, and the numbers must add up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import breakdown

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_fleet_bench_measures_both_targets_per_agent_interval(tmp_path: Path) -> None:
    output = tmp_path / "latest-fleet.json"
    command = [
        sys.executable,
        "-m",
        "bench",
        "fleet",
        "--agents=200",
        "--interval=1",
        "--window=3",
        "--profile",
        f"--output={output}",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=150, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ratio gateway/baseline: CPU " in done.stdout
    assert "INVALID" not in done.stdout
    result: dict[str, Any] = json.loads(output.read_text())
    assert result["benchmark"] == "websocket-fleet-cost"
    assert result["valid"] is True and result["problems"] == []
    for name in ("gateway", "baseline"):
        side = result["targets"][name]
        # 200 agents, one heartbeat a second each, for 3 s; every one answered as expected.
        assert 540 <= side["sent"] <= 660, name
        # Answered (each reply was checked: a bad one makes the run INVALID).
        assert side["replies"] > 0, name
        assert side["us_per_agent_interval"] > 0, name
        assert side["kib_per_agent"] > 0, name
    assert result["targets"]["gateway"]["redis_cpu"] >= 0
    profile = result["targets"]["gateway"]["profile"]
    cost = profile["breakdown"]["us_per_agent_interval"]
    assert set(cost) == set(breakdown.NAMES)
    assert cost["heartbeat handling"] > 0
    assert sum(cost.values()) == pytest.approx(profile["us_per_agent_interval"], rel=0.01)


def test_breakdown_puts_each_stack_in_its_first_component() -> None:
    folded = "\n".join(
        [
            "main (gateway/cli.py:1);data_received (uvicorn/x.py:2);handle_pong (uvicorn/x.py:3) 3",
            "main (gateway/cli.py:1);data_received (uvicorn/x.py:2);handle_bytes (uvicorn/x.py:4) 5",
            "main (gateway/cli.py:1);_flush (gateway/node/presence.py:9) 1",
            "main (gateway/cli.py:1);_run_once (asyncio/base_events.py:9) 1",
        ]
    )
    samples, share = breakdown.shares(folded)
    assert samples == 10
    assert share["pings"] == 0.3 and share["heartbeat handling"] == 0.5
    assert share["presence"] == 0.1 and share["other"] == 0.1
    cost = breakdown.per_agent_interval(folded, cpu_us=110.0, gc_us=10.0)["us_per_agent_interval"]
    assert isinstance(cost, dict)
    assert cost["GC"] == 10.0 and cost["pings"] == pytest.approx(30.0)
