"""The per-agent credentials part of the admin API's OpenAPI document (see openapi.py)."""

from __future__ import annotations

from typing import Any

from gateway.api.openapi_parts import Schema, responses
from gateway.fleet.credentials import KINDS

# The fields every Agent carries (fleet/render.py credential_json), also the answer of both routes.
AGENT_PROPERTIES: dict[str, Schema] = {
    "credential": {
        "enum": list(KINDS),
        "description": "what the agent speaks with: shared (the agent keys), per_agent (a credential of "
        "its own, the only one accepted for its uid), revoked (nothing is accepted for its uid)",
    },
    "credential_pending": {
        "type": "boolean",
        "description": "a new credential was offered to the agent and it has not used it yet",
    },
    "credential_rotation_requested": {
        "type": "boolean",
        "description": "an operator asked for a new credential; it is minted at the agent's next message",
    },
}
_UID: Schema = {
    "type": "string",
    "format": "uuid",
    "description": "canonical UUID of the 16-byte instance_uid",
}
_UID_PARAM = {
    "name": "instance_uid",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "the agent's instance_uid as a canonical UUID string (an old, moved uid finds the record)",
}
_UNAUTHORIZED = ("No or a wrong admin token", "Error")
_NOT_FOUND = ("No such agent", "Error")
_STORE_DOWN = ("The store is unavailable; retry after Retry-After seconds", "Error")

SCHEMAS: dict[str, Schema] = {
    "AgentCredential": {
        "type": "object",
        "required": ["instance_uid", *AGENT_PROPERTIES],
        "properties": {"instance_uid": _UID, **AGENT_PROPERTIES},
        "description": "an agent's credential state: never a credential or its digest",
    }
}

PATHS: dict[str, dict[str, dict[str, Any]]] = {
    "/api/v1/agents/{instance_uid}/credentials/rotate": {
        "post": {
            "operationId": "rotateAgentCredential",
            "summary": "Mint and offer the agent a new credential of its own",
            "description": "Per-agent credentials (--agent-credentials per-agent): a new credential is "
            "offered in connection_settings.opamp, at once over the agent's WebSocket (on any node) or "
            "in the reply to its next message. The credential it has stays accepted until it connects "
            "with the new one, or reports the offer APPLIED; then only the new one is. For a revoked "
            "agent, rotate lets it back: its next message with an agent key is accepted and gets a new "
            "credential (docs/security.md).",
            "parameters": [_UID_PARAM],
            "responses": responses(
                {
                    202: ("The rotation is requested", "AgentCredential"),
                    401: _UNAUTHORIZED,
                    404: _NOT_FOUND,
                    409: (
                        "Per-agent credentials are off on this node, or the agent does not accept "
                        "opamp connection settings",
                        "Error",
                    ),
                    503: _STORE_DOWN,
                }
            ),
        }
    },
    "/api/v1/agents/{instance_uid}/credentials": {
        "delete": {
            "operationId": "revokeAgentCredentials",
            "summary": "Revoke every credential of the agent's uid",
            "description": "From its next message, nothing is accepted for the uid: neither its own "
            "credential (401 on the request or upgrade) nor an agent key (401, WebSocket close 1008); "
            "its WebSocket, on any node, is closed at once (1008). It stays revoked until an operator "
            "rotates its credential (it may then enroll again with an agent key) or deletes the agent.",
            "parameters": [_UID_PARAM],
            "responses": responses(
                {
                    200: ("Revoked (also when it already was)", "AgentCredential"),
                    401: _UNAUTHORIZED,
                    404: _NOT_FOUND,
                    503: _STORE_DOWN,
                }
            ),
        }
    },
}
