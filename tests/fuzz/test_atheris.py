"""Runs each atheris target in tests/fuzz/targets.py for a bounded number of inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris has wheels for Linux x86_64 only")

TARGETS = Path(__file__).with_name("targets.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("target", ["websocket", "http_body"])
def test_target_survives_fuzzing(target: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(TARGETS),
            target,
            "-runs=10000",
            "-max_len=2048",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert "Done 10000 runs" in result.stderr
    assert list(tmp_path.iterdir()) == [], "atheris left a crash artifact"
