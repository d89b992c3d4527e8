"""The one launcher of `opamp-gateway serve` processes for tests, bench and loadtest.

A node gets free loopback ports, its own SQLite file unless it is given a shared one, an optional
Redis URL, and flags; the environment it inherits is scrubbed of `OPAMP_GATEWAY_*` so that its flags
are all its configuration (unless asked to pass them on). It is ready when `/readyz` answers 200 on
both ports (the admin port alone under mutual TLS, where the OpAMP port wants a client certificate),
and for readiness "bus" also when that answer says the bus is up.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.admin import get
from harness.ports import LOOPBACK, free_port
from harness.process import Process, spawn, wait_ready

READY_TIMEOUT = 20.0
OPAMP_PATH = "/v1/opamp"
ENV_PREFIX = "OPAMP_GATEWAY_"

# "readyz": /readyz answers 200; "bus": and its bus is up; None: do not wait.
Readiness = Literal["readyz", "bus"] | None


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for a node serving TLS: its certificate chain and key, the CA that signed them (for
    clients), and optionally a CA whose client certificates it requires (mutual TLS)."""

    cert: Path
    key: Path
    ca: Path
    client_ca: Path | None = None

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def gateway_command() -> list[str]:
    """The installed console script if there is one (it is what users run), else `python -m`."""
    script = Path(sys.executable).with_name("opamp-gateway")
    if script.exists():
        return [str(script)]
    found = shutil.which("opamp-gateway")
    return [found] if found else [sys.executable, "-m", "gateway.cli"]


def node_env(inherit_settings: bool = False) -> dict[str, str]:
    """This process's environment for a node: minus OPAMP_GATEWAY_* (flags are then its only
    configuration) unless `inherit_settings`."""
    env = {k: v for k, v in os.environ.items() if inherit_settings or not k.startswith(ENV_PREFIX)}
    env["PYTHONUNBUFFERED"] = "1"
    # A node must not pick up the caller's warning filters (pytest's or coverage's) as errors.
    env.pop("PYTHONWARNINGS", None)
    return env


def flag_args(flags: Mapping[str, object]) -> list[str]:
    """`offline_after=2` -> `--offline-after=2`; True -> the bare flag; False/None -> left out."""
    args: list[str] = []
    for name, value in flags.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        args.append(flag if value is True else f"{flag}={value}")
    return args


class GatewayProcess(Process):
    """One running gateway node: `opamp_url` is where agents POST and connect, `opamp_base_url` and
    `admin_url` are the two ports' base URLs."""

    def __init__(
        self, process: Process, opamp_port: int, admin_port: int, sqlite_path: Path, tls: TLSFiles | None
    ) -> None:
        super().__init__(process.name, process.argv, process.popen, process.log_path)
        self.opamp_port = opamp_port
        self.admin_port = admin_port
        self.sqlite_path = sqlite_path
        self.tls = tls

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def opamp_base_url(self) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self.opamp_port}"

    @property
    def opamp_url(self) -> str:
        return f"{self.opamp_base_url}{OPAMP_PATH}"

    @property
    def admin_url(self) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self.admin_port}"

    def readyz(self, url: str) -> dict[str, object] | None:
        """The /readyz body at `url` when it answers 200, else None."""
        answer = get(f"{url}/readyz", context=self.tls.client_context() if self.tls else None)
        if answer is None or answer[0] != 200:
            return None
        body: dict[str, object] = json.loads(answer[1])
        return body

    def is_ready(self, ready: Readiness) -> bool:
        # Under mutual TLS the OpAMP port wants a client certificate even for /readyz.
        urls = [self.admin_url]
        if self.tls is None or self.tls.client_ca is None:
            urls.append(self.opamp_base_url)
        bodies = [self.readyz(url) for url in urls]
        if any(body is None for body in bodies):
            return False
        if ready == "bus":
            bus = bodies[0].get("bus") if bodies[0] else None
            return isinstance(bus, dict) and bus.get("state") == "up"
        return True


def start_gateway(
    workdir: Path,
    name: str,
    flags: Mapping[str, object] | None = None,
    *,
    sqlite_path: Path | None = None,
    redis_url: str | None = None,
    extra_args: Sequence[str] = (),
    tls: TLSFiles | None = None,
    inherit_settings: bool = False,
    ready: Readiness = "readyz",
    ready_timeout: float = READY_TIMEOUT,
    prefix: Sequence[str] = (),
    cwd: Path | None = None,
) -> GatewayProcess:
    """Start a node named `name` (its --node-id and log file name) on free loopback ports; its SQLite
    file is `sqlite_path` (share one between nodes by passing the same path) or `<workdir>/<name>.db`.

    `flags` are `serve` flags by their setting name (`flush_interval=0.05`) and override the ones
    this function sets (--port, --admin-port, --sqlite-path, --node-id); `extra_args` go after them
    as they are. `prefix` goes before the command (`taskset -c 0`, which execs it: the pid stays the
    node's). With `inherit_settings` the node also reads OPAMP_GATEWAY_* from this process's
    environment (flags still win). Output goes to `<workdir>/<name>.log`. Raises ProcessError if the
    node exits or is not ready in time (it is killed then).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    merged: dict[str, object] = {
        "port": free_port(),
        "admin_port": free_port(),
        "sqlite_path": sqlite_path or workdir / f"{name}.db",
        "node_id": name,
        "redis_url": redis_url,
    }
    if tls is not None:
        merged.update(tls_cert=tls.cert, tls_key=tls.key, tls_client_ca=tls.client_ca)
    merged.update(flags or {})
    argv = [*prefix, *gateway_command(), "serve", *flag_args(merged), *extra_args]
    process = spawn(name, argv, workdir / f"{name}.log", env=node_env(inherit_settings), cwd=cwd)
    gateway = GatewayProcess(
        process,
        opamp_port=int(str(merged["port"])),
        admin_port=int(str(merged["admin_port"])),
        sqlite_path=Path(str(merged["sqlite_path"])),
        tls=tls,
    )
    if ready is not None:
        wait_ready(gateway, lambda: gateway.is_ready(ready), ready_timeout)
    return gateway
