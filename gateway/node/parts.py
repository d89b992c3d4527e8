"""The parts of a running node that both the OpAMP transports and the admin API read: a port that
services.py's `Services` fills (transport/context.py and api/context.py add what each needs alone)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from gateway.metrics import Metrics
from gateway.node.config_cache import ConfigCache
from gateway.node.credentials import AgentCredentials
from gateway.node.drain import Drain
from gateway.node.liveness import Liveness
from gateway.node.registry import Registry
from gateway.settings import Settings
from gateway.store.writer import Writer


class NodeParts(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def writer(self) -> Writer: ...

    @property
    def registry(self) -> Registry: ...

    @property
    def config_cache(self) -> ConfigCache: ...

    @property
    def drain(self) -> Drain: ...

    @property
    def credentials(self) -> AgentCredentials: ...

    @property
    def liveness(self) -> Liveness: ...

    @property
    def clock(self) -> Callable[[], float]: ...
