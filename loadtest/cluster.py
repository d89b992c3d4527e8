"""The processes a scale run starts on this machine: redis-server, N gateways sharing one SQLite
file, a Locust master and its workers. All listen on loopback only; all are stopped, by the pid we
started, when the run ends however it ends."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.targets import HOST, admin, free_port

logger = logging.getLogger("loadtest.cluster")

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 60.0


class ClusterError(Exception):
    """A process of the run could not start or died."""


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check(self) -> None:
        if self.process.poll() is not None:
            raise ClusterError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")


@dataclass(frozen=True)
class Gateway:
    proc: Proc
    port: int
    admin_port: int

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as response:
        text: str = response.read().decode()
        return text


class Cluster:
    """Starts processes and remembers them, so `stop_all` ends exactly what it started."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
                cwd=REPO,
            )
        proc = Proc(name, process, log)
        self.procs.append(proc)
        return proc

    def redis(self) -> int:
        exe = shutil.which("redis-server")
        if exe is None:
            raise ClusterError("redis-server is not installed (scripts/install-test-deps.sh installs it)")
        port = free_port()
        proc = self.start(
            "redis", [exe, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        )
        _wait(proc, lambda: _redis_up(port))
        return port

    def gateway(self, index: int, redis_port: int, db: Path, extra: Sequence[str]) -> Gateway:
        port, admin_port = free_port(), free_port()
        exe = Path(sys.executable).with_name("opamp-gateway")
        argv = [
            str(exe), "serve", "--host", HOST, "--port", str(port),
            "--admin-host", HOST, "--admin-port", str(admin_port),
            "--sqlite-path", str(db), "--node-id", f"load-{index}",
            "--redis-url", f"redis://{HOST}:{redis_port}/0", "--log-level", "warning",
            *extra,
        ]  # fmt: skip
        proc = self.start(f"gateway-{index}", argv)
        gateway = Gateway(proc, port, admin_port)
        _wait(proc, lambda: _ready(admin_port))
        return gateway

    def stop(self, proc: Proc, timeout: float = 30.0) -> None:
        if proc.process.poll() is None:
            proc.process.terminate()
            try:
                proc.process.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.process.kill()
                proc.process.wait()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


def _wait(proc: Proc, probe: Any) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        proc.check()
        with contextlib.suppress(OSError):
            if probe():
                return
        time.sleep(0.1)
    raise ClusterError(f"{proc.name} not ready after {READY_TIMEOUT:.0f} s:\n{proc.tail()}")


def _ready(admin_port: int) -> bool:
    return admin(admin_port, "GET", "/readyz")[0] == 200


def _redis_up(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


@contextlib.contextmanager
def running(workdir: Path) -> Iterator[Cluster]:
    cluster = Cluster(workdir)
    try:
        yield cluster
    finally:
        cluster.stop_all()
