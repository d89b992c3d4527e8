"""The chart's pod spec driven against a real `opamp-gateway serve` process, the way the kubelet would.

The gateway gets the environment the chart gives the container (ConfigMap plus env), with two changes:
it binds loopback on free ports instead of 0.0.0.0:4320/4321, and the drain window is one second. Then
the startup, liveness and readiness probes, the ServiceMonitor's endpoint and the preStop hook are run
as rendered, followed by SIGTERM, and the process must be gone within the grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.ports import free_port
from harness.process import Process, spawn
from tests.deploy.rendering import rendered_set

STARTUP_TIMEOUT = 20.0


def http_status(url: str, method: str = "GET") -> int:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code


def pod_environment(tmp_path: Path, opamp_port: int, admin_port: int) -> dict[str, str]:
    rendered = rendered_set("minimal-values")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPAMP_GATEWAY_")}
    env.update(rendered.config)
    for entry in rendered.container["env"]:
        if entry["name"] == "OPAMP_GATEWAY_NODE_ID":
            env[entry["name"]] = "rel-opamp-gateway-5d8c7-x2x9q"  # the pod name, from the fieldRef
        else:
            env[entry["name"]] = entry["value"]
    env |= {
        "OPAMP_GATEWAY_HOST": "127.0.0.1",
        "OPAMP_GATEWAY_ADMIN_HOST": "127.0.0.1",
        "OPAMP_GATEWAY_PORT": str(opamp_port),
        "OPAMP_GATEWAY_ADMIN_PORT": str(admin_port),
        "OPAMP_GATEWAY_SQLITE_PATH": str(tmp_path / "opamp-gateway.db"),
        "OPAMP_GATEWAY_DRAIN_SECONDS": "1",
    }
    return env


@pytest.fixture
def gateway_pod(tmp_path: Path) -> Iterator[tuple[Process, dict[str, str], dict[str, int]]]:
    ports = {"opamp": free_port(), "admin": free_port()}
    env = pod_environment(tmp_path, ports["opamp"], ports["admin"])
    # Configured by its environment alone, as in the pod: not through harness.gateway's flags.
    process = spawn(
        "gateway", [sys.executable, "-m", "gateway.cli", "serve"], tmp_path / "gateway.log", env=env
    )
    try:
        yield process, env, ports
    finally:
        process.kill()


def test_probes_prestop_and_sigterm_against_the_real_gateway(
    gateway_pod: tuple[Process, dict[str, str], dict[str, int]], tmp_path: Path
) -> None:
    process, env, ports = gateway_pod
    rendered = rendered_set("minimal-values")
    container = rendered.container

    def probe_url(probe: str) -> str:
        get = container[probe]["httpGet"]
        assert get["scheme"] == "HTTP"
        return f"http://127.0.0.1:{ports[get['port']]}{get['path']}"

    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        assert process.returncode is None, process.log_text()
        try:
            if http_status(probe_url("startupProbe")) == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the startup probe never passed"
        time.sleep(0.1)
    assert http_status(probe_url("livenessProbe")) == 200
    assert http_status(probe_url("readinessProbe")) == 200
    endpoint = rendered.one("Service")["spec"]["ports"]
    assert {p["name"] for p in endpoint} == set(ports)
    assert http_status(f"http://127.0.0.1:{ports['admin']}/metrics") == 200  # the ServiceMonitor's target

    command = container["lifecycle"]["preStop"]["exec"]["command"]
    started = time.monotonic()
    hook = subprocess.run(
        [sys.executable, *command[1:]], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert hook.returncode == 0, hook.stderr
    assert "HTTP 202" in hook.stdout, hook.stdout
    assert time.monotonic() - started >= 1.0  # waited the drain window
    assert http_status(probe_url("readinessProbe")) == 503, "a draining pod must leave the endpoints"
    assert http_status(probe_url("livenessProbe")) == 200, "draining is not dying"

    process.signal(signal.SIGTERM)
    grace = rendered.pod["terminationGracePeriodSeconds"] - (time.monotonic() - started)
    assert process.wait(timeout=grace) == 0, process.log_text()
