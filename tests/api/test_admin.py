from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx2
import pytest

from gateway.opamp import capabilities as caps
from gateway.proto import anyvalue_pb2 as av, opamp_pb2 as pb
from tests.support.servers import Node, run_node
from tests.support.waiting import uid

pytestmark = pytest.mark.anyio

Report = Callable[..., Awaitable[pb.ServerToAgent]]


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with run_node(tmp_path, offline_after=60.0) as running:
        yield running


@pytest.fixture
async def admin(node: Node) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=node.admin_url) as c:
        yield c


@pytest.fixture
async def send(node: Node) -> AsyncIterator[Report]:
    """Factory: send one AgentToServer for an agent over the real OpAMP port."""
    async with httpx2.AsyncClient(base_url=node.opamp_url) as c:

        async def _send(
            uid: bytes,
            seq: int = 0,
            name: str = "otelcol-contrib",
            version: str = "0.120.0",
            os_type: str = "linux",
            healthy: bool | None = None,
            disconnect: bool = False,
            extra: dict[str, av.AnyValue] | None = None,
        ) -> pb.ServerToAgent:
            msg = pb.AgentToServer(
                instance_uid=uid, sequence_num=seq, capabilities=caps.REPORTS_STATUS | caps.REPORTS_HEALTH
            )
            desc = msg.agent_description
            desc.identifying_attributes.add(key="service.name", value=av.AnyValue(string_value=name))
            desc.identifying_attributes.add(key="service.version", value=av.AnyValue(string_value=version))
            desc.non_identifying_attributes.add(key="os.type", value=av.AnyValue(string_value=os_type))
            for key, value in (extra or {}).items():
                desc.non_identifying_attributes.add(key=key, value=value)
            msg.health.healthy = healthy if healthy is not None else True
            if disconnect:
                msg.agent_disconnect.SetInParent()
            response = await c.post(
                "/v1/opamp",
                content=msg.SerializeToString(),
                headers={"Content-Type": "application/x-protobuf"},
            )
            assert response.status_code == 200
            return pb.ServerToAgent.FromString(response.content)

        yield _send


async def test_agent_json_has_every_documented_field(admin: httpx2.AsyncClient, send: Report) -> None:
    await send(uid(1))
    response = await admin.get(f"/api/v1/agents/{uuid.UUID(int=1)}")
    assert response.status_code == 200
    agent = response.json()
    assert agent["instance_uid"] == str(uuid.UUID(int=1))
    assert agent["status"] == "online"
    assert agent["enrolled_at"].endswith("Z") and agent["last_seen"].endswith("Z")
    assert agent["sequence_num"] == 0
    assert agent["capabilities"] == ["ReportsHealth", "ReportsStatus"]
    assert agent["description"] == {
        "identifying_attributes": {"service.name": "otelcol-contrib", "service.version": "0.120.0"},
        "non_identifying_attributes": {"os.type": "linux"},
    }
    assert agent["health"]["healthy"] is True
    assert agent["effective_config"] is None
    assert agent["remote_config"] is None
    assert agent["previous_instance_uids"] == []


async def test_attribute_value_types_are_preserved(admin: httpx2.AsyncClient, send: Report) -> None:
    kv = av.AnyValue()
    kv.kvlist_value.values.add(key="zone", value=av.AnyValue(string_value="eu-1"))
    arr = av.AnyValue()
    arr.array_value.values.add(int_value=1)
    arr.array_value.values.add(bool_value=True)
    extra = {
        "cores": av.AnyValue(int_value=8),
        "load": av.AnyValue(double_value=0.5),
        "blob": av.AnyValue(bytes_value=b"\x00\x01"),
        "cloud": kv,
        "list": arr,
        "nothing": av.AnyValue(),
    }
    await send(uid(2), extra=extra)
    attrs = (await admin.get(f"/api/v1/agents/{uuid.UUID(int=2)}")).json()["description"][
        "non_identifying_attributes"
    ]
    assert attrs["cores"] == 8 and attrs["load"] == 0.5 and attrs["blob"] == "AAE="
    assert attrs["cloud"] == {"zone": "eu-1"} and attrs["list"] == [1, True] and attrs["nothing"] is None


@pytest.mark.parametrize(
    "bad", ["not-a-uuid", "00000000000000000000000000000001", "{00000000-0000-0000-0000-000000000001}"]
)
async def test_bad_or_non_canonical_uid_is_404_json(admin: httpx2.AsyncClient, bad: str) -> None:
    response = await admin.get(f"/api/v1/agents/{bad}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_unknown_agent_is_404_json(admin: httpx2.AsyncClient) -> None:
    response = await admin.get(f"/api/v1/agents/{uuid.UUID(int=99)}")
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"code", "message"}


async def test_unknown_route_is_404_json(admin: httpx2.AsyncClient) -> None:
    response = await admin.get("/api/v1/nope")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


