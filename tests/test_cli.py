from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gateway import __version__
from tests.support.servers import free_port

EXE = [sys.executable, "-m", "gateway.cli"]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EXE, *args], capture_output=True, text=True, timeout=30, env=env)


def test_version() -> None:
    result = _run("version")
    assert result.returncode == 0 and result.stdout.strip() == f"opamp-gateway {__version__}"


def test_refuses_non_loopback_without_consent() -> None:
    result = _run("serve", "--host", "0.0.0.0")
    assert result.returncode == 2
    assert "0.0.0.0:4320" in result.stderr and "--insecure-allow-anonymous" in result.stderr


def test_refuses_non_loopback_admin_from_env() -> None:
    result = _run("serve", env={**os.environ, "OPAMP_GATEWAY_ADMIN_HOST": "0.0.0.0"})
    assert result.returncode == 2 and "admin port 0.0.0.0:4321" in result.stderr


def test_bad_setting_is_reported_by_name() -> None:
    result = _run("serve", env={**os.environ, "OPAMP_GATEWAY_OFFLINE_AFTER": "soon"})
    assert result.returncode == 2 and "OPAMP_GATEWAY_OFFLINE_AFTER" in result.stderr


def test_serve_json_logs_and_clean_sigterm(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    proc = subprocess.Popen(
        [
            *EXE,
            "serve",
            "--port",
            str(port),
            "--admin-port",
            str(admin),
            "--log-format",
            "json",
            "--sqlite-path",
            str(tmp_path / "g.db"),
            "--node-id",
            "cli-test",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as response:
                    assert json.load(response)["node"] == "cli-test"
                    break
            except OSError:
                assert time.monotonic() < deadline, "gateway did not become ready"
                assert proc.poll() is None, "gateway exited"
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert any("serving OpAMP" in line["message"] for line in lines)
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)


def test_port_in_use_fails_cleanly(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [
                *EXE,
                "serve",
                "--port",
                str(port),
                "--admin-port",
                str(free_port()),
                "--sqlite-path",
                str(tmp_path / "g.db"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert "could not listen on every port" in result.stderr
    assert "Traceback" not in result.stderr and "never retrieved" not in result.stderr
