"""The processes a scale run starts besides its gateways: the Locust master and its workers, and
py-spy on a gateway when asked."""

from __future__ import annotations

import logging
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.gateway import GatewayProcess
from harness.ports import free_port
from harness.process import Process
from loadtest import config
from loadtest.cluster import HOST, REPO, Cluster, target
from loadtest.config import USER_CLASS, RunConfig

logger = logging.getLogger("loadtest.processes")


def locust(
    cluster: Cluster, cfg: RunConfig, gateways: Sequence[GatewayProcess], workdir: Path
) -> tuple[Process, list[Process]]:
    port = free_port()
    workers = config.workers(cfg)
    # Only a bound: the runner ends the test itself (SIGTERM) once the hold and the config change
    # are over, however long the ramp took.
    run_time = math.ceil(config.bound(cfg))
    common = [
        sys.executable, "-m", "locust", "-f", str(REPO / "loadtest" / "locustfile.py"),
        USER_CLASS[cfg.transport],
        "--opamp-targets", ",".join(target(g) for g in gateways),
        "--heartbeat-interval", str(cfg.heartbeat), "--loglevel", "WARNING",
    ]  # fmt: skip
    master = cluster.start(
        "locust-master",
        [
            *common, "--master", "--headless", "--master-bind-host", HOST, "--master-bind-port", str(port),
            "--expect-workers", str(workers), "--expect-workers-max-wait", "120",
            "-u", str(cfg.agents), "-r", str(cfg.spawn_rate), "-t", f"{run_time}s", "--stop-timeout", "10",
            "--csv", str(workdir / "locust"), "--csv-full-history", "--only-summary",
        ],
    )  # fmt: skip
    started = [
        cluster.start(
            f"locust-worker-{i}", [*common, "--worker", "--master-host", HOST, "--master-port", str(port)]
        )
        for i in range(workers)
    ]
    return master, started


def profile(cluster: Cluster, gateway: GatewayProcess, seconds: float, workdir: Path) -> Process | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        logger.warning("py-spy is not installed; no profile")
        return None
    out = workdir / f"{gateway.name}-profile"
    argv = [exe, "record", "--pid", str(gateway.pid), "--duration", str(int(seconds)), "--rate", "50"]
    cluster.start("py-spy-svg", [*argv, "--format", "flamegraph", "--output", f"{out}.svg"])
    return cluster.start("py-spy-raw", [*argv, "--format", "raw", "--output", f"{out}.folded"])
