"""Run a gateway node in the test's own event loop, on real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from gateway import settings as settings_mod
from gateway.bus.base import Bus
from gateway.server import build_servers
from gateway.services import Services, running
from gateway.store.base import Store
from harness.ports import free_port


def agent_keys_file(tmp_path: Path, keys: dict[str, str]) -> str:
    """An --agent-keys-file of `key id: key` lines in the test's directory; its path."""
    path = tmp_path / "agent-keys"
    path.write_text("".join(f"{key_id}:{key}\n" for key_id, key in keys.items()))
    return str(path)


@dataclass
class Node:
    services: Services
    opamp_url: str
    admin_url: str


@contextlib.asynccontextmanager
async def run_node(
    tmp_path: Path,
    *,
    store: Store | None = None,
    bus: Bus | None = None,
    wake: Callable[[], None] | None = None,
    **overrides: Any,
) -> AsyncIterator[Node]:
    values: dict[str, Any] = {
        "port": free_port(),
        "admin_port": free_port(),
        "sqlite_path": str(tmp_path / "gateway.db"),
        "node_id": "test-node",
        "flush_interval": 0.05,
    }
    values.update(overrides)
    s = settings_mod.Settings(**values)
    async with running(s, store=store, bus=bus) as services:
        servers = build_servers(services, wake=wake)
        tasks = [asyncio.create_task(server.serve()) for server in servers]
        try:
            await _wait_started(servers, tasks)
            yield Node(
                services=services,
                opamp_url=f"http://127.0.0.1:{s.port}",
                admin_url=f"http://127.0.0.1:{s.admin_port}",
            )
        finally:
            for server in servers:
                server.should_exit = True
            await asyncio.gather(*tasks, return_exceptions=True)


async def _wait_started(servers: list[uvicorn.Server], tasks: list[asyncio.Task[None]]) -> None:
    for _ in range(500):
        if all(server.started for server in servers):
            return
        for task in tasks:
            if task.done():
                task.result()
                raise RuntimeError("a test server stopped during start-up")
        await asyncio.sleep(0.01)
    raise TimeoutError("test servers did not start within 5 s")


@contextlib.contextmanager
def node_in_thread(tmp_path: Path, **overrides: Any) -> Iterator[Node]:
    """A node on its own event loop in a thread, for synchronous tests (hypothesis, subprocess clients)."""
    started: queue.Queue[Node | BaseException] = queue.Queue()
    stop = threading.Event()

    async def _main() -> None:
        try:
            async with run_node(tmp_path, **overrides) as node:
                started.put(node)
                while not stop.is_set():
                    await asyncio.sleep(0.02)
        except BaseException as exc:  # handed to the test thread, which re-raises it
            started.put(exc)
            raise

    thread = threading.Thread(target=asyncio.run, args=(_main(),), daemon=True)
    thread.start()
    result = started.get(timeout=10)
    if isinstance(result, BaseException):
        raise result
    try:
        yield result
    finally:
        stop.set()
        thread.join(timeout=15)
