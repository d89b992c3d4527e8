"""Remote configs across real gateway processes: one SQLite file, a real redis-server, raw agents.

The admin API of one node changes a config; agents connected to another node get it: pushed over
their WebSocket within a second while Redis carries the ConfigsChanged event, in the reply to their
next message while it does not.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
import pytest
from websockets.asyncio.client import ClientConnection

from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb
from harness.gateway import GatewayProcess
from harness.redis_server import RedisServer
from tests.integration.conftest import GatewayFactory
from tests.integration.nodes import admin_json, agent_json, eventually, new_uid, text, wait_bus
from tests.support.opamp_http import poll as http_poll
from tests.support.redis_server import RedisFactory
from tests.support.remote_config import expected_hash
from tests.support.ws import agent_socket, exchange, heartbeat, recv, report

pytestmark = pytest.mark.anyio

# The bound for a config change on one node to reach a WebSocket agent on another.
PUSH_DEADLINE = 1.0
# How long a test waits for a message it expects (generous: the machine is shared).
RECEIVE_TIMEOUT = 10.0
CONFIG_CAPS = (
    caps.REPORTS_STATUS | caps.REPORTS_HEALTH | caps.ACCEPTS_REMOTE_CONFIG | caps.REPORTS_REMOTE_CONFIG
)
SERVICE = "otelcol-contrib"

Send = Callable[[pb.AgentToServer], Awaitable[pb.ServerToAgent]]


class Agent:
    """A raw OpAMP agent over one transport (`send` is one exchange), keeping its sequence numbers."""

    def __init__(self, send: Send, uid: bytes | None = None, capabilities: int = CONFIG_CAPS) -> None:
        self.send = send
        self.uid = uid or new_uid()
        self.capabilities = capabilities
        self.seq = 0

    async def enroll(self, service: str = SERVICE) -> pb.ServerToAgent:
        msg = report(self.uid, self.seq, self.capabilities, service)
        if self.capabilities & caps.REPORTS_REMOTE_CONFIG:
            # It says it runs no remote config yet; without that the gateway asks before it offers one.
            msg.remote_config_status.status = pb.RemoteConfigStatuses_UNSET
        return await self.send(msg)

    async def heartbeat(self) -> pb.ServerToAgent:
        self.seq += 1
        return await self.send(heartbeat(self.uid, self.seq, self.capabilities))

    async def report_config(
        self, config_hash: bytes, status: pb.RemoteConfigStatuses, error: str = ""
    ) -> pb.ServerToAgent:
        self.seq += 1
        msg = heartbeat(self.uid, self.seq, self.capabilities)
        msg.remote_config_status.last_remote_config_hash = config_hash
        msg.remote_config_status.status = status
        msg.remote_config_status.error_message = error
        reply = await self.send(msg)
        assert not reply.HasField("error_response"), reply
        return reply


def ws_agent(ws: ClientConnection, capabilities: int = CONFIG_CAPS) -> Agent:
    async def send(msg: pb.AgentToServer) -> pb.ServerToAgent:
        return await exchange(ws, msg, RECEIVE_TIMEOUT)

    return Agent(send, capabilities=capabilities)


def http_agent(http: httpx2.AsyncClient, gateway: GatewayProcess) -> Agent:
    async def send(msg: pb.AgentToServer) -> pb.ServerToAgent:
        return await http_poll(http, gateway.opamp_url, msg)

    return Agent(send)


def config_body(
    files: dict[str, str],
    *,
    match: dict[str, str] | None = None,
    instance_uids: list[bytes] | None = None,
    priority: int = 0,
) -> dict[str, Any]:
    selector: dict[str, Any] = {}
    if match is not None:
        selector["match"] = match
    if instance_uids is not None:
        selector["instance_uids"] = [text(uid) for uid in instance_uids]
    return {
        "selector": selector,
        "priority": priority,
        "files": {name: {"content_type": "text/yaml", "body": body} for name, body in files.items()},
    }


async def put_config(gateway: GatewayProcess, name: str, body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = await admin_json(
        gateway, "PUT", f"/api/v1/configs/{name}", expect=(200, 201), json=body
    )
    return config


async def delete_config(gateway: GatewayProcess, name: str) -> None:
    await admin_json(gateway, "DELETE", f"/api/v1/configs/{name}", expect=204)


async def rollout(gateway: GatewayProcess, name: str) -> dict[str, int]:
    config: dict[str, Any] = await admin_json(gateway, "GET", f"/api/v1/configs/{name}")
    counts: dict[str, int] = config["rollout"]
    return counts


async def listed(gateway: GatewayProcess, config: str, status: str | None = None) -> set[str]:
    params = {"config": config, "limit": "1000"}
    if status is not None:
        params["config_status"] = status
    body = await admin_json(gateway, "GET", "/api/v1/agents", params=params)
    assert body["next_cursor"] is None
    return {agent["instance_uid"] for agent in body["agents"]}


async def expect_config(
    ws: ClientConnection, uid: bytes, timeout: float = RECEIVE_TIMEOUT
) -> pb.AgentRemoteConfig:
    """The next message on the socket: a push carrying a remote config (and nothing else to act on)."""
    pushed = await recv(ws, timeout)
    assert pushed.instance_uid == uid
    assert pushed.HasField("remote_config"), f"expected a remote config, got {pushed}"
    assert not pushed.HasField("error_response") and not pushed.HasField("command")
    return pushed.remote_config


def files_of(config: pb.AgentRemoteConfig) -> dict[str, str]:
    return {name: f.body.decode() for name, f in config.config.config_map.items()}


async def config_sync(gateway: GatewayProcess, uid: bytes) -> dict[str, Any]:
    sync: dict[str, Any] = (await agent_json(gateway, uid))["config_sync"]
    return sync


async def test_config_put_on_one_node_reaches_a_websocket_agent_on_another_within_a_second(
    gateways: GatewayFactory, shared_redis: RedisServer
) -> None:
    a = gateways("node-a", shared_redis.url)
    b = gateways("node-b", shared_redis.url)
    # One admin client for all the PUTs: a new client per request would time its own set-up too.
    async with (
        agent_socket(a.opamp_base_url) as ws,
        httpx2.AsyncClient(base_url=b.admin_url, trust_env=False) as admin,
    ):
        agent = ws_agent(ws)
        assert not (await agent.enroll()).HasField("remote_config")
        latencies = []
        for version in range(1, 11):
            body = f"receivers: {{otlp: {{}}}}\n# version {version}\n"
            spec = config_body({"collector.yaml": body}, match={"service.name": SERVICE})
            started = time.monotonic()
            response = await admin.put("/api/v1/configs/collector", json=spec)
            pushed = await expect_config(ws, agent.uid)
            latencies.append(time.monotonic() - started)
            assert response.status_code == (201 if version == 1 else 200), response.text
            assert response.json()["version"] == version
            assert files_of(pushed) == {"collector.yaml": body}
            assert pushed.config.config_map["collector.yaml"].content_type == "text/yaml"
            assert pushed.config_hash == expected_hash({"collector.yaml": ("text/yaml", body.encode())})
            # Applied: the reply has nothing more to send, and both nodes show it in sync.
            assert not (
                await agent.report_config(pushed.config_hash, pb.RemoteConfigStatuses_APPLIED)
            ).HasField("remote_config")
        median, worst = statistics.median(latencies) * 1000, max(latencies) * 1000
        print(f"\nconfig PUT on node-b to a socket on node-a: median {median:.1f} ms, max {worst:.1f} ms")
        assert max(latencies) < PUSH_DEADLINE, f"push latencies (s): {latencies}"

        for node in (a, b):
            sync = await config_sync(node, agent.uid)
            assert sync == {
                "status": "applied",
                "in_sync": True,
                "desired_hash": pushed.config_hash.hex(),
                "reported_hash": pushed.config_hash.hex(),
                "configs": ["collector"],
            }
            counts = await rollout(node, "collector")
            assert counts == {
                "strategy": "all",
                "matched": 1,
                "applied": 1,
                "applying": 0,
                "failed": 0,
                "pending": 0,
                "unsupported": 0,
                "offline": 0,
                "disconnected": 0,
            }
        # Heartbeats after the APPLIED report carry no config.
        assert not (await agent.heartbeat()).HasField("remote_config")


async def test_with_redis_down_a_config_reaches_agents_on_their_next_message(
    gateways: GatewayFactory, redis_factory: RedisFactory
) -> None:
    redis = redis_factory()
    # A long refresh interval: only the agents' own messages can bring the change to node-a.
    a = gateways("node-a", redis.url, config_refresh_interval=3600)
    b = gateways("node-b", redis.url, config_refresh_interval=3600)
    async with agent_socket(a.opamp_base_url) as ws, httpx2.AsyncClient(trust_env=False) as http:
        agent, polling = ws_agent(ws), http_agent(http, a)
        await agent.enroll()
        await polling.enroll()

        redis.kill()
        for gateway in (a, b):
            await wait_bus(gateway, "down")
        assert not (await agent.heartbeat()).HasField("remote_config")
        body = "exporters: {debug: {}}\n"
        await put_config(
            b, "collector", config_body({"collector.yaml": body}, match={"service.name": SERVICE})
        )
        assert (await config_sync(b, agent.uid))["status"] == "pending"
        # Nothing is pushed without the bus (node-a checks its configs at most once a second, and
        # only when a message arrives: this wait lets that second pass).
        with pytest.raises(TimeoutError):
            await recv(ws, 1.5)

        # The next heartbeat's reply carries the config, on both transports.
        reply = await agent.heartbeat()
        assert reply.HasField("remote_config"), reply
        assert files_of(reply.remote_config) == {"collector.yaml": body}
        polled = await polling.heartbeat()
        assert polled.HasField("remote_config") and polled.remote_config == reply.remote_config
        # Offered, and not offered again while the agent has not reported.
        assert not (await agent.heartbeat()).HasField("remote_config")
        await agent.report_config(reply.remote_config.config_hash, pb.RemoteConfigStatuses_APPLIED)
        await polling.report_config(polled.remote_config.config_hash, pb.RemoteConfigStatuses_APPLIED)
        for uid in (agent.uid, polling.uid):
            sync = await config_sync(b, uid)
            assert (
                sync["status"] == "applied" and sync["desired_hash"] == reply.remote_config.config_hash.hex()
            )
        assert (await rollout(b, "collector"))["applied"] == 2


async def test_a_change_made_while_redis_was_down_is_pushed_when_it_returns(
    gateways: GatewayFactory, redis_factory: RedisFactory
) -> None:
    redis = redis_factory()
    a = gateways("node-a", redis.url, config_refresh_interval=3600)
    b = gateways("node-b", redis.url, config_refresh_interval=3600)
    async with agent_socket(a.opamp_base_url) as ws:
        agent = ws_agent(ws)
        await agent.enroll()
        redis.kill()
        for gateway in (a, b):
            await wait_bus(gateway, "down")
        body = "processors: {batch: {}}\n"
        await put_config(
            b, "collector", config_body({"collector.yaml": body}, match={"service.name": SERVICE})
        )
        # The agent stays silent: the ConfigsChanged event was lost, and no message of its own
        # asks node-a to look. When Redis is back, node-a catches up and pushes.
        redis.start()
        pushed = await expect_config(ws, agent.uid)
        assert files_of(pushed) == {"collector.yaml": body}
        await agent.report_config(pushed.config_hash, pb.RemoteConfigStatuses_APPLIED)
        assert (await config_sync(a, agent.uid))["status"] == "applied"


async def test_a_websocket_agent_sees_each_change_and_deletion_made_on_another_node(
    gateways: GatewayFactory, shared_redis: RedisServer
) -> None:
    a = gateways("node-a", shared_redis.url)
    b = gateways("node-b", shared_redis.url)
    async with agent_socket(a.opamp_base_url) as ws:
        agent = ws_agent(ws)
        await agent.enroll()

        async def expect(files: dict[str, str], configs: list[str]) -> bytes:
            pushed = await expect_config(ws, agent.uid)
            assert files_of(pushed) == files

            # node-a records the offer through its writer (not durably): node-b sees it within a flush.
            async def offer_recorded() -> bool:
                return bool((await config_sync(b, agent.uid))["status"] == "applying")

            await eventually(offer_recorded, what="node-b to see the offer")
            sync = await config_sync(b, agent.uid)
            assert sync["status"] == "applying" and sync["configs"] == configs
            assert sync["desired_hash"] == pushed.config_hash.hex()
            await agent.report_config(pushed.config_hash, pb.RemoteConfigStatuses_APPLIED)
            return pushed.config_hash

        base = config_body({"collector.yaml": "base: 1\n"}, match={"service.name": SERVICE})
        await put_config(b, "base", base)
        base_hash = await expect({"collector.yaml": "base: 1\n"}, ["base"])

        # A higher-priority config for this one agent wins the file it shares with the base.
        pin = config_body(
            {"collector.yaml": "pinned: true\n", "extra.yaml": "x: 1\n"},
            instance_uids=[agent.uid],
            priority=10,
        )
        await put_config(b, "pin", pin)
        await expect({"collector.yaml": "pinned: true\n", "extra.yaml": "x: 1\n"}, ["pin"])

        # Deleting it brings the base back: the same content, so the same hash as before.
        await delete_config(b, "pin")
        assert await expect({"collector.yaml": "base: 1\n"}, ["base"]) == base_hash

        base["files"]["collector.yaml"]["body"] = "base: 2\n"
        assert (await put_config(b, "base", base))["version"] == 2
        await expect({"collector.yaml": "base: 2\n"}, ["base"])
        assert (await config_sync(a, agent.uid))["status"] == "applied"

        # No config left: nothing is sent (never an empty config), and the agent has none desired.
        await delete_config(b, "base")

        async def nothing_desired() -> bool:
            return (await config_sync(a, agent.uid))["desired_hash"] is None

        await eventually(nothing_desired, what="node-a to drop the deleted config")
        assert not (await agent.heartbeat()).HasField("remote_config")
        sync = await config_sync(a, agent.uid)
        assert sync["status"] == "none" and sync["configs"] == [] and sync["in_sync"] is False


async def test_a_config_reported_failed_is_not_sent_again(gateways: GatewayFactory) -> None:
    # Offers unanswered for a second are sent again: the control agent shows that time has passed.
    gateway = gateways("node-a", config_resend_after=1)
    async with (
        agent_socket(gateway.opamp_base_url) as failing_ws,
        agent_socket(gateway.opamp_base_url) as silent_ws,
    ):
        failing, silent = ws_agent(failing_ws), ws_agent(silent_ws)
        await failing.enroll()
        await silent.enroll()
        await put_config(
            gateway, "collector", config_body({"collector.yaml": "bad: [\n"}, match={"service.name": SERVICE})
        )
        offered = await expect_config(failing_ws, failing.uid)
        assert await expect_config(silent_ws, silent.uid) == offered

        reply = await failing.report_config(
            offered.config_hash, pb.RemoteConfigStatuses_FAILED, "yaml: line 1"
        )
        assert not reply.HasField("remote_config")
        await asyncio.sleep(1.2)
        assert (await silent.heartbeat()).remote_config == offered  # resent: no report within a second
        assert not (await failing.heartbeat()).HasField("remote_config")  # never again after FAILED

        agent = await agent_json(gateway, failing.uid)
        assert agent["remote_config"] == {
            "status": "FAILED",
            "last_remote_config_hash": offered.config_hash.hex(),
            "error_message": "yaml: line 1",
        }
        assert agent["config_sync"]["status"] == "failed" and not agent["config_sync"]["in_sync"]
        counts = await rollout(gateway, "collector")
        assert (counts["failed"], counts["applying"], counts["matched"]) == (1, 1, 2)
        assert await listed(gateway, "collector", "failed") == {text(failing.uid)}

    # Nor on a new connection, which does not wait for an unanswered offer's timeout.
    async with agent_socket(gateway.opamp_base_url) as ws:
        failing.send = ws_agent(ws).send
        assert not (await failing.heartbeat()).HasField("remote_config")
        # A changed config is a new offer, failure or not.
        fixed = await put_config(
            gateway,
            "collector",
            config_body({"collector.yaml": "good: []\n"}, match={"service.name": SERVICE}),
        )
        assert fixed["version"] == 2
        pushed = await expect_config(ws, failing.uid)
        assert files_of(pushed) == {"collector.yaml": "good: []\n"}
        await failing.report_config(pushed.config_hash, pb.RemoteConfigStatuses_APPLIED)
        assert (await config_sync(gateway, failing.uid))["status"] == "applied"


async def test_rollout_counts_on_every_node_after_agents_apply(
    gateways: GatewayFactory, shared_redis: RedisServer
) -> None:
    a = gateways("node-a", shared_redis.url)
    b = gateways("node-b", shared_redis.url)
    sockets = [agent_socket(a.opamp_base_url) for _ in range(4)] + [agent_socket(b.opamp_base_url)]
    async with (
        sockets[0] as ws_applies,
        sockets[1] as ws_fails,
        sockets[2] as ws_unsupported,
        sockets[3] as ws_silent,
        sockets[4] as ws_other,
        httpx2.AsyncClient(trust_env=False) as http,
    ):
        applies, fails, silent = ws_agent(ws_applies), ws_agent(ws_fails), ws_agent(ws_silent)
        unsupported = ws_agent(ws_unsupported, caps.REPORTS_STATUS | caps.REPORTS_HEALTH)
        other = ws_agent(ws_other)
        http_applies, http_pending = http_agent(http, b), http_agent(http, b)
        for agent in (applies, fails, unsupported, silent, http_applies, http_pending):
            await agent.enroll()
        await other.enroll("another-service")

        await put_config(
            b, "fleet", config_body({"collector.yaml": "fleet: 1\n"}, match={"service.name": SERVICE})
        )
        offered = await expect_config(ws_applies, applies.uid)
        assert await expect_config(ws_fails, fails.uid) == offered
        assert await expect_config(ws_silent, silent.uid) == offered
        await applies.report_config(offered.config_hash, pb.RemoteConfigStatuses_APPLIED)
        await fails.report_config(offered.config_hash, pb.RemoteConfigStatuses_FAILED, "no such receiver")
        polled = await http_applies.heartbeat()
        assert polled.remote_config == offered
        await http_applies.report_config(offered.config_hash, pb.RemoteConfigStatuses_APPLIED)
        # Neither the agent without AcceptsRemoteConfig nor the unmatched one was sent anything.
        assert not (await unsupported.heartbeat()).HasField("remote_config")
        assert not (await other.heartbeat()).HasField("remote_config")

        expected = {
            "strategy": "all",
            "matched": 6,
            "applied": 2,
            "applying": 1,
            "failed": 1,
            "pending": 1,
            "unsupported": 1,
            "offline": 0,
            "disconnected": 0,
        }
        by_status = {
            "applied": {text(applies.uid), text(http_applies.uid)},
            "applying": {text(silent.uid)},
            "failed": {text(fails.uid)},
            "pending": {text(http_pending.uid)},
            "unsupported": {text(unsupported.uid)},
        }
        for node in (a, b):

            async def counted(node: GatewayProcess = node) -> bool:
                # The offer to the silent agent is not a durable write: it reaches the store on a flush.
                return await rollout(node, "fleet") == expected

            await eventually(counted, what=f"{node.name}'s rollout counts to be {expected}")
            for status, uids in by_status.items():
                assert await listed(node, "fleet", status) == uids, status
            assert await listed(node, "fleet") == set().union(*by_status.values())
            assert text(other.uid) not in await listed(node, "fleet")
