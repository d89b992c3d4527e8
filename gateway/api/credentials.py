"""An agent's own credential (per-agent credentials, docs/security.md):

- POST /api/v1/agents/{instance_uid}/credentials/rotate: a new credential is minted and offered (at
  once over the agent's WebSocket, on whichever node holds it; at its next message otherwise); the
  one it has stays accepted until it uses the new one, or reports the offer applied. For a revoked
  agent: it may enroll again with an agent key, and gets a new credential then.
- DELETE /api/v1/agents/{instance_uid}/credentials: nothing is accepted for the uid any more (neither
  a credential nor an agent key), from its next message; its WebSocket, on any node, is closed at once.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api.agent_path import path_agent
from gateway.api.context import node_of
from gateway.api.errors import error, store_down
from gateway.fleet.agent import uid_str
from gateway.fleet.credentials import AgentCredential
from gateway.fleet.render import credential_json
from gateway.node.credentials import NotOffered
from gateway.store.base import StoreError


def _body(uid: bytes, record: AgentCredential | None) -> dict[str, Any]:
    return {"instance_uid": uid_str(uid), **credential_json(record)}


async def rotate_credential(request: Request) -> Response:
    """202: the new credential is on its way to the agent (or will be, at its next message)."""
    services = node_of(request)
    state = await path_agent(request, services, fresher=False)
    if isinstance(state, JSONResponse):
        return state
    try:
        record = await services.credentials.rotate(state.instance_uid, state.capabilities)
    except NotOffered as exc:
        return error(409, str(exc), "not_offered")
    except StoreError as exc:
        return store_down(exc)
    return JSONResponse(_body(state.instance_uid, record), status_code=202)


async def revoke_credentials(request: Request) -> Response:
    """200 once the uid's credentials are revoked (idempotent) and its socket here closed (the node
    holding it elsewhere closes it when the bus tells it)."""
    services = node_of(request)
    state = await path_agent(request, services, fresher=False)
    if isinstance(state, JSONResponse):
        return state
    try:
        record = await services.credentials.revoke(state.instance_uid)
    except StoreError as exc:
        return store_down(exc)
    return JSONResponse(_body(state.instance_uid, record))
