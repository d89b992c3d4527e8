"""Every load-shedding bound driven past its limit over real sockets: the exact reply, and that the node
still serves other agents afterwards."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from websockets.exceptions import InvalidStatus

from gateway import settings as settings_mod
from gateway.fleet.agent import AgentState
from gateway.limits import Limits, TokenBucket
from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb
from tests.support.memory_store import MemoryStore
from tests.support.servers import Node, run_node
from tests.support.waiting import eventually, uid
from tests.support.ws import CAPS, agent_socket, closed_with, exchange, heartbeat, recv, report, send

# Only an agent that reports heartbeats can be idle: one that does not is kept while it answers pings.
_BEATING = CAPS | caps.REPORTS_HEARTBEAT

PROTOBUF = {"Content-Type": "application/x-protobuf"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.5  # one token
    assert [bucket.take(), bucket.take()] == [True, False]
    clock.now += 100  # never more than the burst
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_rate_zero_means_no_limit() -> None:
    bucket = TokenBucket(rate=0, burst=1)
    assert all(bucket.take() for _ in range(1000))


def test_counters_refuse_past_their_bound_and_free_on_release() -> None:
    limits = Limits(settings_mod.Settings(max_connections=2, max_inflight=1))
    assert [limits.open_connection() for _ in range(3)] == [True, True, False]
    limits.close_connection()
    assert limits.open_connection()
    assert limits.begin_message() and not limits.begin_message()
    limits.end_message()
    assert limits.begin_message()


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--max-connections", "0"], "--max-connections"),
        (["--max-inflight", "0"], "--max-inflight"),
        (["--enrollment-rate", "-1"], "--enrollment-rate"),
        (["--enrollment-burst", "0"], "--enrollment-burst"),
        (["--idle-timeout", "-1"], "--idle-timeout"),
        (["--read-timeout", "0"], "--read-timeout"),
        (["--send-timeout", "0"], "--send-timeout"),
    ],
)
def test_bad_limits_are_named(argv: list[str], flag: str) -> None:
    with pytest.raises(settings_mod.SettingsError, match=flag):
        settings_mod.load(argv, {})


# -- over real sockets ----------------------------------------------------------------------------

pytestmark = pytest.mark.anyio


def _shed(node: Node, reason: str) -> float:
    value = node.services.metrics.registry.get_sample_value(
        "opamp_gateway_shed_requests_total", {"reason": reason}
    )
    assert value is not None
    return value


def _timeouts(node: Node, kind: str) -> float:
    value = node.services.metrics.registry.get_sample_value(
        "opamp_gateway_client_timeouts_total", {"kind": kind}
    )
    assert value is not None
    return value


def _retry_after(response_headers: object) -> int:
    value = int(response_headers["Retry-After"])  # type: ignore[index]
    assert 30 <= value <= 60, value
    return value


async def _still_serves(node: Node, n: int) -> None:
    async with agent_socket(node.opamp_url) as ws:
        reply = await exchange(ws, report(uid(n)))
        assert reply.instance_uid == uid(n) and not reply.HasField("error_response")


async def test_max_connections_refuses_the_upgrade_with_503(tmp_path: Path) -> None:
    async with run_node(tmp_path, max_connections=2) as node:
        async with agent_socket(node.opamp_url) as first, agent_socket(node.opamp_url) as second:
            await exchange(first, report(uid(1)))
            with pytest.raises(InvalidStatus) as refused:
                async with agent_socket(node.opamp_url):
                    pass
            response = refused.value.response
            assert response.status_code == 503
            _retry_after(response.headers)
            assert b"maximum of 2 WebSockets" in response.body
            assert _shed(node, "max_connections") == 1
            # The open ones are untouched.
            assert (await exchange(second, report(uid(2)))).instance_uid == uid(2)
            assert (await exchange(first, heartbeat(uid(1), 1))).flags == 0
            # HTTP polls hold no socket: not limited.
            async with httpx2.AsyncClient(base_url=node.opamp_url) as client:
                polled = await client.post(
                    "/v1/opamp", content=report(uid(3)).SerializeToString(), headers=PROTOBUF
                )
                assert polled.status_code == 200
        await eventually(lambda: node.services.limits.connections == 0)
        await _still_serves(node, 4)


class GatedStore(MemoryStore):
    """Reads wait at a gate while it is closed: keeps messages in flight for as long as a test needs."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0

    async def get(self, uid: bytes) -> AgentState | None:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        return await super().get(uid)


@pytest.fixture
async def gated(tmp_path: Path) -> AsyncIterator[tuple[Node, GatedStore]]:
    store = GatedStore()
    async with run_node(tmp_path, store=store, max_inflight=1) as node:
        yield node, store


async def test_max_inflight_sheds_http_but_never_a_websocket_message(
    gated: tuple[Node, GatedStore],
) -> None:
    node, store = gated
    store.gate.clear()
    async with httpx2.AsyncClient(base_url=node.opamp_url) as client, agent_socket(node.opamp_url) as ws:
        held = asyncio.create_task(
            client.post("/v1/opamp", content=report(uid(1)).SerializeToString(), headers=PROTOBUF)
        )
        await eventually(lambda: store.waiting == 1)

        refused = await client.post("/v1/opamp", content=report(uid(2)).SerializeToString(), headers=PROTOBUF)
        assert refused.status_code == 503
        _retry_after(refused.headers)
        assert refused.text == "service unavailable: max_inflight\n"

        # A socket carries one message at a time, so it waits instead of losing what it reported;
        # it counts toward the limit, so HTTP stays shed meanwhile.
        await send(ws, report(uid(3)))
        await eventually(lambda: store.waiting == 2)
        assert node.services.limits.inflight == 2
        assert _shed(node, "max_inflight") == 1

        # Nothing accepted is lost: both complete once the store answers.
        store.gate.set()
        assert (await held).status_code == 200
        reply = await recv(ws)
        assert reply.instance_uid == uid(3) and not reply.HasField("error_response")
    assert await node.services.writer.get(uid(1)) is not None
    assert await node.services.writer.get(uid(3)) is not None
    assert node.services.limits.inflight == 0


