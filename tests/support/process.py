"""A real `opamp-gateway serve` process for tests (started by harness.gateway) with a small admin API
client and the credentials it was given.

Used by the `gateway_factory` fixture (tests/conftest.py).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import httpx2

from harness.gateway import READY_TIMEOUT, GatewayProcess, TLSFiles, start_gateway as launch
from harness.waiting import wait_until


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

    def put_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A PUT of a resource (config, package, connection settings): 201 (created) or 200."""
        response = self._http.put(path, json=body)
        if response.status_code not in (200, 201):
            raise AdminError(f"PUT {path} -> {response.status_code}: {response.text}")
        stored: dict[str, Any] = response.json()
        return stored

    def put_config(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """`PUT /api/v1/configs/{name}`: 201 (created) or 200 (changed or unchanged)."""
        return self.put_json(f"/api/v1/configs/{name}", body)

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


class Gateway(GatewayProcess):
    """One running gateway node, its admin API client, and the agent key it accepts (None: agents
    are anonymous)."""

    def __init__(self, process: GatewayProcess, admin: AdminClient, agent_key: str | None) -> None:
        super().__init__(process, process.opamp_port, process.admin_port, process.sqlite_path, process.tls)
        self.admin = admin
        self.agent_key = agent_key

    @property
    def agent_headers(self) -> dict[str, str]:
        """What an agent of this node must send: the Authorization header, if the node has keys."""
        return {"Authorization": f"Bearer {self.agent_key}"} if self.agent_key else {}

    def stop(self, timeout: float = 15.0) -> int:
        self.admin.close()
        return super().stop(timeout)


class GatewayFactory(Protocol):
    def __call__(
        self,
        *,
        agent_key: str | None = None,
        admin_token: str | None = None,
        tls: TLSFiles | None = None,
        **flags: object,
    ) -> Gateway: ...


def _auth_flags(
    workdir: Path, name: str, agent_key: str | None, admin_token: str | None
) -> dict[str, object]:
    """Flags for the credentials, written into `workdir` as files the gateway re-reads."""
    flags: dict[str, object] = {}
    if agent_key is not None:
        keys = workdir / f"{name}-agent-keys"
        keys.write_text(f"{agent_key}\n")
        flags["agent_keys_file"] = keys
    if admin_token is not None:
        token = workdir / f"{name}-admin-token"
        token.write_text(f"{admin_token}\n")
        flags["admin_token_file"] = token
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

    Defaults: --log-level debug, --node-id <name>, --flush-interval 0.1. Any of them (and
    --port/--admin-port/--sqlite-path) can be overridden through `flags`. With `agent_key` /
    `admin_token` the node requires them (written to files it re-reads); its AdminClient sends the
    token. With `tls` both ports serve TLS and every URL is https.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    merged = {
        "log_level": "debug",
        "flush_interval": 0.1,
        **_auth_flags(workdir, name, agent_key, admin_token),
        **flags,
    }
    process = launch(workdir, name, merged, tls=tls, ready_timeout=ready_timeout)
    verify: ssl.SSLContext | bool = tls.client_context() if tls else True
    return Gateway(process, AdminClient(process.admin_url, admin_token, verify), agent_key)
