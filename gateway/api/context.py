"""What the admin API and the health endpoints use of the running node: a port that services.py's
`Services` fills.

The handlers never import the composition root; app.py attaches the node to each app with `attach`,
which is where mypy checks that the node offers all of this.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from starlette.applications import Starlette
from starlette.requests import HTTPConnection

from gateway.bus.base import Bus
from gateway.metrics import Metrics
from gateway.node.config_cache import ConfigCache
from gateway.node.drain import Drain
from gateway.node.registry import Registry
from gateway.node.routing import Router
from gateway.settings import Settings
from gateway.store.base import Store
from gateway.store.writer import Writer


class AdminNode(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def store(self) -> Store: ...

    @property
    def writer(self) -> Writer: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def bus(self) -> Bus: ...

    @property
    def registry(self) -> Registry: ...

    @property
    def config_cache(self) -> ConfigCache: ...

    @property
    def router(self) -> Router: ...

    @property
    def drain(self) -> Drain: ...

    @property
    def clock(self) -> Callable[[], float]: ...


def attach(app: Starlette, node: AdminNode) -> None:
    app.state.admin_node = node


def node_of(connection: HTTPConnection) -> AdminNode:
    """The node serving this request."""
    node: AdminNode = connection.app.state.admin_node
    return node
