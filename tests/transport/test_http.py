from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from gateway.fleet.agent import AgentWrite
from gateway.opamp import capabilities as caps
from gateway.proto import anyvalue_pb2 as av, opamp_pb2 as pb
from gateway.store.writer import WriterFull
from gateway.transport.http import accepts_gzip
from gateway.transport.http_wire import GZIP_MIN_BYTES
from tests.support.servers import Node, run_node

pytestmark = pytest.mark.anyio

UID = bytes(range(16))
PROTOBUF = {"Content-Type": "application/x-protobuf"}


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with run_node(tmp_path, max_message_bytes=64 * 1024) as running:
        yield running


@pytest.fixture
async def client(node: Node) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=node.opamp_url) as c:
        yield c


def report(seq: int = 0, uid: bytes = UID) -> pb.AgentToServer:
    msg = pb.AgentToServer(instance_uid=uid, sequence_num=seq, capabilities=caps.REPORTS_STATUS)
    msg.agent_description.identifying_attributes.add(
        key="service.name", value=av.AnyValue(string_value="otelcol-contrib")
    )
    return msg


async def post(client: httpx2.AsyncClient, body: bytes, **headers: str) -> httpx2.Response:
    return await client.post("/v1/opamp", content=body, headers={**PROTOBUF, **headers})


def reply_of(response: httpx2.Response) -> pb.ServerToAgent:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-protobuf"
    return pb.ServerToAgent.FromString(response.content)


async def test_report_gets_a_reply_and_enrolls(client: httpx2.AsyncClient, node: Node) -> None:
    reply = reply_of(await post(client, report().SerializeToString()))
    assert reply.instance_uid == UID
    assert reply.capabilities == caps.server_capabilities(
        offers_settings=True
    )  # --agent-heartbeat-interval 30
    assert not reply.HasField("error_response")
    stored = await node.services.store.get(UID)  # enrollment is durable before the reply
    assert stored is not None and stored.description is not None


async def test_heartbeats_need_no_full_state(client: httpx2.AsyncClient) -> None:
    reply_of(await post(client, report(0).SerializeToString()))
    for seq in range(1, 6):
        hb = pb.AgentToServer(instance_uid=UID, sequence_num=seq, capabilities=caps.REPORTS_STATUS)
        assert reply_of(await post(client, hb.SerializeToString())).flags == 0


async def test_a_node_alone_keeps_http_heartbeats_in_memory_until_they_matter(
    client: httpx2.AsyncClient, node: Node
) -> None:
    reply_of(await post(client, report(0).SerializeToString()))
    for seq in range(1, 4):
        hb = pb.AgentToServer(instance_uid=UID, sequence_num=seq, capabilities=caps.REPORTS_STATUS)
        assert reply_of(await post(client, hb.SerializeToString())).flags == 0
    writer, store = node.services.writer, node.services.store
    await writer.flush()
    stored = await store.get(UID)
    assert stored is not None and stored.sequence_num == 0 and writer.held == 1
    # The liveness sweep (here told they are old enough), or the node's stop, hands them over.
    assert node.services.liveness.sweep(persist_after=0.0) == 1
    await writer.flush()
    stored = await store.get(UID)
    assert stored is not None and stored.sequence_num == 3


async def test_gzip_request_body(client: httpx2.AsyncClient) -> None:
    body = gzip.compress(report().SerializeToString())
    reply = reply_of(await post(client, body, **{"Content-Encoding": "gzip"}))
    assert reply.instance_uid == UID and not reply.HasField("error_response")


def _yaml_receivers(count: int) -> str:
    return "receivers:\n" + "".join(f"  otlp/{i}: {{}}\n" for i in range(count))


