"""The configs admin API, over real sockets, with HTTP and WebSocket agents on one in-process node."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from gateway.opamp import capabilities as caps
from gateway.proto import anyvalue_pb2 as av, opamp_pb2 as pb
from tests.support import ws as ws_agent
from tests.support.servers import Node, run_node
from tests.support.waiting import uid

pytestmark = pytest.mark.anyio

ACCEPTS = caps.REPORTS_STATUS | caps.ACCEPTS_REMOTE_CONFIG | caps.REPORTS_REMOTE_CONFIG
JSON = {"Content-Type": "application/json"}
Poll = Callable[..., Awaitable[pb.ServerToAgent]]


def config_body(body: str = "receivers: {}\n", **overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "selector": {"match": {"service.name": "otelcol-contrib"}},
        "files": {"collector.yaml": {"content_type": "text/yaml", "body": body}},
    }
    raw.update(overrides)
    return raw


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with run_node(tmp_path, offline_after=60.0, max_config_bytes=4096) as running:
        yield running


@pytest.fixture
async def admin(node: Node) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=node.admin_url) as c:
        yield c


@pytest.fixture
async def poll(node: Node) -> AsyncIterator[Poll]:
    """Factory: one HTTP AgentToServer for an agent; reports a RemoteConfigStatus when given one."""
    async with httpx2.AsyncClient(base_url=node.opamp_url) as c:

        async def _poll(
            agent: bytes,
            seq: int,
            *,
            name: str = "otelcol-contrib",
            capabilities: int = ACCEPTS,
            config_status: tuple[bytes, int] | None = None,
        ) -> pb.ServerToAgent:
            msg = pb.AgentToServer(instance_uid=agent, sequence_num=seq, capabilities=capabilities)
            if seq == 0:
                msg.agent_description.identifying_attributes.add(
                    key="service.name", value=av.AnyValue(string_value=name)
                )
            if seq == 0 and config_status is None and capabilities & caps.REPORTS_REMOTE_CONFIG:
                # A first report says which config the agent runs (none yet): without it the
                # gateway asks for full state before offering one (engine._config_unknown).
                config_status = (b"", pb.RemoteConfigStatuses_UNSET)
            if config_status is not None:
                msg.remote_config_status.last_remote_config_hash = config_status[0]
                msg.remote_config_status.status = config_status[1]  # type: ignore[assignment]
            response = await c.post(
                "/v1/opamp",
                content=msg.SerializeToString(),
                headers={"Content-Type": "application/x-protobuf"},
            )
            assert response.status_code == 200, response.text
            return pb.ServerToAgent.FromString(response.content)

        yield _poll


async def test_crud(admin: httpx2.AsyncClient) -> None:
    created = await admin.put("/api/v1/configs/base", json=config_body())
    assert created.status_code == 201
    body = created.json()
    assert (body["name"], body["version"], body["priority"]) == ("base", 1, 0)
    assert body["files"] == {"collector.yaml": {"content_type": "text/yaml", "body": "receivers: {}\n"}}
    assert len(body["hash"]) == 64 and body["created_at"] == body["updated_at"]

    same = await admin.put("/api/v1/configs/base", json=config_body())
    assert same.status_code == 200 and same.json() == body

    # GET -> edit -> PUT works: read-only fields are accepted back, version is a precondition.
    edited = {**body, "files": {"collector.yaml": {"body": "exporters: {}\n"}}}
    updated = await admin.put("/api/v1/configs/base", json=edited)
    assert updated.status_code == 200 and updated.json()["version"] == 2
    stale = await admin.put("/api/v1/configs/base", json=edited)
    assert stale.status_code == 409
    assert "version 2, not 1" in stale.json()["error"]["message"]

    listed = await admin.get("/api/v1/configs")
    assert [c["name"] for c in listed.json()["configs"]] == ["base"]
    got = await admin.get("/api/v1/configs/base")
    assert got.json()["version"] == 2 and got.json()["rollout"]["matched"] == 0

    assert (await admin.delete("/api/v1/configs/base?version=1")).status_code == 409
    assert (await admin.delete("/api/v1/configs/base?version=2")).status_code == 204
    assert (await admin.delete("/api/v1/configs/base")).status_code == 404
    assert (await admin.get("/api/v1/configs/base")).status_code == 404
    assert (await admin.get("/api/v1/configs")).json() == {"configs": []}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/configs/Bad", config_body(), "name"),
        ("/api/v1/configs/ok", {"files": {}}, "selector"),
        ("/api/v1/configs/ok", config_body(selector={"match": {"k": 1}}), "selector.match.k"),
        (
            "/api/v1/configs/ok",
            config_body(files={"a": {"body": "", "content_type": "yaml"}}),
            "files.a.content_type",
        ),
        ("/api/v1/configs/ok", config_body(body="x" * 5000), "files"),
    ],
)
async def test_bad_input_is_400_naming_the_field(
    admin: httpx2.AsyncClient, path: str, body: dict[str, Any], field: str
) -> None:
    response = await admin.put(path, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(f"{field}: ")
    assert (await admin.get("/api/v1/configs")).json() == {"configs": []}


async def test_not_json_and_too_large(admin: httpx2.AsyncClient) -> None:
    response = await admin.put("/api/v1/configs/x", content=b"{nope", headers=JSON)
    assert response.status_code == 400 and response.json()["error"]["message"].startswith("body: ")
    huge = await admin.put("/api/v1/configs/x", content=b"[" + b" " * 100_000 + b"]", headers=JSON)
    assert huge.status_code == 413
    bad_version = await admin.delete("/api/v1/configs/x?version=abc")
    assert bad_version.status_code == 400
    unknown = await admin.delete("/api/v1/configs/x?force=1")
    assert unknown.status_code == 400 and unknown.json()["error"]["message"].startswith("force: ")


async def test_http_agent_converges_and_rollout_shows_it(admin: httpx2.AsyncClient, poll: Poll) -> None:
    put = await admin.put("/api/v1/configs/base", json=config_body())
    assert put.status_code == 201
    accepting, refusing, other = uid(1), uid(2), uid(3)
    offered = await poll(accepting, 0)
    digest = offered.remote_config.config_hash
    assert offered.remote_config.config.config_map["collector.yaml"].body == b"receivers: {}\n"
    assert not (await poll(refusing, 0, capabilities=caps.REPORTS_STATUS)).HasField("remote_config")
    assert not (await poll(other, 0, name="fluent-bit")).HasField("remote_config")

    rollout = (await admin.get("/api/v1/configs/base")).json()["rollout"]
    assert rollout == {
        "strategy": "all",
        "matched": 2,
        "applied": 0,
        "applying": 1,
        "failed": 0,
        "pending": 0,
        "unsupported": 1,
        "offline": 0,
        "disconnected": 0,
    }
    agent = (await admin.get(f"/api/v1/agents/{uuid.UUID(bytes=accepting)}")).json()
    assert agent["config_sync"] == {
        "status": "applying",
        "in_sync": False,
        "desired_hash": digest.hex(),
        "reported_hash": None,
        "configs": ["base"],
    }

    reply = await poll(accepting, 1, config_status=(digest, pb.RemoteConfigStatuses_APPLIED))
    assert not reply.HasField("remote_config")
    rollout = (await admin.get("/api/v1/configs/base")).json()["rollout"]
    assert rollout["applied"] == 1 and rollout["applying"] == 0
    agent = (await admin.get(f"/api/v1/agents/{uuid.UUID(bytes=accepting)}")).json()
    assert agent["config_sync"]["in_sync"] is True
    assert agent["remote_config"]["status"] == "APPLIED"
    stranger = (await admin.get(f"/api/v1/agents/{uuid.UUID(bytes=other)}")).json()
    assert stranger["config_sync"]["status"] == "none"

    listed = await admin.get("/api/v1/agents", params={"config": "base", "config_status": "applied"})
    assert [a["instance_uid"] for a in listed.json()["agents"]] == [str(uuid.UUID(bytes=accepting))]
    unsupported = await admin.get("/api/v1/agents", params={"config": "base", "config_status": "unsupported"})
    assert [a["instance_uid"] for a in unsupported.json()["agents"]] == [str(uuid.UUID(bytes=refusing))]
    assert (await admin.get("/api/v1/agents", params={"config": "nope"})).status_code == 404
    assert (await admin.get("/api/v1/agents", params={"config_status": "done"})).status_code == 400


async def test_failed_agents_are_listed_and_not_resent(admin: httpx2.AsyncClient, poll: Poll) -> None:
    await admin.put("/api/v1/configs/base", json=config_body())
    agent = uid(7)
    digest = (await poll(agent, 0)).remote_config.config_hash
    reply = await poll(agent, 1, config_status=(digest, pb.RemoteConfigStatuses_FAILED))
    assert not reply.HasField("remote_config")
    assert not (await poll(agent, 2)).HasField("remote_config")
    failed = await admin.get("/api/v1/agents", params={"config": "base", "config_status": "failed"})
    assert [a["instance_uid"] for a in failed.json()["agents"]] == [str(uuid.UUID(bytes=agent))]
    assert (await admin.get("/api/v1/configs/base")).json()["rollout"]["failed"] == 1
    # A fixed config is a new desired hash: it is sent.
    await admin.put("/api/v1/configs/base", json=config_body("receivers: {otlp: {}}\n"))
    assert (await poll(agent, 3)).HasField("remote_config")


async def test_websocket_agent_gets_a_change_pushed(admin: httpx2.AsyncClient, node: Node) -> None:
    agent = uid(9)
    async with ws_agent.agent_socket(node.opamp_url) as ws:
        first = await ws_agent.exchange(ws, ws_agent.report(agent, 0, capabilities=ACCEPTS))
        assert not first.HasField("remote_config")
        started = time.monotonic()
        assert (await admin.put("/api/v1/configs/base", json=config_body())).status_code == 201
        pushed = await ws_agent.recv(ws, timeout=5.0)
        assert pushed.remote_config.config.config_map["collector.yaml"].body == b"receivers: {}\n"
        assert time.monotonic() - started < 5.0
        status = ws_agent.heartbeat(agent, 1, capabilities=ACCEPTS)
        status.remote_config_status.last_remote_config_hash = pushed.remote_config.config_hash
        status.remote_config_status.status = pb.RemoteConfigStatuses_APPLIED
        assert not (await ws_agent.exchange(ws, status)).HasField("remote_config")
        # An unrelated config change pushes nothing to this agent.
        other = config_body(selector={"match": {"service.name": "fluent-bit"}})
        await admin.put("/api/v1/configs/other", json=other)
        await admin.put("/api/v1/configs/base", json=config_body("exporters: {}\n"))
        changed = await ws_agent.recv(ws, timeout=5.0)
        assert changed.remote_config.config.config_map["collector.yaml"].body == b"exporters: {}\n"
        with pytest.raises(asyncio.TimeoutError):
            await ws_agent.recv(ws, timeout=0.3)


async def test_metrics_count_offers_and_reports(admin: httpx2.AsyncClient, poll: Poll) -> None:
    await admin.put("/api/v1/configs/base", json=config_body())
    digest = (await poll(uid(11), 0)).remote_config.config_hash
    await poll(uid(11), 1, config_status=(digest, pb.RemoteConfigStatuses_APPLIED))
    text = (await admin.get("/metrics")).text
    assert 'opamp_gateway_pushes_total{delivery="reply",kind="config"} 1.0' in text
    assert 'opamp_gateway_remote_config_reports_total{status="APPLIED"} 1.0' in text
    assert "opamp_gateway_configs 1.0" in text


async def test_integral_floats_and_lone_surrogates(admin: httpx2.AsyncClient) -> None:
    ok = await admin.put("/api/v1/configs/f", json=config_body(priority=3.0, version=0.0))
    assert ok.status_code == 201 and ok.json()["priority"] == 3
    assert (await admin.put("/api/v1/configs/g", json=config_body(priority=3.5))).status_code == 400
    surrogate = b'{"selector": {}, "files": {"a": {"body": "\\ud800"}}}'
    response = await admin.put("/api/v1/configs/h", content=surrogate, headers=JSON)
    assert response.status_code == 400
    assert "lone surrogate" in response.json()["error"]["message"]
