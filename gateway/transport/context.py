"""What the OpAMP transports use of the running node: a port that services.py's `Services` fills.

The transports never import the composition root; app.py attaches the node to the OpAMP app with
`attach`, which is where mypy checks that the node offers all of this.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from starlette.applications import Starlette
from starlette.requests import HTTPConnection

from gateway.limits import Limits
from gateway.metrics import Metrics
from gateway.node.config_cache import ConfigCache
from gateway.node.drain import Drain
from gateway.node.presence import Presence
from gateway.node.registry import Registry
from gateway.settings import Settings
from gateway.store.writer import Writer


class OpampNode(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def limits(self) -> Limits: ...

    @property
    def writer(self) -> Writer: ...

    @property
    def registry(self) -> Registry: ...

    @property
    def presence(self) -> Presence: ...

    @property
    def config_cache(self) -> ConfigCache: ...

    @property
    def drain(self) -> Drain: ...

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def mint_uid(self) -> Callable[[], bytes]: ...


def attach(app: Starlette, node: OpampNode) -> None:
    app.state.opamp_node = node


def node_of(connection: HTTPConnection) -> OpampNode:
    """The node serving this request or WebSocket."""
    node: OpampNode = connection.app.state.opamp_node
    return node
