"""The OpAMP port's protocol answering POST /v1/opamp itself, over real loopback sockets: keep-alive,
pipelining, the requests it leaves to uvicorn's ASGI cycle, answers that wait, and failures.

A stand-in for the transport's handler marks what it answered, and a plain ASGI app marks what
uvicorn answered, so each test sees which path a request took."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn

from gateway.transport.http_protocol import http_protocol_class
from gateway.transport.http_wire import Reply, RequestHeaders, protobuf_reply
from gateway.transport.unfinished import UnfinishedRequests
from tests.support.sockets import raw_socket

pytestmark = pytest.mark.anyio

LIMIT = 64


class _Boom(Exception):
    pass


@dataclass
class _Answers:
    """The transport's handler as the protocol sees it: bodies starting with "wait" wait for their
    gate, "boom" fails."""

    limit: int = LIMIT
    answered: list[bytes] = field(default_factory=list)
    gates: dict[bytes, asyncio.Event] = field(default_factory=dict)
    finished: list[bytes] = field(default_factory=list)

    def answer_read(self, headers: RequestHeaders, body: bytes) -> Reply | Coroutine[Any, Any, Reply]:
        if not body.startswith(b"now"):
            return self._later(body)
        # Decided at once, as the transport answers a heartbeat whose records the node holds.
        self.answered.append(body)
        if body.endswith(b"boom"):
            raise _Boom("the handler failed at once")
        return protobuf_reply(b"protocol:" + body, "")

    async def _later(self, body: bytes) -> Reply:
        self.answered.append(body)
        if body.startswith(b"wait"):
            await self.gates.setdefault(body, asyncio.Event()).wait()
        self.finished.append(body)
        if body.endswith(b"boom"):
            raise _Boom("the handler failed")
        return Reply(200, b"protocol:" + body, [(b"content-type", b"text/plain")])


async def _asgi(scope: dict[str, object], receive: object, send: object) -> None:
    """What uvicorn's own cycle answers: the body, marked."""
    assert scope["type"] == "http"
    body = b""
    while True:
        message = await receive()  # type: ignore[operator]
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % (len(body) + 5))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"asgi:" + body})  # type: ignore[operator]


@dataclass
class _Port:
    answers: _Answers
    port: int


