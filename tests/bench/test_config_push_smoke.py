"""The config convergence benchmark, tiny: real redis-server, two gateway processes, a few agents."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.config_push import ConfigPushConfig, run, table

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_every_agent_converges_and_the_rollout_agrees(tmp_path: Path) -> None:
    result = run(ConfigPushConfig(agents=20, changes=2, timeout=30.0, results_dir=tmp_path))
    assert result["valid"] is True, table(result)
    assert [c["change"] for c in result["changes"]] == [1, 2]
    hashes = set()
    for change in result["changes"]:
        assert change["applied"] == 20
        assert 0 < change["p50_ms"] <= change["p99_ms"] <= change["max_ms"]
        assert change["rollout"]["applied"] == change["rollout"]["matched"] == 20
        hashes.add(change["hash"])
    assert len(hashes) == 2, "each change is a new desired hash"
    saved = json.loads(Path(result["path"]).read_text())
    assert saved["changes"] == result["changes"]
    assert "VALID" in table(result)


@pytest.mark.slow
def test_the_command_line_prints_the_table() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "config", "--agents=4", "--changes=1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Config convergence: 4 WebSocket agents on 2 gateway nodes" in done.stdout
    assert "\nVALID" in done.stdout
