"""Slow clients on a node's two ports (issue 20, finding 9), over real loopback sockets: request heads
past --header-timeout, the per-address cap on unfinished requests, the port's budget, and requests
whose body never ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest

from tests.support.servers import Node, run_node
from tests.support.sockets import raw_socket
from tests.support.ws import agent_socket, exchange, report

pytestmark = pytest.mark.anyio

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def _raw(
    url: str, source: str
) -> contextlib.AbstractAsyncContextManager[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    return raw_socket(_port(url), source)


async def _until_closed(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (fails if it does not in time)."""
    received = b""
    async with asyncio.timeout(timeout):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk


async def _response(reader: asyncio.StreamReader) -> bytes:
    """One response's head (what a keep-alive test needs to see before sending the next request)."""
    async with asyncio.timeout(10):
        return await reader.readuntil(b"\r\n\r\n")


def _counter(node: Node, name: str, **labels: str) -> float:
    value = node.services.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


@contextlib.asynccontextmanager
async def _node(tmp_path: Path, **overrides: Any) -> AsyncIterator[Node]:
    async with run_node(tmp_path, **overrides) as node:
        yield node


async def _agent_connects(node: Node, source: str) -> None:
    async with agent_socket(node.opamp_url, local_addr=(source, 0)) as ws:
        reply = await exchange(ws, report(bytes(range(16))), timeout=10)
        assert reply.instance_uid == bytes(range(16))


async def test_a_dribbled_request_head_gets_408_after_the_header_timeout(tmp_path: Path) -> None:
    async with (
        _node(tmp_path, header_timeout=0.3) as node,
        _raw(node.admin_url, "127.0.0.1") as (reader, writer),
    ):
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def dribble() -> None:
            for byte in HEALTHZ[:-2]:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.02)

        task = asyncio.create_task(dribble())
        received = await _until_closed(reader)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await task
        assert loop.time() - started >= 0.3
        assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), received
        assert received.endswith(b"request headers not received in time\n")
        assert _counter(node, "opamp_gateway_client_timeouts_total", kind="header") == 1


async def test_a_head_that_arrives_in_time_is_served(tmp_path: Path) -> None:
    async with (
        _node(tmp_path, header_timeout=0.3) as node,
        _raw(node.opamp_url, "127.0.0.1") as (reader, writer),
    ):
        writer.write(HEALTHZ[:10])
        await asyncio.sleep(0.05)
        writer.write(HEALTHZ[10:])
        assert (await _response(reader)).startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("port", ["opamp", "admin"])
async def test_unfinished_sockets_over_the_per_address_cap_are_refused(tmp_path: Path, port: str) -> None:
    async with _node(tmp_path, max_unfinished_per_ip=3) as node, contextlib.AsyncExitStack() as stack:
        url = node.opamp_url if port == "opamp" else node.admin_url
        silent = [await stack.enter_async_context(_raw(url, "127.0.0.3")) for _ in range(3)]
        async with _raw(url, "127.0.0.3") as (reader, _writer):
            refused = await _until_closed(reader)
        assert refused.startswith(b"HTTP/1.1 429 Too Many Requests\r\n"), refused
        assert b"retry-after: 1\r\n" in refused
        assert _counter(node, "opamp_gateway_shed_requests_total", reason="max_unfinished_per_ip") == 1
        # Another address is not affected: a WebSocket agent connects, and a request is served.
        await _agent_connects(node, "127.0.0.2")
        async with _raw(url, "127.0.0.2") as (reader, writer):
            writer.write(HEALTHZ)
            assert (await _response(reader)).startswith(b"HTTP/1.1 200 ")
        # Once one of them finishes its request, the address has room again.
        reader, writer = silent[0]
        writer.write(HEALTHZ)
        assert (await _response(reader)).startswith(b"HTTP/1.1 200 ")
        async with _raw(url, "127.0.0.3") as (reader, writer):
            writer.write(HEALTHZ)
            assert (await _response(reader)).startswith(b"HTTP/1.1 200 ")


