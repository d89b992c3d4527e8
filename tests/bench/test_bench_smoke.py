"""`make bench` end to end, tiny: both targets for a second each, and the output must make sense."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("wrk") is None,
    reason="wrk is not installed (make bench installs it: bash scripts/install-bench-deps.sh)",
)
def test_bench_runs_both_targets_and_computes_the_ratio(tmp_path: Path) -> None:
    output = tmp_path / "latest-http.json"
    command = [
        sys.executable,
        "-m",
        "bench",
        "--duration=1",
        "--warmup=0",
        "--rounds=1",
        "--agents=100",
        "--connections=4",
        "--sample=5",
        f"--output={output}",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ratio gateway/baseline = " in done.stdout

    result = json.loads(output.read_text())
    assert result["valid"] is True
    assert result["checks"]["problems"] == []
    for name in ("gateway", "baseline"):
        target = result["targets"][name]
        assert target["requests_per_second"] > 0, name
        assert target["requests"] > 0, name
        assert target["errors"] == 0, name
        assert 0 < target["p50_ms"] <= target["p99_ms"], name
    assert result["ratio"] > 0
    assert result["reply_bytes"]["gateway"] == result["reply_bytes"]["baseline"]