async def test_status_filter_and_statuses(admin: httpx2.AsyncClient, send: Report, node: Node) -> None:
    await send(uid(1))
    await send(uid(2), healthy=False)
    await send(uid(3))
    await send(uid(3), seq=1, disconnect=True)
    await send(uid(4))
    node.services.clock = lambda: __import__("time").time() + 30
    # uid 4 goes quiet past offline_after (60 s) as far as the API's clock is concerned
    await send(uid(1), seq=1)
    await send(uid(2), seq=1, healthy=False)
    node.services.clock = lambda: __import__("time").time() + 100
    await send(uid(1), seq=2)
    await send(uid(2), seq=2, healthy=False)
    # The list reads the store: hand it what a node alone on its file holds (the sweep would,
    # once the real clock had moved on as far as the API's).
    node.services.writer.release_held(math.inf)
    await node.services.writer.flush()

    async def uids(status: str) -> set[str]:
        body = (await admin.get("/api/v1/agents", params={"status": status})).json()
        return {a["instance_uid"] for a in body["agents"]}

    assert await uids("online") == {str(uuid.UUID(int=1))}
    assert await uids("unhealthy") == {str(uuid.UUID(int=2))}
    assert await uids("disconnected") == {str(uuid.UUID(int=3))}
    assert await uids("offline") == {str(uuid.UUID(int=4))}


async def test_text_search_and_attribute_filters(admin: httpx2.AsyncClient, send: Report) -> None:
    await send(uid(1), name="otelcol-contrib", os_type="linux")
    await send(uid(2), name="otelcol-k8s", os_type="windows")
    await send(uid(3), name="edot-node", os_type="linux")

    async def found(**params: str) -> set[int]:
        body = (await admin.get("/api/v1/agents", params=params)).json()
        return {uuid.UUID(a["instance_uid"]).int for a in body["agents"]}

    assert await found(q="OTELCOL") == {1, 2}
    assert await found(**{"attr.os.type": "linux"}) == {1, 3}
    assert await found(**{"attr.os.type": "linux", "attr.service.name": "edot-node"}) == {3}
    assert await found(q="otelcol", **{"attr.os.type": "linux"}) == {1}
    assert await found(**{"attr.os.type": "solaris"}) == set()


async def test_pagination_walks_every_agent_once(admin: httpx2.AsyncClient, send: Report) -> None:
    for n in range(1, 8):
        await send(uid(n))
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"limit": "3"} | ({"cursor": cursor} if cursor else {})
        body = (await admin.get("/api/v1/agents", params=params)).json()
        seen += [a["instance_uid"] for a in body["agents"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [str(uuid.UUID(int=n)) for n in range(1, 8)]


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "abc"}, "limit"),
        ({"limit": "5000"}, "limit"),
        ({"status": "sleeping"}, "status"),
        ({"cursor": "!!not-a-cursor!!"}, "cursor"),
        ({"colour": "red"}, "colour"),
        ({"attr.": "x"}, "attr"),
    ],
)
async def test_bad_query_is_400_naming_the_parameter(
    admin: httpx2.AsyncClient, params: dict[str, str], names: str
) -> None:
    response = await admin.get("/api/v1/agents", params=params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "bad_request" and names in error["message"]


async def test_fleet_summary(admin: httpx2.AsyncClient, send: Report) -> None:
    await send(uid(1), name="otelcol-contrib", version="0.120.0", os_type="linux")
    await send(uid(2), name="otelcol-contrib", version="0.121.0", os_type="linux")
    await send(uid(3), name="otelcol-contrib", version="0.121.0", os_type="windows", healthy=False)
    summary = (await admin.get("/api/v1/fleet/summary")).json()
    assert summary["total"] == 3
    assert summary["by_status"] == {"online": 2, "offline": 0, "disconnected": 0, "unhealthy": 1}
    assert summary["by_type_version"] == {"otelcol-contrib": {"0.120.0": 1, "0.121.0": 2}}
    assert summary["by_os"] == {"linux": 2, "windows": 1}


async def test_moved_agent_is_found_under_old_uid(admin: httpx2.AsyncClient, node: Node) -> None:
    async with httpx2.AsyncClient(base_url=node.opamp_url) as c:
        msg = pb.AgentToServer(instance_uid=uid(5), capabilities=caps.REPORTS_STATUS)
        msg.agent_description.SetInParent()
        await c.post(
            "/v1/opamp", content=msg.SerializeToString(), headers={"Content-Type": "application/x-protobuf"}
        )
        msg = pb.AgentToServer(instance_uid=uid(5), sequence_num=1, flags=caps.REQUEST_INSTANCE_UID)
        response = await c.post(
            "/v1/opamp", content=msg.SerializeToString(), headers={"Content-Type": "application/x-protobuf"}
        )
    new_uid = uuid.UUID(
        bytes=pb.ServerToAgent.FromString(response.content).agent_identification.new_instance_uid
    )
    assert new_uid.version == 7
    moved = (await admin.get(f"/api/v1/agents/{new_uid}")).json()
    assert moved["previous_instance_uids"] == [str(uuid.UUID(int=5))]
    via_old = (await admin.get(f"/api/v1/agents/{uuid.UUID(int=5)}")).json()
    assert via_old["instance_uid"] == str(new_uid) and via_old["moved_from"] == str(uuid.UUID(int=5))
    listed = (await admin.get("/api/v1/agents")).json()["agents"]
    assert [a["instance_uid"] for a in listed] == [str(new_uid)]


async def test_metrics_are_prometheus_text(admin: httpx2.AsyncClient, send: Report) -> None:
    await send(uid(1))
    response = await admin.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'opamp_gateway_messages_total{result="200",transport="http"} 1.0' in text
    assert 'opamp_gateway_agent_events_total{event="enrolled"} 1.0' in text
    assert 'protobuf_backend="upb"' in text
