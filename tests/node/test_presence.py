"""Owner records against a bus that is slow to take claims: a refresh never closes a connection
whose claim has not reached the bus yet (an agent that reconnected to the same node)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import pytest

from gateway.bus.base import Owner
from gateway.node.presence import Presence
from gateway.node.registry import Registry

pytestmark = pytest.mark.anyio


class _Conn:
    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self.taken: list[str] = []

    async def taken_over(self, uid: bytes, where: str) -> None:
        self.taken.append(where)


class _SlowBus:
    """Claims wait for `release_claims`; the store of owners is what Redis would hold."""

    up = True

    def __init__(self) -> None:
        self.owners: dict[bytes, Owner] = {}
        self.release_claims = asyncio.Event()

    async def claim(self, claims: Sequence[tuple[bytes, Owner]]) -> list[Owner | None]:
        await self.release_claims.wait()
        previous = [self.owners.get(uid) for uid, _ in claims]
        self.owners.update(claims)
        return previous

    async def release(self, releases: Sequence[tuple[bytes, Owner]]) -> None:
        for uid, owner in releases:
            if self.owners.get(uid) == owner:
                del self.owners[uid]

    async def refresh(self, claims: Sequence[tuple[bytes, Owner]]) -> list[bytes]:
        return [uid for uid, owner in claims if self.owners.setdefault(uid, owner) != owner]

    async def send(self, node: str, event: Any) -> int:
        return 0

    async def beat(self, load: int) -> None:
        self.load = load


async def test_a_refresh_skips_claims_not_yet_sent_and_still_finds_real_takeovers() -> None:
    registry, bus = Registry(), _SlowBus()
    presence = Presence("node-a", registry, bus, owner_ttl=30, node_ttl=6)  # type: ignore[arg-type]
    await presence.start()
    try:
        agent, other = b"\x01" * 16, b"\x02" * 16
        # Redis still names this node's previous connection to `agent` ...
        bus.owners[agent] = Owner(node="node-a", epoch="old")
        # ... and another node has taken `other`.
        bus.owners[other] = Owner(node="node-b", epoch="b1")
        # Only epoch and taken_over are used here; the rest of Holder is about sending.
        new, stolen = cast(Any, _Conn("new")), cast(Any, _Conn("s1"))
        registry.register(agent, new)
        presence.claim(agent, new)
        registry.register(other, stolen)
        await presence.refresh()
        assert new.taken == [], "the reconnected agent was closed by its own stale owner record"
        assert stolen.taken == ["another node"]
        bus.release_claims.set()
        await presence.settle()
        assert bus.owners[agent] == Owner(node="node-a", epoch="new")
        # Once the claim is sent, the connection is refreshed like any other.
        await presence.refresh()
        assert new.taken == []
    finally:
        bus.release_claims.set()
        await presence.stop()
