"""What the admin API and the health endpoints use of the running node: a port that services.py's
`Services` fills.

The handlers never import the composition root; app.py attaches the node to each app with `attach`,
which is where mypy checks that the node offers all of this.
"""

from __future__ import annotations

from typing import Protocol

from starlette.applications import Starlette
from starlette.requests import HTTPConnection

from gateway.auth import Auth
from gateway.bus.base import Bus
from gateway.node.parts import NodeParts
from gateway.node.rebalance import Rebalance
from gateway.node.rollouts import RolloutController
from gateway.node.routing import Router
from gateway.store.base import Store


class AdminNode(NodeParts, Protocol):
    @property
    def store(self) -> Store: ...

    @property
    def bus(self) -> Bus: ...

    @property
    def router(self) -> Router: ...

    @property
    def rebalance(self) -> Rebalance: ...

    @property
    def rollouts(self) -> RolloutController: ...

    @property
    def package_rollouts(self) -> RolloutController: ...

    @property
    def auth(self) -> Auth: ...


def attach(app: Starlette, node: AdminNode) -> None:
    app.state.admin_node = node


def node_of(connection: HTTPConnection) -> AdminNode:
    """The node serving this request."""
    node: AdminNode = connection.app.state.admin_node
    return node
