"""`python -m bench ws` end to end, tiny: both targets for a second each, a few hundred idle sockets,
and the output must make sense; a gateway that sheds load must make the run INVALID."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = ["--duration=1", "--warmup=0", "--rounds=1", "--sample=5"]


def _bench(output: Path, *flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "bench", "ws", *TINY, *flags, f"--output={output}"]
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False, env=env
    )


@pytest.mark.slow
def test_ws_bench_measures_both_targets_and_idle_memory(tmp_path: Path) -> None:
    output = tmp_path / "latest-ws.json"
    done = _bench(output, "--agents=20", "--idle-agents=300", "--idle-seconds=0.5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ratio gateway/baseline = " in done.stdout
    assert "gateway RSS per idle agent = " in done.stdout
    assert "INVALID" not in done.stdout

    result: dict[str, Any] = json.loads(output.read_text())
    assert result["benchmark"] == "websocket-heartbeat"
    assert result["valid"] is True
    assert result["checks"]["problems"] == []
    assert result["checks"]["sampled_replies"] == 10
    for name in ("gateway", "baseline"):
        target = result["targets"][name]
        assert target["messages_per_second"] > 0, name
        assert target["errors"] == 0, name
        assert 0 < target["p50_ms"] <= target["p99_ms"], name
        (one_round,) = target["rounds"]
        # Every reply was the expected one, and every heartbeat sent got one.
        assert one_round["reply_checks"] == {"ok": one_round["sent"]}, name
        assert one_round["messages"] <= one_round["sent"] <= one_round["messages"] + 20, name
    assert result["ratio"] > 0
    assert result["reply_bytes"]["gateway"] == result["reply_bytes"]["baseline"]

    memory = result["memory"]
    assert memory["aim_kib"] == 30.0
    for name in ("gateway", "baseline"):
        side = memory[name]
        assert side["agents"] == 300, name
        assert side["problems"] == [], name
        assert [step["agents"] for step in side["steps"]] == [0, 60, 120, 180, 240, 300], name
        assert side["after_kib"]["rss"] > 0, name
        assert isinstance(side["kib_per_agent"], float), name


@pytest.mark.slow
def test_ws_bench_heartbeats_need_no_writer_room(tmp_path: Path) -> None:
    # A writer queue of 10 agents and no flush within the phase: enrollment (2 at a time, committed
    # before the reply) passes, and 40 agents heartbeating are answered in full, because a WebSocket
    # heartbeat's liveness stays in memory (gateway/node/liveness.py). Before, the queue overflowed
    # and the gateway shed them; tests/bench/test_ws_load.py shows the harness counting error replies.
    output = tmp_path / "latest-ws.json"
    env = dict(os.environ, OPAMP_GATEWAY_WRITER_QUEUE_SIZE="10", OPAMP_GATEWAY_FLUSH_INTERVAL="30")
    done = _bench(output, "--agents=40", "--connect-concurrency=2", "--idle-agents=0", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(output.read_text())
    assert result["valid"] is True and result["checks"]["problems"] == []
    assert result["targets"]["gateway"]["errors"] == 0
    assert result["targets"]["gateway"]["messages"] > 40


def test_ws_bench_refuses_more_sockets_than_files_allow(tmp_path: Path) -> None:
    done = _bench(tmp_path / "out.json", "--idle-agents=1000000")
    assert done.returncode == 1
    assert "FileLimitError" in done.stderr
    assert "--idle-agents" in done.stderr
    assert not (tmp_path / "out.json").exists()
