"""Elasticsearch requests per agent message at steady state (`python -m bench es`, part of `make bench`).

N agents (default 2,000) heartbeat against gateway nodes whose store is the Elasticsearch test double
(harness/es_double: a real HTTP server speaking Elasticsearch's REST API, run here on its own
thread), which counts every request it serves. Phases: start the double and migrate; start the
gateway processes (`--elasticsearch-url` set to the double); connect the agents, alternately to each
node, each sending its full report (enrollment); then every agent sends a heartbeat each `--interval`
seconds, at its own random phase. After `--warmup` seconds the double's counters and the number of
agent messages are read, and again `--duration` seconds later. The result is the number of
Elasticsearch requests per agent message between the two readings, by endpoint, and the sizes of the
`_bulk` requests (actions each). Every reply is checked: an error or a ReportFullState makes the run
INVALID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import statistics
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from websockets.asyncio.client import ClientConnection, connect

from bench import fleet, targets
from bench.targets import HOST, REPO_ROOT, TargetError
from gateway import settings as settings_mod
from gateway.migrate import run as migrate
from gateway.proto import opamp_pb2 as pb
from harness.agent import SimAgent, reply_problem
from harness.es_double import EsDouble
from harness.process import ProcessError

logger = logging.getLogger("bench.es_requests")

AIM = 0.02
CONNECT_CONCURRENCY = 200
PROTOBUF = {"Content-Type": "application/x-protobuf"}


@dataclass(frozen=True)
class EsBenchConfig:
    agents: int = 2000
    transport: str = "websocket"
    nodes: int = 1
    # Seconds between an agent's heartbeats (OpAMP's default heartbeat interval is 30 s).
    interval: float = 30.0
    # The gateways' --flush-interval.
    flush_interval: float = 1.0
    warmup: float = 40.0
    duration: float = 120.0
    output: Path = REPO_ROOT / "bench" / "results" / "latest-es.json"


@dataclass
class _Agents:
    sent: int = 0
    problems: list[str] = field(default_factory=list)

    def check(self, reply: pb.ServerToAgent) -> None:
        problem = reply_problem(reply, None)
        if problem is not None:
            self.problems.append(f"{problem[0]}: {problem[1]}")


@contextlib.contextmanager
def _gateways(cfg: EsBenchConfig, es_url: str, workdir: Path) -> Iterator[list[int]]:
    """Start the gateway nodes; yields their OpAMP ports."""
    flags = {"elasticsearch_url": es_url, "flush_interval": cfg.flush_interval}
    names = [f"bench-es-{n}" for n in range(cfg.nodes)]
    with targets.nodes(workdir, names, flags) as started:
        yield [node.opamp_port for node in started]


async def _ws_agent(
    agent: SimAgent,
    port: int,
    cfg: EsBenchConfig,
    counts: _Agents,
    gate: asyncio.Semaphore,
    stop: asyncio.Event,
) -> None:
    async with gate:
        ws: ClientConnection = await connect(
            f"ws://{HOST}:{port}/v1/opamp", compression=None, max_size=None, ping_interval=None
        )
    try:
        await _exchange_ws(ws, agent.full_report(), counts)
        await asyncio.sleep(random.uniform(0, cfg.interval))
        while not stop.is_set():
            await _exchange_ws(ws, agent.heartbeat(), counts)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), cfg.interval)
    finally:
        await ws.close()


async def _exchange_ws(ws: ClientConnection, msg: pb.AgentToServer, counts: _Agents) -> None:
    await ws.send(b"\x00" + msg.SerializeToString())
    counts.sent += 1
    data = await ws.recv()
    assert isinstance(data, bytes)
    counts.check(pb.ServerToAgent.FromString(data[1:]))


async def _http_agent(
    agent: SimAgent,
    url: str,
    client: httpx2.AsyncClient,
    cfg: EsBenchConfig,
    counts: _Agents,
    stop: asyncio.Event,
) -> None:
    await _exchange_http(client, url, agent.full_report(), counts)
    await asyncio.sleep(random.uniform(0, cfg.interval))
    while not stop.is_set():
        await _exchange_http(client, url, agent.heartbeat(), counts)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), cfg.interval)


async def _exchange_http(
    client: httpx2.AsyncClient, url: str, msg: pb.AgentToServer, counts: _Agents
) -> None:
    counts.sent += 1
    body = msg.SerializeToString()
    try:
        response = await client.post(url, content=body, headers=PROTOBUF)
    except httpx2.TransportError:
        # uvicorn closes keep-alive connections idle for 5 s; a poll can race that close. An agent
        # retries such a poll (same message, so the gateway sees no gap).
        response = await client.post(url, content=body, headers=PROTOBUF)
    if response.status_code != 200:
        counts.problems.append(f"HTTP {response.status_code}: {response.text[:200]}")
        return
    counts.check(pb.ServerToAgent.FromString(response.content))


def _snapshot(double: EsDouble, counts: _Agents) -> tuple[dict[str, int], int, int]:
    requests, bulks = double.stats.snapshot()
    return requests, counts.sent, bulks


async def _drive(cfg: EsBenchConfig, double: EsDouble, ports: list[int], progress: Any) -> dict[str, Any]:
    agents = fleet.make_fleet(cfg.agents, seed=11)
    counts = _Agents()
    stop = asyncio.Event()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    limits = httpx2.Limits(max_connections=CONNECT_CONCURRENCY)
    async with httpx2.AsyncClient(timeout=30, limits=limits, trust_env=False) as client:
        if cfg.transport == "websocket":
            tasks = [
                asyncio.create_task(_ws_agent(a, ports[i % len(ports)], cfg, counts, gate, stop))
                for i, a in enumerate(agents)
            ]
        else:
            tasks = [
                asyncio.create_task(
                    _http_agent(
                        a, f"http://{HOST}:{ports[i % len(ports)]}/v1/opamp", client, cfg, counts, stop
                    )
                )
                for i, a in enumerate(agents)
            ]
        try:
            progress(
                f"{cfg.agents} {cfg.transport} agents enrolling and heartbeating every {cfg.interval:g} s; "
                f"warm-up {cfg.warmup:g} s"
            )
            await asyncio.sleep(cfg.warmup)
            requests_before, sent_before, bulks_before = _snapshot(double, counts)
            progress(f"measuring for {cfg.duration:g} s")
            await asyncio.sleep(cfg.duration)
            requests_after, sent_after, bulks_after = _snapshot(double, counts)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    failed = [t.exception() for t in tasks if not t.cancelled() and t.exception() is not None]
    messages = sent_after - sent_before
    by_endpoint = {
        k: v - requests_before.get(k, 0) for k, v in requests_after.items() if v - requests_before.get(k, 0)
    }
    total = sum(by_endpoint.values())
    bulks = double.stats.bulk_sizes[bulks_before:bulks_after]
    problems = counts.problems[:20] + [repr(e) for e in failed[:5]]
    return {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "messages": messages,
        "messages_per_second": round(messages / cfg.duration, 1),
        "es_requests": total,
        "es_requests_by_endpoint": by_endpoint,
        "requests_per_message": round(total / messages, 5) if messages else None,
        "aim": AIM,
        "bulk_requests": len(bulks),
        "bulk_actions": {
            "mean": round(statistics.fmean(bulks), 1) if bulks else 0,
            "p50": statistics.median(bulks) if bulks else 0,
            "p90": sorted(bulks)[int(0.9 * (len(bulks) - 1))] if bulks else 0,
            "max": max(bulks, default=0),
        },
        "problems": problems,
        "valid": not problems and messages > 0,
    }


def run(cfg: EsBenchConfig, progress: Any = print) -> dict[str, Any]:
    with EsDouble() as double, tempfile.TemporaryDirectory(prefix="bench-es-") as tmp:
        settings = settings_mod.load([f"--elasticsearch-url={double.url}"], {})
        asyncio.run(migrate(settings))
        with _gateways(cfg, double.url, Path(tmp)) as ports:
            return asyncio.run(_drive(cfg, double, ports, progress))


def table(result: dict[str, Any]) -> str:
    cfg = result["config"]
    bulk = result["bulk_actions"]
    lines = [
        f"Elasticsearch requests per agent message: {cfg['agents']} {cfg['transport']} agents on "
        f"{cfg['nodes']} node(s), heartbeat every {cfg['interval']:g} s, "
        f"--flush-interval {cfg['flush_interval']:g}",
        f"  messages      {result['messages']} ({result['messages_per_second']}/s over "
        f"{cfg['duration']:g} s)",
        f"  ES requests   {result['es_requests']}  {result['es_requests_by_endpoint']}",
        f"  per message   {result['requests_per_message']}  (aim <= {result['aim']})",
        f"  _bulk         {result['bulk_requests']} requests, actions each: mean {bulk['mean']}, "
        f"p50 {bulk['p50']}, p90 {bulk['p90']}, max {bulk['max']}",
    ]
    if result["problems"]:
        lines.append(f"  problems: {result['problems']}")
    lines.append("VALID" if result["valid"] else "INVALID")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    import argparse

    d = EsBenchConfig()
    parser = argparse.ArgumentParser(prog="python -m bench es", description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=d.agents, help="simulated agents (default %(default)s)")
    parser.add_argument("--transport", choices=("websocket", "http"), default=d.transport)
    parser.add_argument("--nodes", type=int, default=d.nodes, help="gateway processes (default %(default)s)")
    parser.add_argument(
        "--interval", type=float, default=d.interval, help="heartbeat seconds (default %(default)s)"
    )
    parser.add_argument(
        "--flush-interval", type=float, default=d.flush_interval, help="gateway --flush-interval"
    )
    parser.add_argument(
        "--warmup", type=float, default=d.warmup, help="seconds before measuring (default %(default)s)"
    )
    parser.add_argument(
        "--duration", type=float, default=d.duration, help="seconds measured (default %(default)s)"
    )
    parser.add_argument("--output", type=Path, default=d.output, help="results JSON (default %(default)s)")
    args = parser.parse_args(argv)
    if (
        args.agents < 1
        or args.nodes < 1
        or args.interval <= 0
        or args.duration <= 0
        or args.warmup < args.interval
    ):
        parser.error(
            "--agents and --nodes must be at least 1, --interval and --duration positive, "
            "--warmup at least --interval"
        )
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    cfg = EsBenchConfig(
        agents=args.agents,
        transport=args.transport,
        nodes=args.nodes,
        interval=args.interval,
        flush_interval=args.flush_interval,
        warmup=args.warmup,
        duration=args.duration,
        output=args.output,
    )
    try:
        result = run(cfg, lambda line: print(line, flush=True))
    except (TargetError, ProcessError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    print()
    print(table(result))
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    cfg.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nresults written to {cfg.output}")
    return 0 if result["valid"] else 1
