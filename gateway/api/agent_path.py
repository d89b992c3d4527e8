"""The agent a route's `{instance_uid}` names: one lookup, and one 404/503, for every route on one
agent."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.api.context import AdminNode
from gateway.api.errors import error, store_down
from gateway.fleet.agent import AgentState, InvalidInstanceUid, uid_bytes
from gateway.store.base import StoreError


async def path_agent(request: Request, node: AdminNode, *, fresher: bool = True) -> AgentState | JSONResponse:
    """The stored agent (following a moved uid), or the response that says why there is none.
    `fresher`: overlay what this node's sockets saw since the last write (the liveness cache)."""
    text = request.path_params["instance_uid"]
    try:
        uid = uid_bytes(text)
    except InvalidInstanceUid:
        return error(404, f"no agent {text!r}: instance_uid must be a canonical UUID string")
    try:
        state = await node.writer.get(uid)
    except StoreError as exc:
        return store_down(exc)
    if fresher:
        state = node.liveness.fresher(state)
    if state is None:
        return error(404, f"no agent {text}")
    return state
