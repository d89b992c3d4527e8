"""Pushing to a connection this node holds: ask the engine's push decision for the agent's record as
the connection holds it, and let the connection send the result."""

from __future__ import annotations

from gateway.node.registry import Holder
from gateway.opamp.engine import FleetView
from gateway.opamp.push import command_push, config_push


async def push_command(conn: Holder, uid: bytes, command: int, fleet: FleetView) -> bool:
    """Send `command` to `uid` over `conn`; False if the agent does not accept it or is not there."""
    state = conn.state(uid)
    push = None if state is None else command_push(state, command, fleet)
    return push is not None and await conn.send(push)


async def push_config(conn: Holder, uid: bytes, fleet: FleetView, now: float) -> bool:
    """Send `uid` its desired remote config over `conn` if the engine's rules say it should get it now."""
    state = conn.state(uid)
    push = None if state is None else config_push(state, fleet, now)
    return push is not None and await conn.send(push)
