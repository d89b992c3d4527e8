"""`python -m bench.sweep_cost`: what one command sweep costs a node, the first way (a realtime read of
every agent on the node's sockets, all started in one event-loop turn) against the current one (one
`Store.pending_commands` query).

Each store is filled with `--agents` records as a collector reports them (description, health, a
500-byte effective config), 3 of them with a command waiting. For each way, the median of `--runs`
sweeps of: wall time, process CPU time (every thread, so SQLite's read threads and the in-process
Elasticsearch double count too), and the longest gap a 1 ms ticker on the loop saw (the stall every
other agent on the node waits through). The Elasticsearch rows run on the wire-level double in this
process: its own work competes for the GIL, so only the request counts carry over to a cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path

from gateway import settings as settings_mod
from gateway.fleet.agent import AgentWrite
from gateway.migrate import run as migrate
from gateway.store.base import MAX_PENDING_COMMANDS, Store
from gateway.store.elasticsearch import ElasticsearchStore
from gateway.store.elasticsearch_client import make_client
from gateway.store.sqlite import SQLiteStore
from harness.es_double import EsDouble
from harness.records import agent, effective_config, full

_WAITING = 3
_CONFIG = "receivers:\n  otlp: {}\n" * 20
_TICK = 0.001


async def _longest_gap(stop: asyncio.Event) -> float:
    worst = 0.0
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(_TICK)
        now = time.perf_counter()
        worst = max(worst, now - last)
        last = now
    return worst


async def _once(sweep: Callable[[], Awaitable[object]]) -> tuple[float, float, float]:
    stop = asyncio.Event()
    ticker = asyncio.create_task(_longest_gap(stop))
    await asyncio.sleep(0.01)
    cpu, wall = time.process_time(), time.perf_counter()
    await sweep()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stop.set()
    return wall, cpu, await ticker


async def _fill(store: Store, count: int) -> list[bytes]:
    fleet = [agent(last_seen=1000.0 + i, effective_config=effective_config(_CONFIG)) for i in range(count)]
    for start in range(0, count, 1000):
        await store.write([full(a) for a in fleet[start : start + 1000]])
    named = frozenset({"pending_command"})
    await store.write([AgentWrite(replace(a, pending_command=0), named) for a in fleet[:_WAITING]])
    return [a.instance_uid for a in fleet]


async def _compare(store: Store, uids: list[bytes], runs: int) -> dict[str, list[float]]:
    async def before() -> None:
        await asyncio.gather(*(store.get(uid) for uid in uids), return_exceptions=True)

    async def now() -> None:
        found = await store.pending_commands(MAX_PENDING_COMMANDS)
        assert len(found) == _WAITING, found

    out: dict[str, list[float]] = {}
    for name, sweep in (("before", before), ("now", now)):
        samples = [await _once(sweep) for _ in range(runs)]
        out[name] = [statistics.median(s[i] for s in samples) * 1000 for i in range(3)]
    return out


def _row(store: str, agents: int, result: dict[str, list[float]], requests: str) -> str:
    cells = [" / ".join(f"{v:.1f} ms" for v in result[k]) for k in ("before", "now")]
    return f"| {store}, {agents:,} | {cells[0]} | {cells[1]} | {requests} |"


async def _sqlite(agents: int, runs: int) -> str:
    with tempfile.TemporaryDirectory() as scratch:
        store = SQLiteStore(str(Path(scratch) / "gateway.db"))
        await store.open()
        try:
            result = await _compare(store, await _fill(store, agents), runs)
        finally:
            await store.close()
    reads = -(-agents // 500)  # the old batched get: one query per 500 uids
    return _row("SQLite", agents, result, f"1 query (was {reads})")


async def _elasticsearch(agents: int, runs: int) -> str:
    with EsDouble() as double:
        settings = settings_mod.load([f"--elasticsearch-url={double.url}"], {})
        await migrate(settings)
        # refresh=true: every write is searchable at once, as the sweep expects of a settled store.
        store = ElasticsearchStore(
            make_client(settings),
            agents_alias=settings.elasticsearch_agents_alias,
            configs_alias=settings.elasticsearch_configs_alias,
            refresh="true",
        )
        await store.open()
        try:
            uids = await _fill(store, agents)
            before = dict(double.stats.requests)
            result = await _compare(store, uids, runs)
            after = double.stats.requests
        finally:
            await store.close()
    mgets = (after["mget"] - before.get("mget", 0)) // runs
    searches = (after["search"] - before.get("search", 0)) // runs
    return _row("ES double", agents, result, f"{searches} `_search` (was {mgets} `_mget`s)")


async def _main(agents: Sequence[int], stores: Sequence[str], runs: int) -> None:
    way = "wall / CPU / loop stall"
    print(f"| Store, agents | Before: {way} | Now: {way} | Requests per sweep |")
    print("|---|---|---|---|")
    for count in agents:
        for kind in stores:
            row = await (_sqlite(count, runs) if kind == "sqlite" else _elasticsearch(count, runs))
            print(row, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[6000, 15000], help="agents on the node")
    parser.add_argument("--store", nargs="+", choices=("sqlite", "es"), default=["sqlite", "es"])
    parser.add_argument("--runs", type=int, default=5, help="sweeps per way (the median is shown)")
    args = parser.parse_args(argv)
    if min(args.agents) < _WAITING or args.runs < 1:
        parser.error(f"--agents must be at least {_WAITING} and --runs at least 1")
    asyncio.run(_main(args.agents, args.store, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
