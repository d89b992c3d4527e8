"""How an agent's status is derived from its record and the time."""

from __future__ import annotations

from typing import Literal

from gateway.fleet.agent import AgentState

Status = Literal["online", "offline", "disconnected", "unhealthy"]
STATUSES: tuple[Status, ...] = ("online", "offline", "disconnected", "unhealthy")


def derive_status(state: AgentState, healthy: bool | None, now: float, offline_after: float) -> Status:
    """`disconnected` (said goodbye) beats `offline` (went quiet) beats `unhealthy` beats `online`."""
    if state.disconnected:
        return "disconnected"
    if now - state.last_seen > offline_after:
        return "offline"
    if healthy is False:
        return "unhealthy"
    return "online"
