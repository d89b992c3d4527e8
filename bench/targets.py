"""Target processes: a gateway node or the baseline, started on loopback and pinned to one core."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
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

from bench import client

logger = logging.getLogger("bench.targets")

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class TargetError(Exception):
    """A target did not start or become ready."""


def admin(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """One JSON request to a gateway's admin API on loopback: (status, parsed body or error text)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://{HOST}:{port}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


@dataclass(frozen=True)
class Cores:
    """Which CPU the server runs on and which the load generator runs on (None: not pinned)."""

    server: int | None
    load: int | None

    @property
    def pinned(self) -> bool:
        return self.server is not None

    def prefix(self, core: int | None) -> list[str]:
        return [] if core is None else ["taskset", "-c", str(core)]

    def describe(self) -> str:
        if not self.pinned:
            return "not pinned (fewer than 2 usable cores or taskset missing): results are less fair"
        return f"server pinned to CPU {self.server}, load generator to CPU {self.load} (taskset)"


def choose_cores() -> Cores:
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2 or shutil.which("taskset") is None:
        return Cores(None, None)
    return Cores(usable[0], usable[1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Target:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    admin_port: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def gateway_command(port: int, admin_port: int, workdir: Path) -> list[str]:
    exe = Path(sys.executable).with_name("opamp-gateway")
    return [
        str(exe),
        "serve",
        "--port",
        str(port),
        "--admin-port",
        str(admin_port),
        "--sqlite-path",
        str(workdir / "bench-gateway.db"),
        "--node-id",
        "bench",
        "--log-level",
        "warning",
        # The run enrolls its whole fleet up front; the enrollment bound would shed most of it.
        "--enrollment-rate",
        "0",
    ]


def baseline_command(port: int, reply: bytes, loop: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.baseline",
        "--port",
        str(port),
        "--reply-hex",
        reply.hex(),
        "--loop",
        loop,
    ]


def _wait_ready(target: Target, path: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if target.process.poll() is not None:
            raise TargetError(f"{target.name} exited with {target.process.returncode}:\n{target.log_tail()}")
        try:
            reply = client.get(HOST, target.port, path, timeout=1.0)
            if reply.status == 200:
                return
            last = f"HTTP {reply.status}: {reply.body[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise TargetError(f"{target.name} not ready after {READY_TIMEOUT:.0f} s ({last}):\n{target.log_tail()}")


def _stop(target: Target) -> None:
    if target.process.poll() is None:
        target.process.send_signal(signal.SIGTERM)
        try:
            target.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.warning("%s (pid %d) ignored SIGTERM; killing it", target.name, target.pid)
            target.process.kill()
            target.process.wait()


@contextlib.contextmanager
def running(
    name: str, command: Sequence[str], port: int, cores: Cores, workdir: Path, admin_port: int | None = None
) -> Iterator[Target]:
    """Start `command` pinned to the server core, wait for GET /readyz, stop it (by its pid) at exit."""
    log_path = workdir / f"{name}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log_path.open("wb") as log:
        # taskset execs the command, so the pid is the server's own.
        process = subprocess.Popen(
            [*cores.prefix(cores.server), *command],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_ROOT,
        )
    target = Target(name, port, process, log_path, admin_port)
    try:
        _wait_ready(target, "/readyz")
        yield target
    except TargetError:
        raise
    except Exception:
        logger.error("%s (pid %d) log, last lines:\n%s", name, target.pid, target.log_tail())
        raise
    finally:
        _stop(target)
