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
from gateway.node.parts import NodeParts
from gateway.node.presence import Presence


class OpampNode(NodeParts, Protocol):
    @property
    def limits(self) -> Limits: ...

    @property
    def presence(self) -> Presence: ...

    @property
    def mint_uid(self) -> Callable[[], bytes]: ...


def attach(app: Starlette, node: OpampNode) -> None:
    app.state.opamp_node = node


def node_of(connection: HTTPConnection) -> OpampNode:
    """The node serving this request or WebSocket."""
    node: OpampNode = connection.app.state.opamp_node
    return node
