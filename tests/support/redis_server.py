"""The `redis_factory` fixture's bookkeeping: every redis-server (harness.redis_server) a session
started, so that all are stopped at its end."""

from __future__ import annotations

from pathlib import Path

from harness.redis_server import RedisServer


class RedisFactory:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[RedisServer] = []

    def __call__(self) -> RedisServer:
        server = RedisServer(self.workdir, name=f"redis-{len(self.servers) + 1}")
        self.servers.append(server)
        server.start()
        return server

    def close(self) -> None:
        for server in self.servers:
            server.stop()
