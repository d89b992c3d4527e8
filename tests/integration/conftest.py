"""Real gateway processes (the installed `opamp-gateway` command) and real redis-servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.support.servers import free_port

START_TIMEOUT = 20.0


class GatewayProcess:
    def __init__(
        self, workdir: Path, node_id: str, sqlite_path: Path, redis_url: str, **flags: object
    ) -> None:
        self.node_id = node_id
        self.port, self.admin_port = free_port(), free_port()
        self.log_path = workdir / f"{node_id}.log"
        self.argv = [
            str(Path(sys.executable).with_name("opamp-gateway")),
            "serve",
            f"--port={self.port}",
            f"--admin-port={self.admin_port}",
            f"--sqlite-path={sqlite_path}",
            f"--node-id={node_id}",
            "--flush-interval=0.05",
            "--log-level=debug",
        ]
        if redis_url:
            self.argv.append(f"--redis-url={redis_url}")
        self.argv += [f"--{name.replace('_', '-')}={value}" for name, value in flags.items()]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def opamp_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self, *, bus_up: bool = True) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready(bus_up):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.node_id} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.node_id} not ready within {START_TIMEOUT}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def _ready(self, bus_up: bool) -> bool:
        try:
            response = httpx2.get(f"{self.admin_url}/readyz", timeout=1.0)
        except httpx2.HTTPError:
            return False
        return response.status_code == 200 and (not bus_up or response.json()["bus"]["state"] == "up")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


class GatewayFactory:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.sqlite_path = workdir / "shared.db"
        self.started: list[GatewayProcess] = []

    def __call__(self, node_id: str, redis_url: str = "", **flags: object) -> GatewayProcess:
        gateway = GatewayProcess(self.workdir, node_id, self.sqlite_path, redis_url, **flags)
        self.started.append(gateway)
        gateway.start(bus_up=bool(redis_url))
        return gateway

    def close(self) -> None:
        for gateway in self.started:
            gateway.kill()


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[GatewayFactory]:
    """Start gateway processes sharing one SQLite file; all are killed (by PID) after the test."""
    factory = GatewayFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()
