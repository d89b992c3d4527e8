"""PUT /api/v1/agents/{instance_uid}/key: move an agent to another agent key (docs/security.md).

An agent is bound to the key (or key group) that enrolled it; only an operator moves it. The record
is rebound first, then the agent's socket, wherever it is, is closed so that the agent authenticates
again and its next message is checked against the new binding.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from gateway.api.context import node_of
from gateway.api.errors import error, store_unavailable
from gateway.auth import valid_key_id
from gateway.fleet.agent import InvalidInstanceUid, uid_bytes, uid_str
from gateway.fleet.configs import shown_key
from gateway.store.base import StoreError
from gateway.store.writer import WriterFull, WriterStopped

# {"key_id": "<a 64-character group name>"} with room for whitespace; anything longer is not one.
_MAX_BODY = 1024


class _BadBody(ValueError):
    """The request body is not {"key_id": <key id or null>}; the message names the field."""


async def _read(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _MAX_BODY:
            raise _BadBody(f"body: larger than {_MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _key_id(raw: bytes, known: frozenset[str] | None) -> str:
    """The key id asked for ("" for null: bound to no key). `known`: the key ids configured on this
    node (None with agent keys off, when any well-formed id is taken)."""
    try:
        body: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _BadBody(f"body: not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _BadBody('body: must be a JSON object {"key_id": "..."}')
    unknown = sorted(k for k in body if k != "key_id")
    if unknown:
        raise _BadBody(f"{shown_key(unknown[0])}: unknown field; only key_id is accepted")
    if "key_id" not in body:
        raise _BadBody("key_id: required (a key id, or null to bind the agent to no key)")
    value = body["key_id"]
    if value is None:
        return ""
    if not isinstance(value, str) or not valid_key_id(value):
        raise _BadBody(
            "key_id: must be a key group name (1-64 of A-Z a-z 0-9 . _ -) or sha256: and 12 hex digits"
        )
    if known is not None and value not in known:
        raise _BadBody(f"key_id: no agent key with id {value!r} is configured on this node")
    return value


async def move_agent_key(request: Request) -> Response:
    """200 with the agent's uid and its new key id once the record is rebound and its socket closed."""
    services = node_of(request)
    text = request.path_params["instance_uid"]
    try:
        uid = uid_bytes(text)
    except InvalidInstanceUid:
        return error(404, f"no agent {text!r}: instance_uid must be a canonical UUID string")
    agents = services.auth.agents
    try:
        key_id = _key_id(await _read(request), agents.key_ids if agents.enabled else None)
    except _BadBody as exc:
        return error(400, str(exc))
    except ClientDisconnect:
        return Response(status_code=400)
    try:
        state = await services.router.rebind(uid, key_id)
    except (StoreError, WriterFull, WriterStopped) as exc:
        return store_unavailable(f"could not store the agent's key: {exc}")
    if state is None:
        return error(404, f"no agent {text}")
    return JSONResponse({"instance_uid": uid_str(state.instance_uid), "key_id": state.key_id or None})
