from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gateway import __version__
from gateway.cli import _refuse_insecure
from gateway.settings import Settings
from harness.ports import free_port

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


def test_refusal_says_exactly_what_to_do() -> None:
    result = _run("serve", "--host", "0.0.0.0", "--admin-host", "0.0.0.0")
    assert result.returncode == 2
    message = result.stderr
    for needle in (
        "OpAMP port 0.0.0.0:4320 has no agent keys",
        "--agent-keys-file FILE",
        "OPAMP_GATEWAY_AGENT_KEYS=key1,key2",
        "--host 127.0.0.1",
        "admin port 0.0.0.0:4321 has no admin token",
        "--admin-token-file FILE",
        "--admin-host 127.0.0.1",
        "--insecure-allow-anonymous",
    ):
        assert needle in message, needle


@pytest.mark.parametrize(
    ("flags", "refused"),
    [
        ({}, None),
        ({"host": "0.0.0.0"}, "OpAMP port"),
        ({"host": "0.0.0.0", "agent_keys": "k1"}, None),
        ({"host": "0.0.0.0", "agent_keys_file": "/etc/keys"}, None),
        ({"host": "0.0.0.0", "agent_keys": " , "}, "OpAMP port"),
        ({"host": "0.0.0.0", "admin_token_file": "/etc/token"}, "OpAMP port"),
        ({"admin_host": "0.0.0.0", "agent_keys": "k1"}, "admin port"),
        ({"admin_host": "0.0.0.0", "admin_token_file": "/etc/token"}, None),
        ({"host": "0.0.0.0", "admin_host": "::", "insecure_allow_anonymous": True}, None),
    ],
)
def test_secure_by_default(flags: dict[str, Any], refused: str | None) -> None:
    refusal = _refuse_insecure(Settings(**flags))
    if refused is None:
        assert refusal is None
    else:
        assert refusal is not None and f"the {refused}" in refusal
        assert ("OpAMP port" in refusal) == (refused == "OpAMP port")


def test_bad_key_file_stops_serve_naming_the_line(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("secret-agent-key-1\nsecret key two\n")
    result = _run(
        "serve",
        "--agent-keys-file",
        str(keys),
        "--port",
        str(free_port()),
        "--admin-port",
        str(free_port()),
        "--sqlite-path",
        str(tmp_path / "g.db"),
    )
    assert result.returncode == 1
    assert f"{keys}, line 2: a key must be one word" in result.stderr
    assert "secret" not in result.stderr.replace(str(keys), "")
    assert "Traceback" not in result.stderr


def test_bad_tls_file_stops_serve(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate\n")
    result = _run(
        "serve", "--tls-cert", str(cert), "--tls-key", str(cert), "--sqlite-path", str(tmp_path / "g.db")
    )
    assert result.returncode == 1
    assert "not a PEM certificate chain" in result.stderr and "Traceback" not in result.stderr