async def test_gzip_reply_when_accepted(tmp_path: Path) -> None:
    # A reply worth compressing: it carries a remote config of a few KB.
    config = {
        "selector": {"match": {"service.name": "otelcol-contrib"}},
        "files": {"collector.yaml": {"content_type": "text/yaml", "body": _yaml_receivers(200)}},
    }
    msg = report()
    msg.capabilities |= caps.ACCEPTS_REMOTE_CONFIG
    async with (
        run_node(tmp_path, max_config_bytes=16 * 1024) as node,
        httpx2.AsyncClient(base_url=node.admin_url) as admin,
        httpx2.AsyncClient(base_url=node.opamp_url, headers={"Accept-Encoding": "gzip"}) as c,
    ):
        put = await admin.put("/api/v1/configs/big", json=config)
        assert put.status_code in (200, 201), put.text
        response = await c.post("/v1/opamp", content=msg.SerializeToString(), headers=PROTOBUF)
    assert response.headers.get("content-encoding") == "gzip"
    # The client inflated the body; Content-Length counts the bytes on the wire.
    reply = pb.ServerToAgent.FromString(response.content)
    assert reply.instance_uid == UID and reply.HasField("remote_config")
    assert int(response.headers["content-length"]) < len(response.content)


async def test_small_reply_is_not_gzipped(node: Node) -> None:
    # gzip would make a 20-byte reply longer; it goes out plain even if gzip is accepted.
    async with httpx2.AsyncClient(base_url=node.opamp_url, headers={"Accept-Encoding": "gzip"}) as c:
        response = await c.post("/v1/opamp", content=report().SerializeToString(), headers=PROTOBUF)
    assert "content-encoding" not in response.headers
    assert len(response.content) < GZIP_MIN_BYTES
    assert pb.ServerToAgent.FromString(response.content).instance_uid == UID