async def test_the_next_request_on_a_kept_alive_connection_counts_again(tmp_path: Path) -> None:
    async with (
        _node(tmp_path, max_unfinished_per_ip=2, header_timeout=0.3) as node,
        _raw(node.opamp_url, "127.0.0.4") as (kept, kept_writer),
        _raw(node.opamp_url, "127.0.0.4") as (other, other_writer),
    ):
        kept_writer.write(HEALTHZ)
        assert (await _response(kept)).startswith(b"HTTP/1.1 200 ")
        # A connection that finished its request does not count: two more fit besides it.
        async with _raw(node.opamp_url, "127.0.0.4"):
            # ...but the first byte of its next request makes it count, over the cap now.
            kept_writer.write(HEALTHZ[:5])
            refused = await _until_closed(kept)
        assert b"HTTP/1.1 429 Too Many Requests\r\n" in refused
        # A next request that dribbles is dropped after the header timeout, like a first one.
        other_writer.write(HEALTHZ)
        assert (await _response(other)).startswith(b"HTTP/1.1 200 ")
        other_writer.write(HEALTHZ[:5])
        assert b"HTTP/1.1 408 Request Timeout\r\n" in await _until_closed(other)


async def test_pipelined_requests_are_all_served(tmp_path: Path) -> None:
    async with (
        _node(tmp_path, max_unfinished_per_ip=1) as node,
        _raw(node.opamp_url, "127.0.0.5") as (reader, writer),
    ):
        writer.write(HEALTHZ * 3)
        for _ in range(3):
            head = await _response(reader)
            assert head.startswith(b"HTTP/1.1 200 ")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)


async def test_websocket_agents_do_not_count_once_connected(tmp_path: Path) -> None:
    async with (
        _node(tmp_path, max_unfinished_per_ip=1) as node,
        agent_socket(node.opamp_url, local_addr=("127.0.0.6", 0)),
    ):
        await _agent_connects(node, "127.0.0.6")


async def test_over_the_port_budget_the_oldest_unfinished_socket_is_dropped(tmp_path: Path) -> None:
    async with _node(tmp_path, max_unfinished=3) as node, contextlib.AsyncExitStack() as stack:
        oldest, _ = await stack.enter_async_context(_raw(node.opamp_url, "127.0.0.7"))
        for source in ("127.0.0.8", "127.0.0.9"):
            await stack.enter_async_context(_raw(node.opamp_url, source))
        # The probe's socket is the fourth: the oldest unfinished one makes room for it.
        async with httpx2.AsyncClient(base_url=node.opamp_url, trust_env=False) as client:
            assert (await client.get("/healthz")).status_code == 200
        assert await _until_closed(oldest) == b""
        assert _counter(node, "opamp_gateway_shed_requests_total", reason="max_unfinished") >= 1


async def test_a_body_that_never_ends_is_dropped_after_the_request_deadline(tmp_path: Path) -> None:
    # The request is refused (401) before its body is read; the client keeps trickling the body.
    async with _node(tmp_path, read_timeout=0.2, agent_keys="k" * 32) as node:
        async with _raw(node.opamp_url, "127.0.0.10") as (reader, writer):
            loop = asyncio.get_running_loop()
            writer.write(
                b"POST /v1/opamp HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/x-protobuf\r\n"
                b"Content-Length: 1000\r\n\r\n"
            )
            head_sent = loop.time()
            assert (await _response(reader)).startswith(b"HTTP/1.1 401 ")

            async def dribble() -> None:
                while True:
                    writer.write(b"x")
                    await asyncio.sleep(0.02)

            task = asyncio.create_task(dribble())
            await _until_closed(reader)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await task
            assert loop.time() - head_sent >= 0.3
        assert _counter(node, "opamp_gateway_client_timeouts_total", kind="body") == 1
