"""A real `opamp-gateway serve` process for tests, and a small admin API client.

Used by the `gateway_factory` fixture (tests/interop/conftest.py). Nothing here is interop-specific,
so integration tests can use it as well.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx2

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
# Bounds how much of a gateway log goes into a failure report.
LOG_TAIL_CHARS = 20_000


def wait_until(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `check` until it returns something other than None/False; fail naming `what`.

    The last value seen and the last exception raised by `check` (an AssertionError, say) go into
    the failure message, so a timeout says what was observed, not just that it timed out.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    last_error: BaseException | None = None
    while True:
        try:
            value = check()
        except AssertionError as exc:
            value, last_error = None, exc
        else:
            if value is not None and value is not False:
                return value
            last = value
        if time.monotonic() >= deadline:
            detail = f"; last error: {last_error}" if last_error is not None else f"; last value: {last!r}"
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}{detail}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def gateway_command() -> list[str]:
    """The installed console script if there is one (it is what users run), else `python -m`."""
    script = Path(sys.executable).with_name("opamp-gateway")
    if script.exists():
        return [str(script)]
    found = shutil.which("opamp-gateway")
    return [found] if found else [sys.executable, "-m", "gateway.cli"]


class AdminError(AssertionError):
    """The admin API answered with an unexpected status."""


class AdminClient:
    """Just enough of the admin API for tests; every call asserts the status it expects. With a token
    it authenticates every call (`Authorization: Bearer <token>`)."""

    def __init__(self, base_url: str, token: str | None = None, verify: ssl.SSLContext | bool = True) -> None:
        self.base_url = base_url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx2.Client(
            base_url=base_url, timeout=10.0, trust_env=False, headers=headers, verify=verify
        )

    def close(self) -> None:
        self._http.close()

    def get_json(self, path: str, params: dict[str, str] | None = None, expect: int = 200) -> Any:
        response = self._http.get(path, params=params)
        if response.status_code != expect:
            raise AdminError(
                f"GET {path} {params or ''} -> {response.status_code}, expected {expect}: {response.text}"
            )
        return response.json()

    def put_config(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """`PUT /api/v1/configs/{name}`: 201 (created) or 200 (changed or unchanged)."""
        response = self._http.put(f"/api/v1/configs/{name}", json=body)
        if response.status_code not in (200, 201):
            raise AdminError(f"PUT /api/v1/configs/{name} -> {response.status_code}: {response.text}")
        config: dict[str, Any] = response.json()
        return config

    def config(self, name: str) -> dict[str, Any]:
        """`GET /api/v1/configs/{name}`, rollout counts included."""
        config: dict[str, Any] = self.get_json(f"/api/v1/configs/{name}")
        return config

    def agents(self, **params: str) -> list[dict[str, Any]]:
        """One page of `GET /api/v1/agents`; pass `attr.x` filters as `**{"attr.x": "v"}`."""
        body = self.get_json("/api/v1/agents", params)
        agents: list[dict[str, Any]] = body["agents"]
        return agents

    def agent(self, instance_uid: str) -> dict[str, Any] | None:
        """`GET /api/v1/agents/{uid}`, or None on 404."""
        response = self._http.get(f"/api/v1/agents/{instance_uid}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise AdminError(f"GET /api/v1/agents/{instance_uid} -> {response.status_code}: {response.text}")
        body: dict[str, Any] = response.json()
        return body

    def summary(self) -> dict[str, Any]:
        body: dict[str, Any] = self.get_json("/api/v1/fleet/summary")
        return body

    def wait_for_agent(
        self, instance_uid: str, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        """Poll `GET /api/v1/agents/{uid}` until the agent exists and `predicate` holds; return it."""

        def check() -> dict[str, Any] | None:
            agent = self.agent(instance_uid)
            if agent is None:
                raise AssertionError(f"no agent {instance_uid}")
            assert predicate(agent), f"not yet: {agent}"
            return agent

        return wait_until(check, timeout, what)

    def find_one(self, **params: str) -> dict[str, Any] | None:
        """The one agent matching the filters, None if none; fails if several match."""
        found = self.agents(**params)
        assert len(found) <= 1, f"{len(found)} agents match {params}: {found}"
        return found[0] if found else None


class GatewayStartError(RuntimeError):
    pass


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


@dataclass
class Gateway:
    """One running gateway node."""

    name: str
    opamp_port: int
    admin_port: int
    sqlite_path: Path
    log_path: Path
    argv: list[str]
    process: subprocess.Popen[bytes]
    admin: AdminClient
    _log_file: Any = field(repr=False)
    # The agent key the node accepts (None: agents are anonymous) and its TLS files (None: plain HTTP).
    agent_key: str | None = None
    tls: TLSFiles | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def opamp_url(self) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self.opamp_port}/v1/opamp"

    @property
    def opamp_base_url(self) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self.opamp_port}"

    @property
    def admin_url(self) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self.admin_port}"

    @property
    def agent_headers(self) -> dict[str, str]:
        """What an agent of this node must send: the Authorization header, if the node has keys."""
        return {"Authorization": f"Bearer {self.agent_key}"} if self.agent_key else {}

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self, limit: int = LOG_TAIL_CHARS) -> str:
        """The node's stdout+stderr so far (the tail, if long)."""
        with contextlib.suppress(FileNotFoundError):
            text = self.log_path.read_text(errors="replace")
            if len(text) > limit:
                return f"[... {len(text) - limit} characters cut ...]\n{text[-limit:]}"
            return text
        return ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code. Fails if the node had to be
        killed, since a node that ignores SIGTERM is a bug worth seeing."""
        self.admin.close()
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    return self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
                    raise AssertionError(
                        f"gateway {self.name} (pid {self.pid}) ignored SIGTERM for {timeout}s; killed it"
                    ) from None
            return self.process.returncode
        finally:
            self._log_file.close()


class GatewayFactory(Protocol):
    def __call__(
        self,
        *,
        agent_key: str | None = None,
        admin_token: str | None = None,
        tls: TLSFiles | None = None,
        **flags: object,
    ) -> Gateway: ...


def _flag_args(flags: dict[str, object]) -> list[str]:
    """`offline_after=2` -> `--offline-after 2`; True -> bare flag; False/None -> left out."""
    args: list[str] = []
    for name, value in flags.items():
        if value is None or value is False:
            continue
        args.append("--" + name.replace("_", "-"))
        if value is not True:
            args.append(str(value))
    return args


def _clean_env() -> dict[str, str]:
    """The test's environment minus OPAMP_GATEWAY_* (flags must be the only configuration)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPAMP_GATEWAY_")}
    env["PYTHONUNBUFFERED"] = "1"
    # A gateway started by a test must not pick up coverage's or pytest's warning filters.
    env.pop("PYTHONWARNINGS", None)
    return env


