"""End to end through a real HAProxy (Debian's `haproxy`) running deploy/haproxy/haproxy.cfg, with only
its addresses changed, in front of two real gateway processes sharing one SQLite file and a real
redis-server. Agents reconnect the way the OpAMP clients do: after a close, or after the retry delay
of an Unavailable or a 503's Retry-After."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.proto import opamp_pb2 as pb
from harness.gateway import GatewayProcess
from harness.ports import free_port
from harness.process import spawn, wait_ready
from harness.redis_server import RedisServer
from tests.integration.conftest import GatewayFactory
from tests.integration.nodes import admin_json, eventually, new_uid
from tests.support.ws import agent_socket, heartbeat, recv, report, send

pytestmark = pytest.mark.anyio

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
AGENTS = 20
BOUND = 120.0


def haproxy_config(listen: int, servers: dict[str, GatewayProcess]) -> str:
    """The example config, listening on `listen` and pointing at `servers`; nothing else changed."""
    text = CONFIG.read_text(encoding="utf-8")
    text, binds = re.subn(r"(?m)^(\s*)bind \S+$", rf"\1bind 127.0.0.1:{listen}", text)
    assert binds == 1
    lines = text.splitlines()
    kept = [line for line in lines if not re.match(r"^\s*server ", line)]
    assert len(kept) == len(lines) - 2, "the example has two server lines"
    kept += [
        f"    server {name} {gw.opamp_base_url.removeprefix('http://')} check" for name, gw in servers.items()
    ]
    return "\n".join(kept) + "\n"


@contextlib.contextmanager
def haproxy(workdir: Path, servers: dict[str, GatewayProcess]) -> Iterator[str]:
    """Run HAProxy with the example config in front of `servers`; its URL. Killed (by PID) after."""
    assert HAPROXY is not None
    port = free_port()
    path = workdir / "haproxy.cfg"
    path.write_text(haproxy_config(port, servers), encoding="utf-8")
    check = spawn("haproxy-check", [HAPROXY, "-c", "-f", str(path)], workdir / "haproxy-check.log")
    assert check.wait(10) == 0, check.log_text()
    process = spawn("haproxy", [HAPROXY, "-db", "-f", str(path)], workdir / "haproxy.log")
    try:
        wait_ready(process, lambda: _answers(port), timeout=10)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.kill()


def _answers(port: int) -> bool:
    try:
        return httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx2.HTTPError:
        return False


class Agent:
    """One simulated agent: keeps a WebSocket open through the balancer, reconnecting as clients do."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.uid = new_uid()
        self.seq = 0
        self.connections = 0
        self.refused = 0
        self.connected = asyncio.Event()
        self.stop = False

    async def run(self) -> None:
        while not self.stop:
            delay = 0.1
            try:
                async with agent_socket(self.url, ping_interval=None) as ws:
                    self.connections += 1
                    msg = (
                        report(self.uid, self.seq) if self.connections == 1 else heartbeat(self.uid, self.seq)
                    )
                    await send(ws, msg)
                    while not self.stop:
                        try:
                            reply = await recv(ws, 0.5)
                        except TimeoutError:
                            continue
                        self.connected.set()
                        if reply.flags & pb.ServerToAgentFlags_ReportFullState:
                            self.seq += 1
                            await send(ws, report(self.uid, self.seq))
                        if (
                            reply.HasField("error_response")
                            and reply.error_response.retry_info.retry_after_nanoseconds
                        ):
                            delay = reply.error_response.retry_info.retry_after_nanoseconds / 1e9
            except InvalidStatus as exc:
                assert exc.response.status_code == 503, exc
                self.refused += 1
                delay = float(exc.response.headers.get("Retry-After", "1"))
            except (ConnectionClosed, OSError, TimeoutError):
                pass
            self.connected.clear()
            self.seq += 1
            await asyncio.sleep(delay)


@contextlib.asynccontextmanager
async def fleet(url: str) -> AsyncIterator[list[Agent]]:
    agents = [Agent(url) for _ in range(AGENTS)]
    async with anyio.create_task_group() as group:
        for agent in agents:
            group.start_soon(agent.run)
        try:
            yield agents
        finally:
            for agent in agents:
                agent.stop = True