@contextlib.asynccontextmanager
async def _serve() -> AsyncIterator[_Port]:
    answers = _Answers()
    unfinished = UnfinishedRequests(header_timeout=5, body_timeout=5, per_address=100, total=1000)
    config = uvicorn.Config(
        _asgi,
        lifespan="off",
        log_level="warning",
        ws="none",
        http=http_protocol_class(unfinished, answers),
        server_header=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield _Port(answers, sock.getsockname()[1])
    finally:
        server.should_exit = True
        await serving
        sock.close()


@pytest.fixture
async def port() -> AsyncIterator[_Port]:
    async with _serve() as serving:
        yield serving


def _connect(
    port: _Port,
) -> contextlib.AbstractAsyncContextManager[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    return raw_socket(port.port)


def _post(body: bytes, *headers: bytes, version: bytes = b"1.1", url: bytes = b"/v1/opamp") -> bytes:
    lines = [b"POST " + url + b" HTTP/" + version, b"host: localhost", b"content-length: %d" % len(body)]
    return b"\r\n".join([*lines, *headers]) + b"\r\n\r\n" + body


async def _response(
    reader: asyncio.StreamReader, timeout: float = 5.0
) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One response: its status line, headers (lower-case names) and body."""
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        status, *lines = head[:-4].split(b"\r\n")
        headers = dict(line.split(b": ", 1) for line in lines)
        headers = {name.lower(): value for name, value in headers.items()}
        body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, headers, body


async def _closed(reader: asyncio.StreamReader) -> bool:
    async with asyncio.timeout(5):
        try:
            return await reader.read(1) == b""
        except ConnectionResetError:
            return True


async def test_keep_alive_requests_are_answered_by_the_protocol_on_one_connection(port: _Port) -> None:
    async with _connect(port) as (reader, writer):
        for n in range(3):
            writer.write(_post(b"beat-%d" % n))
            status, headers, body = await _response(reader)
            assert (status, body) == (b"HTTP/1.1 200 OK", b"protocol:beat-%d" % n)
            # The server's own headers as uvicorn sends them, and no close.
            assert b"date" in headers and b"connection" not in headers
            assert headers[b"content-type"] == b"text/plain"
    assert port.answers.answered == [b"beat-0", b"beat-1", b"beat-2"]


async def test_answers_given_at_once_and_awaited_ones_share_a_connection(port: _Port) -> None:
    async with _connect(port) as (reader, writer):
        for body in (b"now-1", b"later", b"now-2", b"now-3"):
            writer.write(_post(body))
            status, headers, got = await _response(reader)
            assert (status, got) == (b"HTTP/1.1 200 OK", b"protocol:" + body)
            assert b"connection" not in headers and b"date" in headers
        assert headers[b"content-type"] == b"application/x-protobuf"
        writer.write(_post(b"now-last", b"connection: close"))
        _status, headers, got = await _response(reader)
        assert (got, headers[b"connection"]) == (b"protocol:now-last", b"close")
        assert await _closed(reader)
    assert port.answers.answered == [b"now-1", b"later", b"now-2", b"now-3", b"now-last"]


async def test_an_answer_that_fails_at_once_gets_500_and_the_connection_closes(
    port: _Port, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, "gateway.transport.http_protocol"):
        async with _connect(port) as (reader, writer):
            writer.write(_post(b"now-boom"))
            status, headers, _body = await _response(reader)
            assert (status, headers[b"connection"]) == (b"HTTP/1.1 500 Internal Server Error", b"close")
            assert await _closed(reader)
    assert "failed to answer an OpAMP request" in caplog.text


async def test_connection_close_is_answered_then_the_socket_closes(port: _Port) -> None:
    async with _connect(port) as (reader, writer):
        writer.write(_post(b"last", b"connection: close"))
        status, headers, body = await _response(reader)
        assert (status, body, headers[b"connection"]) == (b"HTTP/1.1 200 OK", b"protocol:last", b"close")
        assert await _closed(reader)


@pytest.mark.parametrize("extra", [(), (b"connection: keep-alive",)], ids=["plain", "keep-alive-asked"])
async def test_an_http_1_0_request_is_answered_then_the_socket_closes(
    port: _Port, extra: tuple[bytes, ...]
) -> None:
    # As uvicorn answers HTTP/1.0: one request per connection.
    async with _connect(port) as (reader, writer):
        writer.write(_post(b"old", *extra, version=b"1.0"))
        _status, headers, body = await _response(reader)
        assert (body, headers[b"connection"]) == (b"protocol:old", b"close")
        assert await _closed(reader)


async def test_pipelined_requests_in_one_send_are_answered_in_order(port: _Port) -> None:
    async with _connect(port) as (reader, writer):
        writer.write(b"".join(_post(b"p%d" % n) for n in range(4)))
        bodies = [(await _response(reader))[2] for _ in range(4)]
    assert bodies == [b"protocol:p%d" % n for n in range(4)]


async def test_a_body_that_comes_after_its_head_goes_to_uvicorn(port: _Port) -> None:
    async with _connect(port) as (reader, writer):
        request = _post(b"slow-body")
        head, body = request[: -len(b"slow-body")], request[-len(b"slow-body") + 4 :]
        writer.write(head + b"slow")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(body)
        assert (await _response(reader))[2] == b"asgi:slow-body"
        # The connection goes on, and the next whole request is the protocol's again.
        writer.write(_post(b"next"))
        assert (await _response(reader))[2] == b"protocol:next"
    assert port.answers.answered == [b"next"]


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(_post(b"x" * (LIMIT + 1)), id="over-the-limit"),
        pytest.param(_post(b"ask", b"expect: 100-continue"), id="expect-100-continue"),
        pytest.param(_post(b"query", url=b"/v1/opamp?x=1"), id="query-string"),
        pytest.param(_post(b"other", url=b"/v1/other"), id="other-path"),
        pytest.param(
            b"POST /v1/opamp HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nchunk\r\n0\r\n\r\n",
            id="no-content-length",
        ),
        pytest.param(
            b"PUT /v1/opamp HTTP/1.1\r\nhost: localhost\r\ncontent-length: 3\r\n\r\nput", id="not-a-post"
        ),
    ],
)
async def test_requests_the_protocol_does_not_take_go_to_uvicorn(port: _Port, request_bytes: bytes) -> None:
    async with _connect(port) as (reader, writer):
        writer.write(request_bytes)
        status, _headers, body = await _response(reader)
        if status == b"HTTP/1.1 100 Continue":
            status, _headers, body = await _response(reader)
        assert status == b"HTTP/1.1 200 OK" and body.startswith(b"asgi:")
    assert port.answers.answered == []


async def test_an_answer_that_waits_keeps_pipelined_requests_behind_it(port: _Port) -> None:
    gate = port.answers.gates[b"wait-1"] = asyncio.Event()
    async with _connect(port) as (reader, writer):
        writer.write(_post(b"wait-1") + _post(b"fast") + _post(b"x" * (LIMIT + 1)))
        with pytest.raises(TimeoutError):
            await _response(reader, timeout=0.2)
        assert port.answers.answered == [b"wait-1"]
        gate.set()
        bodies = [(await _response(reader))[2] for _ in range(3)]
    # Those that arrived while it waited are queued by uvicorn, which answers them after it.
    assert bodies == [b"protocol:wait-1", b"asgi:fast", b"asgi:" + b"x" * (LIMIT + 1)]


async def test_a_request_after_an_answer_that_waited_is_answered_at_once(port: _Port) -> None:
    port.answers.gates[b"wait-2"] = gate = asyncio.Event()
    async with _connect(port) as (reader, writer):
        writer.write(_post(b"wait-2"))
        await asyncio.sleep(0.05)
        gate.set()
        assert (await _response(reader))[2] == b"protocol:wait-2"
        writer.write(_post(b"then"))
        assert (await _response(reader))[2] == b"protocol:then"


@pytest.mark.parametrize("body", [b"boom", b"wait-boom"], ids=["at-once", "after-waiting"])
async def test_a_failing_handler_gets_500_and_the_connection_closes(
    port: _Port, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    port.answers.gates[b"wait-boom"] = asyncio.Event()
    port.answers.gates[b"wait-boom"].set()
    with caplog.at_level(logging.ERROR, logger="gateway.transport.http_protocol"):
        async with _connect(port) as (reader, writer):
            writer.write(_post(body))
            status, headers, text = await _response(reader)
            assert (status, text) == (b"HTTP/1.1 500 Internal Server Error", b"Internal Server Error\n")
            assert headers[b"connection"] == b"close"
            assert await _closed(reader)
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [_Boom]


async def test_a_client_gone_while_its_answer_waits_is_not_written_to(
    port: _Port, caplog: pytest.LogCaptureFixture
) -> None:
    gate = port.answers.gates[b"wait-gone"] = asyncio.Event()
    with caplog.at_level(logging.WARNING):
        async with _connect(port) as (_reader, writer):
            writer.write(_post(b"wait-gone"))
            await writer.drain()
            while port.answers.answered != [b"wait-gone"]:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the server sees the socket close
        gate.set()
        while port.answers.finished != [b"wait-gone"]:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        # The port still answers.
        async with _connect(port) as (reader, writer):
            writer.write(_post(b"after"))
            assert (await _response(reader))[2] == b"protocol:after"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_content_length_beside_chunked_framing_is_refused_not_collected(port: _Port) -> None:
    # The protocol trusts the parser to frame the body by the Content-Length it checked: a chunked
    # body larger than the limit under a small Content-Length must never reach it.
    big = b"y" * (4 * LIMIT)
    head = (
        b"POST /v1/opamp HTTP/1.1\r\nhost: localhost\r\n"
        b"content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    async with _connect(port) as (reader, writer):
        writer.write(head + b"%x\r\n" % len(big) + big + b"\r\n0\r\n\r\n")
        status, headers, _body = await _response(reader)
        assert (status, headers[b"connection"]) == (b"HTTP/1.1 400 Bad Request", b"close")
    assert port.answers.answered == []
