"""Target processes: a gateway node or the baseline, started on loopback and pinned to one core."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import client
from harness.gateway import GatewayProcess, start_gateway
from harness.ports import LOOPBACK, free_port
from harness.process import Process, spawn, wait_ready
from harness.redis_server import RedisServer

logger = logging.getLogger("bench.targets")

HOST = LOOPBACK
REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 30.0


class TargetError(Exception):
    """A target did not start or become ready."""


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


@dataclass
class Target:
    name: str
    port: int
    process: Process
    admin_port: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.process.log_text().splitlines()[-lines:])


def baseline_command(port: int, reply: bytes, loop: str, ping_interval: float | None = None) -> list[str]:
    pings = [] if ping_interval is None else ["--ping-interval", str(ping_interval)]
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
        *pings,
    ]


def _answers_readyz(port: int) -> bool:
    try:
        return client.get(HOST, port, "/readyz", timeout=1.0).status == 200
    except OSError:
        return False


@contextlib.contextmanager
def _stopped_at_exit(target: Target) -> Iterator[Target]:
    try:
        yield target
    except TargetError:
        raise
    except Exception:
        logger.error("%s (pid %d) log, last lines:\n%s", target.name, target.pid, target.log_tail())
        raise
    finally:
        target.process.stop()
        if target.process.killed_after_sigterm:
            logger.warning("%s (pid %d) ignored SIGTERM; killed it", target.name, target.pid)


@contextlib.contextmanager
def gateway(
    cores: Cores, workdir: Path, flags: Mapping[str, object] | None = None, redis_url: str | None = None
) -> Iterator[Target]:
    """A gateway node pinned to the server core, with its own SQLite file in `workdir` (and `flags`
    beyond the defaults, a bus at `redis_url`); stopped (by its pid) at exit. ProcessError if it
    exits or is not ready in time."""
    node = start_gateway(
        workdir,
        "gateway",
        # The run enrolls its whole fleet up front; the enrollment bound would shed most of it.
        {"node_id": "bench", "log_level": "warning", "enrollment_rate": 0, **(flags or {})},
        sqlite_path=workdir / "bench-gateway.db",
        redis_url=redis_url,
        ready_timeout=READY_TIMEOUT,
        # taskset execs the command, so the pid is the server's own.
        prefix=cores.prefix(cores.server),
        # OPAMP_GATEWAY_* reach the measured node: diagnostic runs configure it so (docs/performance.md).
        inherit_settings=True,
        cwd=REPO_ROOT,
    )
    with _stopped_at_exit(Target("gateway", node.opamp_port, node, node.admin_port)) as target:
        yield target


@contextlib.contextmanager
def baseline(
    reply: bytes, loop: str, cores: Cores, workdir: Path, ping_interval: float | None = None
) -> Iterator[Target]:
    """The baseline answering every heartbeat with `reply`, pinned to the server core (pinging every
    `ping_interval` seconds, default the gateway's default); stopped at exit."""
    port = free_port()
    argv = [*cores.prefix(cores.server), *baseline_command(port, reply, loop, ping_interval)]
    process = spawn(
        "baseline", argv, workdir / "baseline.log", env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=REPO_ROOT
    )
    wait_ready(process, lambda: _answers_readyz(port), READY_TIMEOUT)
    with _stopped_at_exit(Target("baseline", port, process)) as target:
        yield target


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    """A redis-server for the nodes' bus; stopped at exit."""
    server = RedisServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def nodes(
    workdir: Path,
    names: Sequence[str],
    flags: Mapping[str, object],
    *,
    sqlite_path: Path | None = None,
    redis_url: str | None = None,
) -> Iterator[list[GatewayProcess]]:
    """Gateway nodes for a multi-node benchmark, unpinned, each ready before the next starts; all
    stopped (by pid) at exit. A node that exits or is not ready in time raises ProcessError."""
    started: list[GatewayProcess] = []
    try:
        # The benchmarks enroll their whole fleet at once: no enrollment rate limit.
        merged = {"log_level": "warning", "enrollment_rate": 0, **flags}
        for name in names:
            node = start_gateway(
                workdir,
                name,
                merged,
                sqlite_path=sqlite_path,
                redis_url=redis_url,
                ready_timeout=READY_TIMEOUT,
                inherit_settings=True,
                cwd=REPO_ROOT,
            )
            started.append(node)
        yield started
    finally:
        for node in reversed(started):
            node.stop()