async def by_node(gateway: GatewayProcess) -> dict[str, int]:
    summary = await admin_json(gateway, "GET", "/api/v1/fleet/summary")
    counts: dict[str, int] = summary["websockets"]["by_node"]
    return {node: n for node, n in counts.items() if n}


async def records(gateway: GatewayProcess) -> int:
    body = await admin_json(gateway, "GET", "/api/v1/agents", params={"limit": "1000"})
    return len(body["agents"])


needs_haproxy = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (scripts/install-test-deps.sh)"
)
FLAGS = {"node_ttl": 1.5, "drain_seconds": 4, "drain_retry_window": 3}


@contextlib.asynccontextmanager
async def spread_fleet(
    gateways: GatewayFactory, redis: RedisServer, workdir: Path
) -> AsyncIterator[tuple[GatewayProcess, GatewayProcess, list[Agent]]]:
    """Two gateways behind HAProxy, and AGENTS agents connected through it, on both nodes."""
    gw1 = gateways("gw1", redis.url, **FLAGS)
    gw2 = gateways("gw2", redis.url, **FLAGS)
    with haproxy(workdir, {"gw1": gw1, "gw2": gw2}) as url:
        async with fleet(url) as agents:
            await eventually(lambda: _all(agents), timeout=20, what="every agent connected")
            await eventually(lambda: _counts(gw2, {"gw1", "gw2"}, AGENTS), timeout=10, what="agents on both")
            spread = await by_node(gw2)
            # leastconn: about half each.
            assert min(spread.values()) >= AGENTS // 4, spread
            yield gw1, gw2, agents


@needs_haproxy
async def test_through_haproxy_every_agent_of_a_killed_node_reconnects_and_nothing_is_lost(
    gateways: GatewayFactory, shared_redis: RedisServer, tmp_path: Path
) -> None:
    with anyio.fail_after(BOUND):
        async with spread_fleet(gateways, shared_redis, tmp_path) as (gw1, gw2, agents):
            on_gw1 = (await by_node(gw2))["gw1"]
            before = sum(agent.connections for agent in agents)
            gw1.kill()
            killed = time.monotonic()
            await eventually(lambda: _counts(gw2, {"gw2"}, AGENTS), timeout=20, what="all agents on gw2")
            moved = time.monotonic() - killed
            await eventually(lambda: _all(agents), timeout=10, what="every agent answered again")
            assert await records(gw2) == AGENTS
            # Each agent of the killed node opened one new socket (a refused first try aside).
            assert sum(agent.connections for agent in agents) - before >= on_gw1
            assert max(agent.refused for agent in agents) == 0
            # Each takeover notice went to a node that is gone: said in the log, not silently dropped.
            assert "which is gone (nobody received the takeover notice)" in gw2.log_text()
        print(
            f"\nthrough HAProxy: the {on_gw1} agents of a killed node all on the survivor within {moved:.2f}s"
        )


@needs_haproxy
async def test_through_haproxy_a_drain_moves_every_agent_with_at_most_one_refused_upgrade(
    gateways: GatewayFactory, shared_redis: RedisServer, tmp_path: Path
) -> None:
    with anyio.fail_after(BOUND):
        async with spread_fleet(gateways, shared_redis, tmp_path) as (gw1, gw2, agents):
            on_gw1 = (await by_node(gw2))["gw1"]
            started = time.monotonic()
            await admin_json(gw1, "POST", "/api/v1/drain", expect=202)
            await eventually(lambda: _counts(gw2, {"gw2"}, AGENTS), timeout=30, what="all agents on gw2")
            moved = time.monotonic() - started
            await eventually(lambda: _all(agents), timeout=10, what="every agent answered again")
            refused = Counter(agent.refused for agent in agents)
            assert max(refused) <= 1, refused
            assert await records(gw2) == AGENTS
        print(
            f"\nthrough HAProxy: drained {on_gw1} agents to the other node in {moved:.2f}s; refused upgrades "
            f"per agent: {dict(sorted(refused.items()))}"
        )


async def _all(agents: list[Agent]) -> bool:
    return all(agent.connected.is_set() for agent in agents)


async def _counts(gateway: GatewayProcess, nodes: set[str], total: int | None = None) -> bool:
    counts = await by_node(gateway)
    return set(counts) == nodes and (total is None or sum(counts.values()) == total)
