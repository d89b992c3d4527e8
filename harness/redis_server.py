"""The one launcher of redis-server for tests, bench and loadtest: loopback, a free port, no
persistence. `kill()` is an outage; `start()` brings it back on the same port, empty, as a
restarted Redis would be."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from harness.ports import LOOPBACK, free_port
from harness.process import Process, spawn, wait_ready

READY_TIMEOUT = 10.0


class RedisMissing(RuntimeError):
    """redis-server is not installed."""


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None, name: str = "redis") -> None:
        self.workdir = workdir
        self.name = name
        self.port = port or free_port()
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.process.pid

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisMissing("redis-server is not installed: run scripts/install-test-deps.sh")
        argv = [binary, "--port", str(self.port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no"]
        self.process = spawn(self.name, argv, self.workdir / f"{self.name}.log")
        wait_ready(self.process, self.ping, timeout, interval=0.02)

    def ping(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> int | None:
        """SIGTERM (see Process.stop); the exit code, or None if it was not running."""
        process, self.process = self.process, None
        return None if process is None else process.stop()

    def kill(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.kill()
