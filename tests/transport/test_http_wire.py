"""POST /v1/opamp on the bare ASGI handler: bodies in pieces, early disconnects, header parsing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb
from gateway.transport.http_wire import Reply, RequestHeaders, protobuf_reply, request_headers, response_bytes
from tests.support.servers import Node, run_node

pytestmark = pytest.mark.anyio

UID = bytes(range(16))
LIMIT = 4096


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with run_node(tmp_path, max_message_bytes=LIMIT) as running:
        yield running


def _port(node: Node) -> int:
    return int(node.opamp_url.rsplit(":", 1)[1])


def _chunked(body: bytes, size: int) -> bytes:
    """`body` in HTTP/1.1 chunks of `size` bytes, with the terminating chunk."""
    parts = [
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


async def _raw_post(node: Node, head: bytes, body: bytes, pause: float = 0.0) -> bytes:
    """Send a request head and its body (after `pause`, so the body arrives in a later read) on a raw
    socket; the status line and headers of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(node))
    try:
        writer.write(head)
        await writer.drain()
        if pause:
            await asyncio.sleep(pause)
        writer.write(body)
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()


HEAD_CHUNKED = (
    b"POST /v1/opamp HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/x-protobuf\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


async def test_a_body_in_many_pieces_is_assembled(node: Node) -> None:
    msg = pb.AgentToServer(instance_uid=UID, sequence_num=0, capabilities=caps.REPORTS_STATUS)
    msg.agent_description.identifying_attributes.add(key="service.name").value.string_value = "x" * 300
    head = await _raw_post(node, HEAD_CHUNKED, _chunked(msg.SerializeToString(), 16), pause=0.05)
    assert head.startswith(b"HTTP/1.1 200 ")
    stored = await node.services.store.get(UID)
    assert stored is not None and stored.description is not None


async def test_a_chunked_body_over_the_limit_is_413_without_a_length(node: Node) -> None:
    head = await _raw_post(node, HEAD_CHUNKED, _chunked(b"\x00" * (LIMIT + 1), 1024), pause=0.05)
    assert head.startswith(b"HTTP/1.1 413 ")
    assert node.services.limits.inflight == 0


async def test_a_declared_length_over_the_limit_is_413_before_the_body(node: Node) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(node))
    try:
        writer.write(
            b"POST /v1/opamp HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/x-protobuf\r\n"
            + f"Content-Length: {LIMIT + 1}\r\n\r\n".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 413 ")


async def test_a_client_gone_before_its_body_ends_leaves_nothing_behind(node: Node) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(node))
    writer.write(
        b"POST /v1/opamp HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/x-protobuf\r\n"
        b"Content-Length: 100\r\n\r\n" + b"\x0a\x10"
    )
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()
    for _ in range(100):
        if node.services.limits.inflight == 0:
            break
        await asyncio.sleep(0.01)
    assert node.services.limits.inflight == 0
    assert await node.services.store.get(UID) is None
    async with httpx2.AsyncClient(base_url=node.opamp_url) as client:
        hb = pb.AgentToServer(instance_uid=UID, capabilities=caps.REPORTS_STATUS)
        ok = await client.post(
            "/v1/opamp", content=hb.SerializeToString(), headers={"Content-Type": "application/x-protobuf"}
        )
    assert ok.status_code == 200


async def test_error_answers_are_plain_text_with_a_length(node: Node) -> None:
    async with httpx2.AsyncClient(base_url=node.opamp_url) as client:
        response = await client.post("/v1/opamp", content=b"{}", headers={"Content-Type": "application/json"})
    assert response.status_code == 415
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.text.endswith("\n")


def _handled(node: Node, status: str) -> float:
    value = node.services.metrics.registry.get_sample_value(
        "opamp_gateway_messages_total", {"transport": "http", "result": status}
    )
    return value or 0.0


async def test_handled_messages_are_counted_by_status(node: Node) -> None:
    before_ok, before_bad = _handled(node, "200"), _handled(node, "400")
    async with httpx2.AsyncClient(base_url=node.opamp_url) as client:
        headers = {"Content-Type": "application/x-protobuf"}
        hb = pb.AgentToServer(instance_uid=UID, capabilities=caps.REPORTS_STATUS)
        assert (
            await client.post("/v1/opamp", content=hb.SerializeToString(), headers=headers)
        ).status_code == 200
        assert (await client.post("/v1/opamp", content=b"\xff\xff", headers=headers)).status_code == 400
    assert _handled(node, "200") == before_ok + 1
    assert _handled(node, "400") == before_bad + 1


def test_request_headers_reads_only_what_it_needs_first_one_wins() -> None:
    parsed = request_headers(
        [
            (b"host", b"gateway"),
            (b"content-type", b"application/x-protobuf"),
            (b"content-type", b"application/json"),
            (b"authorization", b"Bearer caf\xe9"),
            (b"content-length", b"25"),
        ]
    )
    assert parsed == RequestHeaders(
        content_type="application/x-protobuf", content_length="25", authorization="Bearer caf\u00e9"
    )
    assert request_headers([]) == RequestHeaders()


def test_a_protobuf_answer_follows_the_servers_default_headers_as_they_change() -> None:
    # uvicorn gives a new list of default headers each time its Date changes.
    status = b"HTTP/1.1 200 OK\r\n"
    reply = protobuf_reply(b"\x0a\x01x", "")
    first = response_bytes(reply, status, [(b"date", b"Mon, 07 Dec 2026 04:00:00 GMT")], keep_alive=True)
    again = response_bytes(reply, status, [(b"date", b"Mon, 07 Dec 2026 04:00:01 GMT")], keep_alive=True)
    head = b"content-type: application/x-protobuf\r\ncontent-length: 3\r\n\r\n\x0a\x01x"
    assert first == status + b"date: Mon, 07 Dec 2026 04:00:00 GMT\r\n" + head
    assert again == status + b"date: Mon, 07 Dec 2026 04:00:01 GMT\r\n" + head
    closing = response_bytes(reply, status, [], keep_alive=False)
    assert closing == status + head.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n")
    refused = response_bytes(Reply(503, b"busy\n", [(b"retry-after", b"1")]), b"HTTP/1.1 503 x\r\n", [], True)
    assert refused == b"HTTP/1.1 503 x\r\nretry-after: 1\r\ncontent-length: 5\r\n\r\nbusy\n"