def _ready(client: httpx2.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx2.TransportError:
        return False


def _auth_flags(
    workdir: Path, name: str, agent_key: str | None, admin_token: str | None, tls: TLSFiles | None
) -> dict[str, object]:
    """Flags for the credentials and TLS files, written into `workdir` as the gateway reads them."""
    flags: dict[str, object] = {}
    if agent_key is not None:
        keys = workdir / f"{name}-agent-keys"
        keys.write_text(f"{agent_key}\n")
        flags["agent_keys_file"] = keys
    if admin_token is not None:
        token = workdir / f"{name}-admin-token"
        token.write_text(f"{admin_token}\n")
        flags["admin_token_file"] = token
    if tls is not None:
        flags.update(tls_cert=tls.cert, tls_key=tls.key, tls_client_ca=tls.client_ca)
    return flags


def start_gateway(
    workdir: Path,
    name: str,
    flags: dict[str, object],
    ready_timeout: float = READY_TIMEOUT,
    *,
    agent_key: str | None = None,
    admin_token: str | None = None,
    tls: TLSFiles | None = None,
) -> Gateway:
    """Start a node on free loopback ports with a fresh SQLite file in `workdir`; wait for /readyz.

    Defaults: --log-level debug, --node-id <name>, --offline-after 300, --flush-interval 0.1. Any
    of them (and --port/--admin-port/--sqlite-path) can be overridden through `flags`. With
    `agent_key` / `admin_token` the node requires them (written to files it re-reads); its AdminClient
    sends the token. With `tls` both ports serve TLS and every URL is https.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    merged: dict[str, object] = {
        "port": free_port(),
        "admin_port": free_port(),
        "sqlite_path": workdir / f"{name}.db",
        "node_id": name,
        "log_level": "debug",
        "flush_interval": 0.1,
        **_auth_flags(workdir, name, agent_key, admin_token, tls),
        **flags,
    }
    argv = [*gateway_command(), "serve", *_flag_args(merged)]
    log_path = workdir / f"{name}.log"
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=_clean_env()
    )
    gateway = Gateway(
        name=name,
        opamp_port=int(str(merged["port"])),
        admin_port=int(str(merged["admin_port"])),
        sqlite_path=Path(str(merged["sqlite_path"])),
        log_path=log_path,
        argv=argv,
        process=process,
        admin=AdminClient(
            f"{'https' if tls else 'http'}://{LOOPBACK}:{merged['admin_port']}",
            admin_token,
            tls.client_context() if tls else True,
        ),
        _log_file=log_file,
        agent_key=agent_key,
        tls=tls,
    )
    deadline = time.monotonic() + ready_timeout
    # /readyz on the OpAMP port needs no key, but a client certificate under mutual TLS: probe the
    # admin port alone then.
    probes = [f"{gateway.admin_url}/readyz"]
    if tls is None or tls.client_ca is None:
        probes.append(f"{gateway.opamp_base_url}/readyz")
    verify: ssl.SSLContext | bool = tls.client_context() if tls else True
    with httpx2.Client(timeout=2.0, trust_env=False, verify=verify) as probe:
        while True:
            if process.poll() is not None:
                gateway.stop()
                raise GatewayStartError(
                    f"gateway {name} exited with code {process.returncode} before it was ready\n"
                    f"command: {' '.join(argv)}\n--- its output ---\n{gateway.log_text()}"
                )
            if all(_ready(probe, url) for url in probes):
                return gateway
            if time.monotonic() >= deadline:
                with contextlib.suppress(AssertionError):
                    gateway.stop()
                raise GatewayStartError(
                    f"gateway {name} was not ready within {ready_timeout}s\n"
                    f"command: {' '.join(argv)}\n--- its output ---\n{gateway.log_text()}"
                )
            time.sleep(0.05)
