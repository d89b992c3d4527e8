"""Pushing to a connection this node holds: ask the engine's push decision for the agent's record as
the connection holds it, and let the connection send the result."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

from gateway.fleet.credentials import AgentCredential, Minted
from gateway.node.registry import Holder
from gateway.opamp.engine import FleetView
from gateway.opamp.push import command_push, config_push


class Missing:
    """Nothing is cached for the uid (CredentialRecords.peek)."""


MISSING: Final = Missing()


class CredentialRecords(Protocol):
    """The agents' credential records as a push needs them (gateway/node/credentials.py)."""

    mint: Callable[[bytes], Minted]

    def peek(self, uid: bytes) -> AgentCredential | None | Missing:
        """The cached record of `uid`, or MISSING."""

    async def commit(self, uid: bytes, expected: AgentCredential | None, new: AgentCredential | None) -> bool:
        """Compare-and-set the record of `uid`; False if it was not `expected`."""


async def push_command(conn: Holder, uid: bytes, command: int, fleet: FleetView) -> bool:
    """Send `command` to `uid` over `conn`; False if the agent does not accept it or is not there."""
    state = conn.state(uid)
    push = None if state is None else command_push(state, command, fleet)
    return push is not None and await conn.send(push)


async def push_config(
    conn: Holder, uid: bytes, fleet: FleetView, now: float, credentials: CredentialRecords | None = None
) -> bool:
    """Send `uid` its desired remote config (and connection settings offer) over `conn` if the engine's
    rules say it should get it now. With per-agent credentials the offer depends on the agent's
    credential record: without a cached one nothing is pushed (its next message gets it), and a
    credential minted for the push is stored before the push is sent (not sent if that fails)."""
    state = conn.state(uid)
    if state is None:
        return False
    record: AgentCredential | None = None
    if credentials is not None:
        cached = credentials.peek(uid)
        if isinstance(cached, Missing):
            return False
        record = cached
    push = config_push(state, fleet, now, record, credentials.mint if credentials is not None else _no_mint)
    if push is None:
        return False
    if push.credential is not None:
        assert credentials is not None
        if not await credentials.commit(uid, push.credential.expected, push.credential.new):
            return False
    return await conn.send(push)


def _no_mint(uid: bytes) -> Minted:
    raise AssertionError("a credential minted without the node's credential records")