async def test_enrollment_rate_sheds_new_agents_only(tmp_path: Path) -> None:
    async with (
        run_node(tmp_path, enrollment_rate=0.001, enrollment_burst=2) as node,
        httpx2.AsyncClient(base_url=node.opamp_url) as client,
        agent_socket(node.opamp_url) as ws,
    ):
        for n in (1, 2):
            ok = await client.post("/v1/opamp", content=report(uid(n)).SerializeToString(), headers=PROTOBUF)
            assert ok.status_code == 200
        refused = await client.post("/v1/opamp", content=report(uid(3)).SerializeToString(), headers=PROTOBUF)
        assert refused.status_code == 429
        _retry_after(refused.headers)
        assert refused.text == "too many requests: enrollment_rate\n"

        reply = await exchange(ws, report(uid(4)))
        assert reply.error_response.type == pb.ServerErrorResponseType_Unavailable
        assert reply.error_response.retry_info.retry_after_nanoseconds >= 30e9
        assert _shed(node, "enrollment_rate") == 2
        assert await node.services.writer.get(uid(3)) is None

        # Enrolled agents keep being served, and a stranger's goodbye needs no token.
        again = await client.post(
            "/v1/opamp", content=heartbeat(uid(1), 1).SerializeToString(), headers=PROTOBUF
        )
        assert again.status_code == 200
        bye = pb.AgentToServer(instance_uid=uid(5), sequence_num=0)
        bye.agent_disconnect.SetInParent()
        gone = await client.post("/v1/opamp", content=bye.SerializeToString(), headers=PROTOBUF)
        assert gone.status_code == 200
        assert _shed(node, "enrollment_rate") == 2


async def test_idle_websocket_is_closed(tmp_path: Path) -> None:
    async with run_node(tmp_path, idle_timeout=0.3, agent_heartbeat_interval=0) as node:
        async with agent_socket(node.opamp_url) as ws:
            await exchange(ws, report(uid(1), capabilities=_BEATING))
            code, reason = await closed_with(ws, timeout=5)
        assert code == 1000 and reason == "idle: no message for 0.3s"
        assert _timeouts(node, "idle") == 1
        await _still_serves(node, 2)


async def test_a_websocket_that_keeps_talking_is_not_idle(tmp_path: Path) -> None:
    # The idle timer is set once per socket, not per message: when it fires after messages came, it
    # must wait again for a full --idle-timeout of silence, counted from the last one.
    async with run_node(tmp_path, idle_timeout=0.4, agent_heartbeat_interval=0) as node:
        async with agent_socket(node.opamp_url) as ws:
            await exchange(ws, report(uid(1), capabilities=_BEATING))
            for seq in range(1, 9):
                await asyncio.sleep(0.15)
                reply = await exchange(ws, heartbeat(uid(1), seq, _BEATING))
                assert not reply.HasField("error_response")
            silent_from = asyncio.get_running_loop().time()
            code, reason = await closed_with(ws, timeout=5)
            silence = asyncio.get_running_loop().time() - silent_from
        assert code == 1000 and reason == "idle: no message for 0.4s"
        assert 0.35 <= silence < 2.0
        assert _timeouts(node, "idle") == 1


async def test_a_body_that_trickles_in_gets_408(tmp_path: Path) -> None:
    async with run_node(tmp_path, read_timeout=0.3) as node:
        body = report(uid(1)).SerializeToString()
        port = int(node.opamp_url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/opamp HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/x-protobuf\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:5]
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 408 ")
        writer.close()
        assert _timeouts(node, "read") == 1
        assert node.services.limits.inflight == 0
        async with httpx2.AsyncClient(base_url=node.opamp_url) as client:
            ok = await client.post("/v1/opamp", content=body, headers=PROTOBUF)
            assert ok.status_code == 200


def _client_frame(payload: bytes) -> bytes:
    """One masked binary WebSocket frame, as a client sends it (RFC 6455 5.2)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        length = bytes([0x80 | size])
    elif size < 1 << 16:
        length = bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + size.to_bytes(8, "big")
    return b"\x82" + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_a_client_that_stops_reading_is_dropped(tmp_path: Path) -> None:
    async with run_node(tmp_path, send_timeout=0.3, max_message_bytes=100_000) as node:
        # A raw client with a tiny receive window that never reads what the gateway sends.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", int(node.opamp_url.rsplit(":", 1)[1])))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /v1/opamp HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 101")

        # A reply echoes the instance_uid, even a malformed one: 60 KB uids make 60 KB replies, which
        # fill the kernel's buffers in a few dozen messages rather than hundreds of thousands.
        big = _client_frame(b"\x00" + pb.AgentToServer(instance_uid=b"u" * 60_000).SerializeToString())

        async def flood() -> None:
            while True:
                writer.write(big)
                await writer.drain()

        flooding = asyncio.create_task(flood())
        try:
            await eventually(lambda: _timeouts(node, "send") == 1, timeout=30)
        finally:
            flooding.cancel()
            await asyncio.gather(flooding, return_exceptions=True)
            writer.transport.abort()
        await eventually(lambda: node.services.registry.socket_count == 0)
        await _still_serves(node, 2)
