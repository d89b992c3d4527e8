"""The processes a scale run starts on this machine: redis-server, N gateways sharing one SQLite
file, a Locust master and its workers. All listen on loopback only; all are stopped, by the pid we
started, when the run ends however it ends."""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from harness.gateway import GatewayProcess, start_gateway
from harness.ports import LOOPBACK
from harness.process import Process, spawn
from harness.redis_server import RedisMissing, RedisServer

logger = logging.getLogger("loadtest.cluster")

HOST = LOOPBACK
REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 60.0


class ClusterError(Exception):
    """A process of the run could not start or died."""


def target(gateway: GatewayProcess) -> str:
    """The gateway's OpAMP port as Locust's --opamp-targets takes it."""
    return f"{HOST}:{gateway.opamp_port}"


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as response:
        text: str = response.read().decode()
        return text


class Cluster:
    """Starts processes and remembers them, so `stop_all` (at the end of its `with` block) ends
    exactly what it started."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Process] = []

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop_all()

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Process:
        proc = spawn(
            name,
            argv,
            self.workdir / f"{name}.log",
            env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
            cwd=REPO,
        )
        self.procs.append(proc)
        return proc

    def redis(self) -> str:
        """Start redis-server; its URL."""
        server = RedisServer(self.workdir)
        try:
            server.start(READY_TIMEOUT)
        except RedisMissing as exc:
            raise ClusterError(str(exc)) from None
        assert server.process is not None
        self.procs.append(server.process)
        return server.url

    def gateway(self, index: int, redis_url: str, db: Path, extra: Sequence[str]) -> GatewayProcess:
        """Start gateway `index` (its own ports, the shared SQLite file `db`); ProcessError if it
        exits or is not ready in time."""
        flags = {"host": HOST, "admin_host": HOST, "node_id": f"load-{index}", "log_level": "warning"}
        name = f"gateway-{index}"
        gateway = start_gateway(
            self.workdir,
            name,
            flags,
            sqlite_path=db,
            redis_url=redis_url,
            extra_args=extra,
            ready_timeout=READY_TIMEOUT,
            # As with `python -m bench`, OPAMP_GATEWAY_* in the runner's environment reach every node.
            inherit_settings=True,
            cwd=REPO,
        )
        self.procs.append(gateway)
        return gateway

    def stop(self, proc: Process, timeout: float = 30.0) -> None:
        proc.stop(timeout)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
