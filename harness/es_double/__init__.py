"""A wire-level test double of the Elasticsearch endpoints the gateway uses.

A real HTTP server (uvicorn on a free loopback port, on its own thread) that the official
`AsyncElasticsearch` client talks to. It implements exactly what the gateway and `migrate` send
(bulk, mget, get/index/delete by id, search with the queries and aggregations the admin API uses,
index templates, indices, aliases, settings, reindex, delete-by-query (by_query.py), refresh), with
Elasticsearch's response shapes, headers and error bodies, and its refresh semantics: GET and mget
are realtime, searches see only what the last refresh made visible (every `index.refresh_interval`,
or `?refresh`).

    with EsDouble() as es:
        es.url                       # http://127.0.0.1:<port>
        es.faults.reject_bulk_items = 5
        es.stats.requests["bulk"]
        es.down(); es.up()           # connection refused in between

Elasticsearch cannot run on the test machines; the contract suite runs against a real cluster
instead when OPAMP_GATEWAY_TEST_ES_URL is set (docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from types import TracebackType

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

from harness.es_double.cluster import Cluster
from harness.es_double.faults import Faults, Stats
from harness.es_double.server import MAX_CONTENT_LENGTH, Handler
from harness.ports import free_port

__all__ = ["EsDouble", "Faults", "Stats"]

_METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD"]
_TICK = 0.02


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


class EsDouble:
    def __init__(
        self, *, serverless: bool = False, max_content_length: int = MAX_CONTENT_LENGTH, major: int = 9
    ) -> None:
        """`serverless`: behave as Elastic Cloud Serverless (build flavor, refused settings);
        `max_content_length`: http.max_content_length (100 MiB); `major`: answer as that version
        (8: refuses the 9 client's media type, as an Elasticsearch 8 node does)."""
        self.cluster = Cluster(serverless=serverless)
        self.handler = Handler(self.cluster, max_content_length, major)
        self.port = free_port()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def faults(self) -> Faults:
        return self.handler.faults

    @property
    def stats(self) -> Stats:
        return self.handler.stats

    def __enter__(self) -> EsDouble:
        self.up()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()

    def up(self) -> None:
        """Start serving (again, on the same port, with the same data)."""
        if self._server is not None:
            return
        app = Starlette(routes=[Route("/{path:path}", self.handler.handle, methods=_METHODS)])
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=1,
            # Elasticsearch sends neither.
            server_header=False,
            date_header=False,
        )
        server = self._server = _Server(config)
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(server),), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the Elasticsearch double did not start on port {self.port}")
            time.sleep(0.01)

    def down(self) -> None:
        """Stop serving: connections are refused until up()."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout=10)

    async def _serve(self, server: _Server) -> None:
        refresher = asyncio.create_task(self._refresh_periodically())
        try:
            await server.serve()
        finally:
            refresher.cancel()

    async def _refresh_periodically(self) -> None:
        while True:
            await asyncio.sleep(_TICK)
            now = time.monotonic()
            with self.cluster.lock:
                for index in self.cluster.indices.values():
                    interval = index.refresh_interval
                    if interval is not None and now - index.refreshed_at >= interval:
                        index.refresh()

    def refresh(self) -> None:
        """Refresh every index now (what `POST /_refresh` does)."""
        with self.cluster.lock:
            for index in self.cluster.indices.values():
                index.refresh()
