"""The storage port: what the gateway needs from a place that keeps agent records.

Adapters (sqlite.py now, elasticsearch.py later) implement `Store`; tests/store/test_contract.py
runs one suite over every adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.fleet.agent import AgentState, AgentWrite
from gateway.fleet.status import Status

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


class StoreError(Exception):
    """The store could not do what was asked (unreachable, locked past the timeout, corrupt)."""


class StoreUnavailable(StoreError):
    """A transient failure: the caller should shed load and let the agent retry later."""


class InvalidCursor(ValueError):
    """A pagination cursor that this store did not issue."""


@dataclass(frozen=True)
class AgentQuery:
    status: Status | None = None
    # Case-insensitive substring over the uid and every attribute value.
    q: str | None = None
    # attribute key -> exact text value; identifying and non-identifying attributes both match.
    attributes: dict[str, str] = field(default_factory=dict)
    limit: int = DEFAULT_PAGE_SIZE
    # Opaque token from the previous page's `next_cursor`.
    cursor: str | None = None


@dataclass(frozen=True)
class AgentPage:
    agents: list[AgentState]
    next_cursor: str | None


@dataclass(frozen=True)
class FleetSummary:
    total: int
    by_status: dict[str, int]
    # "service.name service.version" pairs, e.g. {"otelcol-contrib": {"0.120.0": 3}}
    by_type_version: dict[str, dict[str, int]]
    by_os: dict[str, int]


class Store(Protocol):
    async def open(self) -> None:
        """Connect and check the schema; raise StoreError naming what to do if it is unusable."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise StoreError if the store cannot serve right now (readiness)."""

    async def get(self, uid: bytes) -> AgentState | None:
        """The record stored under `uid`, or the record `uid` was moved to, or None."""

    async def write(self, writes: Sequence[AgentWrite]) -> None:
        """Apply a batch atomically. A write never moves a record backwards: a write whose
        `last_seen` is older than the stored one is dropped. A write with `previous_uid` deletes
        that row and records it as an alias of the new uid."""

    async def list_agents(self, query: AgentQuery, now: float, offline_after: float) -> AgentPage:
        """Agents matching the query in a stable order, one page at a time."""

    async def summary(self, now: float, offline_after: float) -> FleetSummary: ...
