"""Staged rollouts through the admin API over real sockets, with HTTP agents on one in-process node:
a PUT of a staged config starts a rollout, the controller (ticked by hand here) walks it through its
waves or halts it, and GET/pause/resume/rollback answer with the rollout."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from gateway.fleet.waves import in_wave
from gateway.node.rollouts import RolloutController
from gateway.proto import anyvalue_pb2 as av, opamp_pb2 as pb
from gateway.store.base import StoredRollout, StoreUnavailable
from tests.api.test_configs_api import ACCEPTS, config_body
from tests.support.memory_store import MemoryStore
from tests.support.servers import Node, run_node
from tests.support.waiting import uid

pytestmark = pytest.mark.anyio

AGENTS = [uid(n) for n in range(1, 21)]
STAGED = {"strategy": "staged", "waves": [25, 60], "min_wave_seconds": 0, "max_failure_ratio": 0.1}
APPLIED, FAILED = pb.RemoteConfigStatuses_APPLIED, pb.RemoteConfigStatuses_FAILED


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    # The controller's timer never fires: each test ticks it.
    async with run_node(tmp_path, offline_after=60.0, rollout_interval=3600.0) as running:
        yield running


@pytest.fixture
async def admin(node: Node) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=node.admin_url) as c:
        yield c


@pytest.fixture
async def fleet(node: Node) -> AsyncIterator[Fleet]:
    async with httpx2.AsyncClient(base_url=node.opamp_url) as c:
        yield Fleet(c)


class Fleet:
    """HTTP agents that report what they last received as `status` (APPLIED, or FAILED for `bad`)."""

    def __init__(self, client: httpx2.AsyncClient) -> None:
        self._client = client
        self.seq = 0
        self.bodies: dict[bytes, bytes] = {}
        self._hashes: dict[bytes, bytes] = {}

    async def _poll(self, agent: bytes, config_status: tuple[bytes, int]) -> pb.ServerToAgent:
        msg = pb.AgentToServer(instance_uid=agent, sequence_num=self.seq, capabilities=ACCEPTS)
        if self.seq == 0:
            msg.agent_description.identifying_attributes.add(
                key="service.name", value=av.AnyValue(string_value="otelcol-contrib")
            )
        msg.remote_config_status.last_remote_config_hash = config_status[0]
        msg.remote_config_status.status = config_status[1]  # type: ignore[assignment]
        response = await self._client.post(
            "/v1/opamp", content=msg.SerializeToString(), headers={"Content-Type": "application/x-protobuf"}
        )
        assert response.status_code == 200, response.text
        return pb.ServerToAgent.FromString(response.content)

    async def round(self, bad: bytes | None = None) -> None:
        for agent in AGENTS:
            status = FAILED if bad is not None and self.bodies.get(agent) == bad else APPLIED
            reported = (self._hashes.get(agent, b""), status if agent in self._hashes else 0)
            response = await self._poll(agent, reported)
            if response.HasField("remote_config"):
                self._hashes[agent] = response.remote_config.config_hash
                self.bodies[agent] = response.remote_config.config.config_map["collector.yaml"].body
        self.seq += 1

    def having(self, body: bytes) -> set[bytes]:
        return {a for a, b in self.bodies.items() if b == body}


async def _staged_v2(admin: httpx2.AsyncClient, fleet: Fleet, **strategy: Any) -> dict[str, Any]:
    assert (await admin.put("/api/v1/configs/base", json=config_body("v: 1\n"))).status_code == 201
    await fleet.round()
    await fleet.round()
    assert fleet.having(b"v: 1\n") == set(AGENTS)
    put = await admin.put("/api/v1/configs/base", json=config_body("v: 2\n", rollout={**STAGED, **strategy}))
    assert put.status_code == 200 and put.json()["rollout"]["strategy"] == "staged"
    response = await admin.get("/api/v1/configs/base/rollout")
    assert response.status_code == 200
    rollout: dict[str, Any] = response.json()
    return rollout


def _controller(node: Node) -> RolloutController:
    return node.services.rollouts


async def test_a_good_version_walks_through_every_wave(
    node: Node, admin: httpx2.AsyncClient, fleet: Fleet
) -> None:
    started = await _staged_v2(admin, fleet)
    assert (started["version"], started["previous_version"], started["state"]) == (2, 1, "progressing")
    assert (started["wave"], started["waves"]) == (0, [25, 60, 100])
    assert started["targeted"] == 20 and started["events"][0]["reason"].startswith("version 2 started")
    seen: list[int] = []
    for wave, percent in enumerate((25, 60)):
        await fleet.round()
        first = {a for a in AGENTS if in_wave(a, 2, percent / 100)}
        # Exactly the wave's agents have the new version; the others keep the previous one.
        assert fleet.having(b"v: 2\n") == first
        assert fleet.having(b"v: 1\n") == set(AGENTS) - first
        await fleet.round()  # they report APPLIED
        state = (await admin.get("/api/v1/configs/base/rollout")).json()
        assert (state["wave"], state["in_wave"], state["applied"]) == (wave, len(first), len(first))
        seen.append(len(first))
        assert await _controller(node).tick() == 1
    await fleet.round()
    await fleet.round()
    assert await _controller(node).tick() == 1
    done = (await admin.get("/api/v1/configs/base/rollout")).json()
    assert done["state"] == "completed" and fleet.having(b"v: 2\n") == set(AGENTS)
    assert [e["state"] for e in done["events"]] == ["progressing", "progressing", "progressing", "completed"]
    assert await _controller(node).tick() == 0
    # The config's own `rollout` holds its strategy and its counts; it PUTs back unchanged.
    got = (await admin.get("/api/v1/configs/base")).json()
    assert got["rollout"]["strategy"] == "staged" and got["rollout"]["applied"] == 20
    again = await admin.put("/api/v1/configs/base", json=got)
    assert again.status_code == 200 and again.json()["version"] == 2
    text = (await admin.get("/metrics")).text
    assert 'opamp_gateway_rollout_changes_total{state="completed"} 1.0' in text
    assert 'opamp_gateway_rollouts{state="completed"} 1.0' in text
    assert 'opamp_gateway_rollouts{state="progressing"} 0.0' in text


async def test_a_failing_version_halts_and_rolls_back(
    node: Node, admin: httpx2.AsyncClient, fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    await _staged_v2(admin, fleet)
    await fleet.round()
    first = fleet.having(b"v: 2\n")
    assert first and len(first) < len(AGENTS)
    await fleet.round(bad=b"v: 2\n")  # the first wave reports FAILED
    state = (await admin.get("/api/v1/configs/base/rollout")).json()
    assert state["failed"] == len(first)
    assert await _controller(node).tick() == 1
    halted = (await admin.get("/api/v1/configs/base/rollout")).json()
    assert halted["state"] == "halted" and "rolled back to version 1" in halted["events"][-1]["reason"]
    logged = [r for r in caplog.records if r.name == "gateway.node.rollouts" and "halted" in r.getMessage()]
    assert [r.levelname for r in logged] == ["WARNING"]
    # Every agent is offered version 1 again; the later waves never saw version 2.
    await fleet.round()
    assert fleet.having(b"v: 1\n") == set(AGENTS)
    assert await _controller(node).tick() == 0
    text = (await admin.get("/metrics")).text
    assert 'opamp_gateway_rollout_changes_total{state="halted"} 1.0' in text
    # Nothing left to roll back to but an older version that is not kept.
    conflict = await admin.post("/api/v1/configs/base/rollout/rollback")
    assert conflict.status_code == 409 and "version 1 already" in conflict.json()["error"]["message"]


async def test_pause_resume_and_rollback(node: Node, admin: httpx2.AsyncClient, fleet: Fleet) -> None:
    await _staged_v2(admin, fleet)
    await fleet.round()
    await fleet.round()
    paused = await admin.post("/api/v1/configs/base/rollout/pause")
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    again = await admin.post("/api/v1/configs/base/rollout/pause")
    assert again.status_code == 409 and "only a progressing one pauses" in again.json()["error"]["message"]
    assert await _controller(node).tick() == 0  # a paused rollout stays at its wave
    resumed = await admin.post("/api/v1/configs/base/rollout/resume")
    assert resumed.status_code == 200 and (resumed.json()["state"], resumed.json()["wave"]) == (
        "progressing",
        0,
    )
    assert (await admin.post("/api/v1/configs/base/rollout/resume")).status_code == 409
    assert await _controller(node).tick() == 1
    assert (await admin.get("/api/v1/configs/base/rollout")).json()["wave"] == 1
    back = await admin.post("/api/v1/configs/base/rollout/rollback", json={})
    assert back.status_code == 200 and back.json()["state"] == "rolled_back"
    await fleet.round()
    assert fleet.having(b"v: 1\n") == set(AGENTS)
    # A later version starts from the last good one: version 1.
    await admin.put("/api/v1/configs/base", json=config_body("v: 3\n", rollout=STAGED))
    third = (await admin.get("/api/v1/configs/base/rollout")).json()
    assert (third["version"], third["previous_version"], third["state"]) == (3, 1, "progressing")
    chosen = await admin.post("/api/v1/configs/base/rollout/rollback", json={"version": 2.0})
    assert chosen.status_code == 200 and chosen.json()["previous_version"] == 2
    await fleet.round()
    assert fleet.having(b"v: 2\n") == set(AGENTS)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "body: not valid JSON"),
        (b"[]", "body: must be a JSON object"),
        (b'{"to": 1}', "to: unknown field"),
        (b'{"version": "1"}', "version: must be a positive integer"),
        (b'{"version": 0}', "version: must be a positive integer"),
        (b" " * 2000, "body: too large"),
    ],
)
async def test_a_bad_rollback_body_is_400(admin: httpx2.AsyncClient, body: bytes, message: str) -> None:
    response = await admin.post(
        "/api/v1/configs/base/rollout/rollback", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["error"]["message"].startswith(message)


async def test_errors_name_the_problem(admin: httpx2.AsyncClient) -> None:
    assert (await admin.get("/api/v1/configs/Bad/rollout")).json()["error"]["message"].startswith("name: ")
    assert (await admin.post("/api/v1/configs/Bad/rollout/pause")).status_code == 400
    missing = await admin.get("/api/v1/configs/base/rollout")
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "no config 'base'"
    await admin.put("/api/v1/configs/base", json=config_body())
    plain = await admin.post("/api/v1/configs/base/rollout/pause")
    assert (
        plain.status_code == 404
        and "has no rollout of its current version" in plain.json()["error"]["message"]
    )
    assert (await admin.get("/api/v1/configs/base/rollout")).status_code == 404
    bad = await admin.put(
        "/api/v1/configs/base", json=config_body(rollout={"strategy": "staged", "waves": [0]})
    )
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("rollout.waves[0]: ")
    await admin.put("/api/v1/configs/base", json=config_body("v: 2\n", rollout=STAGED))
    unkept = await admin.post("/api/v1/configs/base/rollout/rollback", json={"version": 9})
    assert (
        unkept.status_code == 409 and "version 9 of 'base' is not kept" in unkept.json()["error"]["message"]
    )


class _DownStore(MemoryStore):
    async def get_rollout(self, name: str) -> StoredRollout | None:
        raise StoreUnavailable("rollouts unreadable")


async def test_a_store_failure_is_503(tmp_path: Path) -> None:
    async with (
        run_node(tmp_path, store=_DownStore(), rollout_interval=3600.0) as node,
        httpx2.AsyncClient(base_url=node.admin_url) as c,
    ):
        # The config is stored; its rollout starts on the controller's next look.
        put = await c.put("/api/v1/configs/base", json=config_body(rollout=STAGED))
        assert put.status_code == 201
        for response in (
            await c.get("/api/v1/configs/base/rollout"),
            await c.post("/api/v1/configs/base/rollout/pause"),
        ):
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "store_unavailable"
