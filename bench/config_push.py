"""Config convergence: N WebSocket agents on 2 gateway nodes, from `PUT /api/v1/configs/...` until
every agent has reported APPLIED.

Starts a redis-server and two gateway processes sharing one SQLite file (all on loopback, on free
ports), connects the agents alternately to the two nodes, then changes one config `--changes` times,
always through node B's admin API. Each agent applies a pushed config at once and reports
`RemoteConfigStatus{APPLIED, hash}`. Per change, per agent: seconds from just before the PUT is sent
to the agent sending APPLIED (client clock; everything is on one machine). The admin API's rollout
must then show every agent applied, or the run is INVALID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from bench import fleet, targets
from bench.targets import HOST, REPO_ROOT, TargetError
from gateway.proto import opamp_pb2 as pb
from harness.admin import admin
from harness.agent import SimAgent

logger = logging.getLogger("bench.config_push")

CONFIG_NAME = "bench-collectors"
CONNECT_CONCURRENCY = 200


@dataclass(frozen=True)
class ConfigPushConfig:
    agents: int = 5000
    changes: int = 3
    # Most seconds to wait for one change to converge before the run is INVALID.
    timeout: float = 60.0
    results_dir: Path = REPO_ROOT / "bench" / "results"


@dataclass
class _Agent:
    agent: SimAgent
    ws: ClientConnection | None = None
    # config hash -> client time the APPLIED report was sent
    applied_at: dict[bytes, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _cluster(workdir: Path) -> Iterator[list[tuple[int, int]]]:
    """redis-server and two gateway nodes; yields [(opamp_port, admin_port)] for nodes A and B."""
    with (
        targets.redis_server(workdir) as redis,
        targets.nodes(
            workdir, ["bench-a", "bench-b"], {}, sqlite_path=workdir / "gateway.db", redis_url=redis.url
        ) as started,
    ):
        yield [(node.opamp_port, node.admin_port) for node in started]


async def _serve_agent(agent: _Agent) -> None:
    """Answer every pushed config with APPLIED, at once."""
    assert agent.ws is not None
    async for data in agent.ws:
        if not isinstance(data, bytes) or data[:1] != b"\x00":
            agent.errors.append(f"unexpected frame {data[:16]!r}")
            continue
        reply = pb.ServerToAgent.FromString(data[1:])
        if reply.HasField("error_response"):
            agent.errors.append(reply.error_response.error_message)
        if not reply.HasField("remote_config"):
            continue
        digest = reply.remote_config.config_hash
        # APPLIED alone, without APPLYING first: one report per agent and change to wait for.
        report = agent.agent.config_status(digest, pb.RemoteConfigStatuses_APPLIED)
        await agent.ws.send(b"\x00" + report.SerializeToString())
        agent.applied_at.setdefault(digest, time.perf_counter())


async def _connect(agent: _Agent, port: int, gate: asyncio.Semaphore) -> None:
    async with gate:
        ws = await connect(
            f"ws://{HOST}:{port}/v1/opamp", compression=None, max_size=None, ping_interval=None
        )
        await ws.send(b"\x00" + agent.agent.full_report().SerializeToString())
        data = await ws.recv()
        if not isinstance(data, bytes):
            raise TargetError(f"enrollment answered with a text frame: {data[:100]!r}")
        first = pb.ServerToAgent.FromString(data[1:])
        if first.HasField("error_response"):
            raise TargetError(f"enrollment refused: {first.error_response.error_message}")
        agent.ws = ws


def _config_body(change: int) -> dict[str, Any]:
    return {
        "selector": {"match": {"service.name": "otelcol-contrib"}},
        "files": {
            "collector.yaml": {
                "content_type": "text/yaml",
                "body": f"exporters:\n  debug:\n    verbosity: basic\n# change {change}\n",
            }
        },
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _run_async(config: ConfigPushConfig, nodes: list[tuple[int, int]]) -> dict[str, Any]:
    agents = [_Agent(a) for a in fleet.make_fleet(config.agents, seed=7)]
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    started = time.perf_counter()
    await asyncio.gather(*(_connect(a, nodes[i % 2][0], gate) for i, a in enumerate(agents)))
    logger.info(
        "%d agents connected in %.1f s (half on each node)", len(agents), time.perf_counter() - started
    )
    servers = [asyncio.create_task(_serve_agent(a)) for a in agents]
    admin_b = nodes[1][1]
    changes: list[dict[str, Any]] = []
    valid = True
    try:
        for change in range(1, config.changes + 1):
            sent = time.perf_counter()
            status, body = await asyncio.to_thread(
                admin, admin_b, "PUT", f"/api/v1/configs/{CONFIG_NAME}", _config_body(change)
            )
            if status not in (200, 201):
                raise TargetError(f"PUT failed: HTTP {status}: {body}")
            deadline = sent + config.timeout
            digest: bytes | None = None
            while time.perf_counter() < deadline:
                hashes = {h for a in agents for h in a.applied_at if h not in _seen(changes)}
                if len(hashes) == 1:
                    digest = next(iter(hashes))
                    if all(digest in a.applied_at for a in agents):
                        break
                await asyncio.sleep(0.01)
            done = [
                a.applied_at[digest] - sent for a in agents if digest is not None and digest in a.applied_at
            ]
            rollout = await _settled_rollout(nodes[0][1], len(agents))
            ok = len(done) == len(agents) and rollout is not None and rollout["applied"] == len(agents)
            valid &= ok
            result = {
                "change": change,
                "version": body["version"],
                "hash": digest.hex() if digest else None,
                "applied": len(done),
                "p50_ms": round(1000 * statistics.median(done), 1) if done else None,
                "p99_ms": round(1000 * _percentile(done, 0.99), 1) if done else None,
                "max_ms": round(1000 * max(done), 1) if done else None,
                "rollout": rollout,
                "valid": ok,
            }
            changes.append(result)
            logger.info(
                "change %d: %d/%d applied, p50 %s ms, p99 %s ms, max %s ms%s",
                change, len(done), len(agents), result["p50_ms"], result["p99_ms"], result["max_ms"],
                "" if ok else "  INVALID",
            )  # fmt: skip
            await asyncio.sleep(1.0)
    finally:
        for task in servers:
            task.cancel()
        await asyncio.gather(*servers, return_exceptions=True)
        await asyncio.gather(*(a.ws.close() for a in agents if a.ws is not None), return_exceptions=True)
    errors = [e for a in agents for e in a.errors]
    return {
        "agents": len(agents),
        "nodes": 2,
        "changes": changes,
        "errors": errors[:20],
        "valid": valid and not errors,
    }


async def _settled_rollout(admin_port: int, expected: int) -> dict[str, int] | None:
    """The config's rollout from node A once it shows every agent applied (the APPLIED reports are
    still on their way to the store when the last agent sends its own), or the last one seen."""
    rollout: dict[str, int] | None = None
    deadline = time.perf_counter() + 10.0
    while time.perf_counter() < deadline:
        status, body = await asyncio.to_thread(admin, admin_port, "GET", f"/api/v1/configs/{CONFIG_NAME}")
        if status == 200:
            rollout = body["rollout"]
            if rollout is not None and rollout["applied"] == expected:
                break
        await asyncio.sleep(0.2)
    return rollout


def _seen(changes: list[dict[str, Any]]) -> set[bytes]:
    return {bytes.fromhex(c["hash"]) for c in changes if c["hash"]}


def run(config: ConfigPushConfig) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-config-push-") as tmp, _cluster(Path(tmp)) as nodes:
        result = asyncio.run(_run_async(config, nodes))
    config.results_dir.mkdir(parents=True, exist_ok=True)
    path = config.results_dir / f"config-push-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    result["path"] = str(path)
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        f"Config convergence: {result['agents']} WebSocket agents on {result['nodes']} gateway nodes "
        "(PUT on node B until every agent sent APPLIED)",
        f"{'change':>6} {'applied':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  rollout",
    ]
    for c in result["changes"]:
        lines.append(
            f"{c['change']:>6} {c['applied']:>9} {c['p50_ms']!s:>8} {c['p99_ms']!s:>8} {c['max_ms']!s:>8}  "
            f"{'ok' if c['valid'] else 'INVALID'} {c['rollout']}"
        )
    if result["errors"]:
        lines.append(f"agent errors: {result['errors']}")
    lines.append("VALID" if result["valid"] else "INVALID")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    defaults = ConfigPushConfig()
    parser = argparse.ArgumentParser(prog="python -m bench config", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--agents", type=int, default=defaults.agents, help="WebSocket agents (default %(default)s)"
    )
    parser.add_argument(
        "--changes", type=int, default=defaults.changes, help="config changes (default %(default)s)"
    )
    parser.add_argument("--timeout", type=float, default=defaults.timeout, help="seconds per change at most")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run(ConfigPushConfig(agents=args.agents, changes=args.changes, timeout=args.timeout))
    print(table(result))
    print(f"results: {result['path']}")
    return 0 if result["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
