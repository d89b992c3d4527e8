"""Slow clients against a real gateway process (issue 20, finding 9): the liveness probe and agents
are served while hundreds of sockets never finish their request and the process is short of files,
and requests whose body trickles in hold no --max-inflight slot."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx2

from gateway.proto import opamp_pb2 as pb
from harness.waiting import wait_until
from tests.support.process import Gateway, GatewayFactory

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


@contextlib.contextmanager
def _sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


def _connect(url: str, source: str, first_bytes: bytes = b"") -> socket.socket:
    sock = socket.create_connection(_address(url), timeout=10, source_address=(source, 0))
    if first_bytes:
        sock.sendall(first_bytes)
    return sock


def _gauge(gw: Gateway, name: str, **labels: str) -> float:
    text = httpx2.get(f"{gw.admin_url}/metrics", timeout=10, trust_env=False).text
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name}{{{wanted}}} in /metrics")


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _heartbeat(uid: bytes) -> bytes:
    return pb.AgentToServer(instance_uid=uid, sequence_num=0).SerializeToString()


def test_healthz_and_agents_are_served_while_slow_sockets_hold_a_short_file_limit(
    gateway_factory: GatewayFactory,
) -> None:
    # Heads get a minute, so only the port's budget (--max-unfinished) protects the node here.
    gw = gateway_factory(header_timeout=60, max_unfinished=100)
    # Room for 150 more files than the node has open: fewer than the slow sockets below.
    limit = _open_files(gw.pid) + 150
    resource.prlimit(gw.pid, resource.RLIMIT_NOFILE, (limit, limit))
    with _sockets() as slow:
        # 250 sockets from 25 addresses (under the per-address cap), each sending half a request line.
        for n in range(250):
            slow.append(_connect(gw.opamp_base_url, f"127.0.0.{20 + n % 25}", b"GET /hea"))
        wait_until(
            lambda: _gauge(gw, "opamp_gateway_shed_requests_total", reason="max_unfinished") >= 150,
            15,
            "the oldest slow sockets to be dropped",
        )
        assert _open_files(gw.pid) < limit
        with httpx2.Client(timeout=10, trust_env=False) as client:
            for url in (gw.opamp_base_url, gw.admin_url):
                assert client.get(f"{url}/healthz").status_code == 200
            reply = client.post(gw.opamp_url, content=_heartbeat(bytes(range(16))), headers=PROTOBUF)
            assert reply.status_code == 200, reply.text
        assert _gauge(gw, "opamp_gateway_unfinished_requests", port="opamp", stage="head") <= 100


def test_unfinished_sockets_over_the_per_address_cap_are_refused_another_address_connects(
    gateway_factory: GatewayFactory,
) -> None:
    gw = gateway_factory(max_unfinished_per_ip=20, header_timeout=60)
    with _sockets() as held:
        for _ in range(20):
            held.append(_connect(gw.opamp_base_url, "127.0.0.3", b"GET /v1/opamp HTTP/1.1\r\n"))
        refused = _connect(gw.opamp_base_url, "127.0.0.3")
        held.append(refused)
        assert refused.recv(4096).startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
        assert refused.recv(4096) == b""
        agent = _connect(gw.opamp_base_url, "127.0.0.2")
        held.append(agent)
        agent.sendall(
            b"GET /v1/opamp HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert agent.recv(4096).startswith(b"HTTP/1.1 101 Switching Protocols\r\n")


def test_slow_bodies_hold_no_inflight_slot(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(max_inflight=10, read_timeout=60)
    head = (
        b"POST /v1/opamp HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/x-protobuf\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    with _sockets() as slow:
        for n in range(60):
            slow.append(_connect(gw.opamp_base_url, f"127.0.0.{40 + n % 3}", head + b"\x0a\x10"))
        wait_until(
            lambda: _gauge(gw, "opamp_gateway_unfinished_requests", port="opamp", stage="body") == 60,
            15,
            "60 request bodies to be pending",
        )
        with httpx2.Client(timeout=10, trust_env=False) as client:
            for n in range(20):
                reply = client.post(gw.opamp_url, content=_heartbeat(bytes([n]) * 16), headers=PROTOBUF)
                assert reply.status_code == 200, reply.text
        assert _gauge(gw, "opamp_gateway_shed_requests_total", reason="max_inflight") == 0


def test_sockets_that_dribble_their_headers_are_closed_after_the_header_timeout(
    gateway_factory: GatewayFactory,
) -> None:
    gw = gateway_factory(header_timeout=0.5)
    upgrade = (
        b"GET /v1/opamp HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )
    with _sockets() as dribbling:
        # The last moment before the server could have started either socket's deadline.
        started = time.monotonic()
        for url in (gw.opamp_base_url, gw.admin_url):
            dribbling.append(_connect(url, "127.0.0.50"))
        received = [b"", b""]
        # One byte of an upgrade request (never finished) every 50 ms on each port, until closed.
        for byte in upgrade * 10:
            for n, sock in enumerate(dribbling):
                if received[n]:
                    continue
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    received[n] = b"closed"
                    continue
                sock.settimeout(0.05)
                with contextlib.suppress(TimeoutError):
                    received[n] = sock.recv(4096) or b"closed"
            if all(received):
                break
        assert time.monotonic() - started >= 0.5
        for answer in received:
            assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert _gauge(gw, "opamp_gateway_client_timeouts_total", kind="header") >= 1