async def test_no_gzip_reply_when_refused(client: httpx2.AsyncClient) -> None:
    response = await post(client, report().SerializeToString(), **{"Accept-Encoding": "gzip;q=0, identity"})
    assert "content-encoding" not in response.headers
    assert pb.ServerToAgent.FromString(response.content).instance_uid == UID


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", True),
        ("deflate, gzip;q=0.5", True),
        ("gzip;q=0", False),
        ("identity", False),
        ("", False),
        ("*", True),
        ("*;q=0", False),
        ("gzip;q=0, *", False),
        ("GZIP;Q=1.0", True),
        ("gzip;q=bogus", False),
    ],
)
def test_accepts_gzip(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected


async def test_wrong_content_type_is_415(client: httpx2.AsyncClient) -> None:
    response = await client.post(
        "/v1/opamp", content=report().SerializeToString(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 415
    assert "application/x-protobuf" in response.text


async def test_content_type_parameters_are_accepted(client: httpx2.AsyncClient) -> None:
    response = await client.post(
        "/v1/opamp",
        content=report().SerializeToString(),
        headers={"Content-Type": "application/x-protobuf; charset=binary"},
    )
    assert reply_of(response).instance_uid == UID


async def test_unsupported_content_encoding_is_415(client: httpx2.AsyncClient) -> None:
    response = await post(client, report().SerializeToString(), **{"Content-Encoding": "br"})
    assert response.status_code == 415
    assert "br" in response.text


async def test_undecodable_body_is_400(client: httpx2.AsyncClient) -> None:
    response = await post(client, b"\xff\xff\xff\xff")
    assert response.status_code == 400
    assert "AgentToServer" in response.text


async def test_bad_gzip_is_400(client: httpx2.AsyncClient) -> None:
    response = await post(client, b"not gzip at all", **{"Content-Encoding": "gzip"})
    assert response.status_code == 400
    assert "gzip" in response.text


async def test_truncated_gzip_is_400(client: httpx2.AsyncClient) -> None:
    body = gzip.compress(report().SerializeToString())[:-12]
    response = await post(client, body, **{"Content-Encoding": "gzip"})
    assert response.status_code == 400


async def test_oversized_body_is_413(client: httpx2.AsyncClient) -> None:
    msg = report()
    msg.effective_config.config_map.config_map["big"].body = b"x" * (64 * 1024)
    response = await post(client, msg.SerializeToString())
    assert response.status_code == 413


async def test_oversized_after_decompression_is_413(client: httpx2.AsyncClient) -> None:
    msg = report()
    msg.effective_config.config_map.config_map["big"].body = b"x" * (1024 * 1024)
    body = gzip.compress(msg.SerializeToString())
    assert len(body) < 64 * 1024  # small on the wire, a bomb once inflated
    response = await post(client, body, **{"Content-Encoding": "gzip"})
    assert response.status_code == 413


async def test_bad_uid_is_bad_request_with_200(client: httpx2.AsyncClient) -> None:
    msg = report(uid=b"short")
    reply = reply_of(await post(client, msg.SerializeToString()))
    assert reply.error_response.type == pb.ServerErrorResponseType_BadRequest
    assert reply.instance_uid == b"short"


async def test_a_short_temporary_uid_with_request_instance_uid_gets_a_new_uid(
    client: httpx2.AsyncClient, node: Node
) -> None:
    msg = report(uid=b"tmp")
    msg.flags = caps.REQUEST_INSTANCE_UID
    reply = reply_of(await post(client, msg.SerializeToString()))
    assert not reply.HasField("error_response") and reply.instance_uid == b"tmp"
    new_uid = reply.agent_identification.new_instance_uid
    assert len(new_uid) == 16 and new_uid[6] >> 4 == 7  # UUIDv7
    assert await node.services.store.get(new_uid) is not None


async def test_a_connection_settings_request_gets_bad_request(client: httpx2.AsyncClient, node: Node) -> None:
    reply_of(await post(client, report(0).SerializeToString()))
    msg = pb.AgentToServer(instance_uid=UID, sequence_num=1, capabilities=caps.REPORTS_STATUS)
    msg.connection_settings_request.opamp.certificate_request.csr = b"-----BEGIN CERTIFICATE REQUEST-----"
    reply = reply_of(await post(client, msg.SerializeToString()))
    assert reply.error_response.type == pb.ServerErrorResponseType_BadRequest
    assert "certificates" in reply.error_response.error_message
    # The agent's record still moved on: its next message is in step.
    hb = pb.AgentToServer(instance_uid=UID, sequence_num=2, capabilities=caps.REPORTS_STATUS)
    assert reply_of(await post(client, hb.SerializeToString())).flags == 0


async def test_empty_body_is_a_bad_request(client: httpx2.AsyncClient) -> None:
    reply = reply_of(await post(client, b""))
    assert reply.error_response.type == pb.ServerErrorResponseType_BadRequest


async def test_get_is_not_allowed(client: httpx2.AsyncClient) -> None:
    assert (await client.get("/v1/opamp")).status_code == 405


async def test_full_writer_sheds_with_503(
    client: httpx2.AsyncClient, node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(_write: AgentWrite) -> None:
        raise WriterFull(1)

    reply_of(await post(client, report(0).SerializeToString()))
    monkeypatch.setattr(node.services.writer, "submit", full)
    # A node alone holds plain heartbeats back from the queue; this one goes to it.
    monkeypatch.setattr(node.services.writer, "hold", lambda _write: False)
    hb = pb.AgentToServer(instance_uid=UID, sequence_num=1, capabilities=caps.REPORTS_STATUS)
    response = await post(client, hb.SerializeToString())
    assert response.status_code == 503
    assert 30 <= int(response.headers["retry-after"]) <= 60


async def test_health_endpoints(client: httpx2.AsyncClient, node: Node) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    node.services.drain.draining = True
    assert (await client.get("/readyz")).status_code == 503


async def test_reply_over_the_limit_is_replaced_by_an_error(tmp_path: Path) -> None:
    async with (
        run_node(tmp_path, max_message_bytes=32) as small,
        httpx2.AsyncClient(base_url=small.opamp_url) as c,
    ):
        msg = pb.AgentToServer(instance_uid=UID, flags=caps.REQUEST_INSTANCE_UID)
        assert len(msg.SerializeToString()) <= 32
        reply = reply_of(await post(c, msg.SerializeToString()))
    assert reply.error_response.type == pb.ServerErrorResponseType_Unknown
    assert "size limit" in reply.error_response.error_message
    assert not reply.HasField("agent_identification")
