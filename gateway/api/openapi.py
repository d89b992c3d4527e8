"""The admin port's OpenAPI 3.1 document, served at GET /api/v1/openapi.json.

Written by hand next to the routes it describes: PATHS has one entry per route and method of
gateway/app.py's admin app, and tests/api/test_openapi.py fails when a route is missing here (or an
entry has no route), and runs schemathesis against a live node with it. To document a new route, add
its schemas to SCHEMAS (if any) and one `_operation(...)` under its path in PATHS.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway import __version__
from gateway.api import (
    openapi_configs,
    openapi_credentials,
    openapi_packages,
    openapi_rollouts,
    openapi_settings,
)
from gateway.api.openapi_parts import Schema, ref
from gateway.fleet.credentials import KINDS
from gateway.fleet.package_status import PACKAGE_STATUSES
from gateway.fleet.rollout import CONFIG_STATUSES
from gateway.fleet.status import STATUSES
from gateway.store.base import MAX_PAGE_SIZE

PATH = "/api/v1/openapi.json"
# What gateway/auth.py's valid_key_id accepts.
_KEY_ID_PATTERN = "^sha256:[0-9a-f]{12}$|^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


_STRING_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
_COUNTS: Schema = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
_TIME: Schema = {"type": "string", "format": "date-time"}
_UID: Schema = {
    "type": "string",
    "format": "uuid",
    "description": "canonical UUID of the 16-byte instance_uid",
}

SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "ComponentHealth": {
        "type": "object",
        "required": ["healthy", "status", "last_error", "components"],
        "properties": {
            "healthy": {"type": "boolean"},
            "start_time": _nullable(_TIME),
            "last_error": {"type": "string"},
            "status": {"type": "string"},
            "status_time": _nullable(_TIME),
            "attributes": {"type": "object"},
            "components": {"type": "object", "additionalProperties": ref("ComponentHealth")},
        },
    },
    "ConfigFile": {
        "type": "object",
        "required": ["content_type", "body", "encoding"],
        "properties": {
            "content_type": {"type": "string"},
            "body": {"type": "string"},
            "encoding": {"enum": ["utf-8", "base64"]},
        },
    },
    "Component": {
        "type": "object",
        "required": ["metadata", "components"],
        "properties": {
            "metadata": {"type": "object"},
            "components": {"type": "object", "additionalProperties": ref("Component")},
        },
    },
    "Agent": {
        "type": "object",
        "required": [
            "instance_uid",
            "status",
            "enrolled_at",
            "last_seen",
            "sequence_num",
            "capabilities",
            "capabilities_bitmask",
            "description",
            "health",
            "effective_config",
            "remote_config",
            "connection_settings",
            "packages",
            "previous_instance_uids",
            "duplicate_of",
            "available_components",
            *openapi_credentials.AGENT_PROPERTIES,
        ],
        "properties": {
            "instance_uid": _UID,
            "moved_from": {"type": "string", "description": "the uid asked for, when the record has moved"},
            "status": {"enum": list(STATUSES)},
            "enrolled_at": _TIME,
            "last_seen": _TIME,
            "sequence_num": {"type": "integer", "minimum": 0},
            "capabilities": {"type": "array", "items": {"type": "string"}},
            "capabilities_bitmask": {"type": "integer", "minimum": 0},
            "description": {
                "type": "object",
                "required": ["identifying_attributes", "non_identifying_attributes"],
                "properties": {
                    "identifying_attributes": {"type": "object"},
                    "non_identifying_attributes": {"type": "object"},
                },
            },
            "health": _nullable(ref("ComponentHealth")),
            "effective_config": _nullable(
                {
                    "type": "object",
                    "required": ["hash", "files"],
                    "properties": {
                        "hash": {"type": "string"},
                        "files": {"type": "object", "additionalProperties": ref("ConfigFile")},
                    },
                }
            ),
            "remote_config": _nullable(
                {
                    "type": "object",
                    "required": ["status", "last_remote_config_hash", "error_message"],
                    "properties": {
                        "status": {"type": "string"},
                        "last_remote_config_hash": {"type": "string"},
                        "error_message": {"type": "string"},
                    },
                }
            ),
            "connection_settings": _nullable(
                {
                    "type": "object",
                    "description": "the agent's last connection_settings_status, and the hash of the "
                    "ConnectionSettingsOffers it was last offered",
                    "required": ["status", "last_connection_settings_hash", "error_message", "offered_hash"],
                    "properties": {
                        "status": {"enum": ["UNSET", "APPLIED", "APPLYING", "FAILED"]},
                        "last_connection_settings_hash": {"type": "string"},
                        "error_message": {"type": "string"},
                        "offered_hash": {"type": ["string", "null"]},
                    },
                }
            ),
            "connection_settings_sources": {
                "type": "object",
                "description": "present when any connection settings are stored: the name of the "
                "connection settings that gives each part of the agent's offer (own_metrics, own_traces, "
                "own_logs: only the parts its capabilities take), and of each other connection",
                "required": ["other_connections"],
                "properties": {
                    "own_metrics": {"type": "string"},
                    "own_traces": {"type": "string"},
                    "own_logs": {"type": "string"},
                    "other_connections": {"type": "object", "additionalProperties": {"type": "string"}},
                },
                "additionalProperties": False,
            },
            "packages": _nullable(ref("AgentPackages")),
            "package_sync": ref("PackageSync"),
            "previous_instance_uids": {"type": "array", "items": _UID},
            "duplicate_of": _nullable(
                {
                    **_UID,
                    "description": "the uid a live agent held when this one arrived with it: this agent is "
                    "its clone and was given a uid of its own",
                }
            ),
            "available_components": _nullable(
                {
                    "type": "object",
                    "description": "what the agent can run (ReportsAvailableComponents): the hash it "
                    "reported, and each component with its metadata and sub-components",
                    "required": ["hash", "components"],
                    "properties": {
                        "hash": {"type": "string", "description": "hex"},
                        "components": {"type": "object", "additionalProperties": ref("Component")},
                    },
                }
            ),
            "key_id": _nullable(
                {
                    "type": "string",
                    "description": "the id of the agent key (group) the agent is bound to, never the key; "
                    "null: bound to no key (enrolled while agent keys were off), adopted by the first key "
                    "that speaks for it",
                }
            ),
            **openapi_credentials.AGENT_PROPERTIES,
            "connected": {"type": "boolean"},
            "transport": _nullable({"enum": ["http", "websocket"]}),
            "node": _nullable({"type": "string"}),
            "pending_command": {"type": "string"},
            "command_id": _nullable({"type": "string"}),
            "oversized": {
                "type": "array",
                "items": {
                    "enum": [
                        "description",
                        "health",
                        "effective_config",
                        "remote_config_status",
                        "available_components",
                        "package_statuses",
                    ]
                },
                "description": "reported parts the store left out: the record would exceed its size bound",
            },
            "config_sync": ref("ConfigSync"),
        },
    },
    "AgentPage": {
        "type": "object",
        "required": ["agents", "next_cursor"],
        "properties": {
            "agents": {"type": "array", "items": ref("Agent")},
            "next_cursor": _nullable({"type": "string"}),
        },
    },
    "FleetSummary": {
        "type": "object",
        "required": ["total", "by_status", "by_type_version", "by_os"],
        "properties": {
            "total": {"type": "integer", "minimum": 0},
            "by_status": _COUNTS,
            "by_type_version": {"type": "object", "additionalProperties": _COUNTS},
            "by_os": _COUNTS,
            "websockets": {
                "type": "object",
                "required": ["connected", "by_node", "known"],
                "description": "WebSocket agents connected now, by live node (from the nodes' liveness "
                "records: a dead or hung node drops out within --node-ttl); known is false when the bus "
                "cannot tell about other nodes",
                "properties": {
                    "connected": {"type": "integer", "minimum": 0},
                    "by_node": _COUNTS,
                    "known": {"type": "boolean"},
                },
            },
        },
    },
    "CommandAccepted": {
        "type": "object",
        "required": ["instance_uid", "command", "delivery", "node", "command_id"],
        "properties": {
            "instance_uid": _UID,
            "command": {"const": "restart"},
            "delivery": {
                "enum": ["pushed", "pending"],
                "description": "stored on the agent's record, then pushed over a socket (this node's "
                "or the owning node's), or still pending for the agent's next message or reconnect",
            },
            "node": _nullable({"type": "string"}),
            "command_id": {"type": "string"},
        },
    },
    "KeyMove": {
        "type": "object",
        "required": ["key_id"],
        "additionalProperties": False,
        "properties": {
            "key_id": _nullable(
                {
                    "type": "string",
                    "pattern": _KEY_ID_PATTERN,
                    "description": "a key id configured on this node (a group name, or sha256: and 12 hex "
                    "digits); null binds the agent to no key",
                }
            )
        },
    },
    "KeyMoved": {
        "type": "object",
        "required": ["instance_uid", "key_id"],
        "properties": {"instance_uid": _UID, "key_id": _nullable({"type": "string"})},
    },
    "DrainStarted": {
        "type": "object",
        "required": ["status", "node", "websockets", "drain_seconds"],
        "properties": {
            "status": {"const": "draining"},
            "node": {"type": "string"},
            "websockets": {"type": "integer", "minimum": 0},
            "drain_seconds": {"type": "number", "minimum": 0},
        },
    },
    "RebalanceStarted": {
        "type": "object",
        "required": [
            "status",
            "node",
            "live_nodes",
            "websocket_agents",
            "fair_share",
            "shedding_agents",
            "shedding_sockets",
            "window_seconds",
        ],
        "properties": {
            "status": {"enum": ["rebalancing", "balanced"]},
            "node": {"type": "string"},
            "live_nodes": {"type": "integer", "minimum": 1},
            "websocket_agents": {"type": "integer", "minimum": 0},
            "fair_share": {"type": "integer", "minimum": 0},
            "shedding_agents": {"type": "integer", "minimum": 0},
            "shedding_sockets": {"type": "integer", "minimum": 0},
            "window_seconds": {"type": "number", "minimum": 0},
        },
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
    "Readiness": {
        "type": "object",
        "required": ["status", "bus"],
        "properties": {
            "status": {"enum": ["ready", "unavailable"]},
            "node": {"type": "string"},
            "problems": _STRING_MAP,
            "bus": {"type": "object"},
        },
    },
}

_DESCRIPTIONS = {
    200: "OK",
    202: "Accepted",
    400: "A query parameter is invalid; the message names it",
    401: "No or a wrong admin token",
    404: "No such agent",
    409: "The agent does not accept this command",
    503: "The store is unavailable; retry after Retry-After seconds",
}


def _json(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(
    operation_id: str,
    summary: str,
    responses: dict[int, str | None],
    *,
    parameters: list[dict[str, Any]] | None = None,
    secured: bool = True,
    description: str = "",
) -> dict[str, Any]:
    """One operation; `responses` maps a status to its schema name (None: the Error schema)."""
    out: dict[int | str, Any] = {}
    for status, schema in responses.items():
        out[str(status)] = {
            "description": _DESCRIPTIONS.get(status, "OK"),
            "content": _json(ref(schema or "Error")),
        }
    operation: dict[str, Any] = {"operationId": operation_id, "summary": summary, "responses": out}
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if secured:
        out["401"] = {"description": _DESCRIPTIONS[401], "content": _json(ref("Error"))}
    else:
        operation["security"] = []
    return operation


def _forget_operation() -> dict[str, Any]:
    operation = _operation(
        "forgetAgent",
        "Delete an agent's record (and the old uids that lead to it)",
        {404: None, 409: None, 503: None},
        parameters=[_UID_PARAM],
        description="Refused with 409 while the agent is connected, since its next message would "
        "enroll it again: stop the agent (or revoke its key) first. An agent that comes back later "
        "enrolls again as a new one.",
    )
    operation["responses"]["204"] = {"description": "Deleted"}
    operation["responses"]["409"]["description"] = "The agent is connected"
    return operation


def _query(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _ui_file(operation_id: str, summary: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "security": [],
        "responses": {
            "200": {
                "description": "OK (Content-Security-Policy, nosniff, Cache-Control: no-cache, ETag)",
                "content": {"text/html": {"schema": {"type": "string"}}},
            },
            "304": {"description": "Not modified (If-None-Match held the ETag)"},
            "404": {"description": "No such file", "content": _json(ref("Error"))},
        },
    }
    if parameters:
        operation["parameters"] = parameters
    return operation


_UID_PARAM = {
    "name": "instance_uid",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "the agent's instance_uid as a canonical UUID string (an old, moved uid finds the record)",
}

PATHS: dict[str, dict[str, dict[str, Any]]] = {
    "/api/v1/agents": {
        "get": _operation(
            "listAgents",
            "List agents, filtered, one page at a time",
            {200: "AgentPage", 400: None, 404: None, 503: None},
            parameters=[
                _query("status", {"enum": list(STATUSES)}, "only agents with this status"),
                _query(
                    "q", {"type": "string"}, "case-insensitive substring of the uid or any attribute value"
                ),
                _query(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
                    "page size (default 50)",
                ),
                _query("cursor", {"type": "string"}, "next_cursor of the previous page"),
                _query("config", {"type": "string"}, "only agents this config's selector matches"),
                _query(
                    "config_status",
                    {"enum": list(CONFIG_STATUSES)},
                    "only agents in this state with their desired config (a page may then hold fewer "
                    "than limit agents)",
                ),
                _query(
                    "key_id",
                    {"type": "string", "pattern": f"^$|{_KEY_ID_PATTERN}"},
                    "only agents bound to this agent key id (empty: agents bound to no key)",
                ),
                _query("package", {"type": "string"}, "only agents this package's selector matches"),
                _query(
                    "package_status",
                    {"enum": list(PACKAGE_STATUSES)},
                    "only agents in this state with the package (without package: with any package they "
                    "should have; none: they should have none); a page may then hold fewer than limit agents",
                ),
                _query(
                    "credential",
                    {"enum": list(KINDS)},
                    "only agents on this kind of credential (per-agent credentials, docs/security.md)",
                ),
            ],
            description="Also filters by attribute: attr.<key>=<value> (identifying or non-identifying, "
            "exact text match), e.g. attr.service.name=otelcol-contrib.",
        )
    },
    "/api/v1/agents/{instance_uid}": {
        "get": _operation(
            "getAgent", "One agent", {200: "Agent", 404: None, 503: None}, parameters=[_UID_PARAM]
        ),
        "delete": _forget_operation(),
    },
    "/api/v1/agents/{instance_uid}/restart": {
        "post": _operation(
            "restartAgent",
            "Send the agent a restart command",
            {202: "CommandAccepted", 404: None, 409: None, 503: None},
            parameters=[_UID_PARAM],
        )
    },
    "/api/v1/agents/{instance_uid}/key": {
        "put": {
            **_operation(
                "moveAgentKey",
                "Bind the agent to another agent key",
                {200: "KeyMoved", 400: None, 404: None, 503: None},
                parameters=[_UID_PARAM],
                description="The record is rebound first, then the agent's WebSocket (on any node) is "
                "closed so that it authenticates again; from then on only a client with that key may "
                "speak for it (docs/security.md).",
            ),
            "requestBody": {"required": True, "content": _json(ref("KeyMove"))},
        }
    },
    "/api/v1/drain": {
        "post": _operation(
            "drain",
            "Drain this node: fail readiness and close its WebSockets gradually",
            {202: "DrainStarted"},
        )
    },
    "/api/v1/rebalance": {
        "post": _operation(
            "rebalance",
            "Close this node's WebSockets above its fair share over a window, so they reconnect elsewhere",
            {202: "RebalanceStarted", 400: None, 409: None, 503: None},
            parameters=[
                {
                    "name": "window",
                    "in": "query",
                    "required": False,
                    "description": "seconds to spread the closes over (default --drain-seconds)",
                    "schema": {"type": "number", "minimum": 0, "maximum": 3600},
                }
            ],
        )
    },
    "/api/v1/fleet/summary": {
        "get": _operation(
            "fleetSummary", "Agent counts by status, type and version, OS", {200: "FleetSummary"}
        )
    },
    PATH: {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
                "401": {"description": _DESCRIPTIONS[401], "content": _json(ref("Error"))},
            },
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics (text exposition format)",
            "security": [],
            "responses": {
                "200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
            },
        }
    },
    # The web UI's files (gateway/api/ui.py): open, like health, since they hold no data.
    "/": {
        "get": {
            "operationId": "uiRedirect",
            "summary": "Redirects to the web UI",
            "security": [],
            "responses": {"302": {"description": "Location: /ui/"}},
        }
    },
    "/ui/": {"get": _ui_file("uiIndex", "The web UI's page", [])},
    "/ui/{name}": {
        "get": _ui_file(
            "uiFile",
            "One of the web UI's files (script, style sheet)",
            [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        )
    },
    "/healthz": {
        "get": _operation("healthz", "Liveness: the process answers", {200: "Health"}, secured=False)
    },
    "/readyz": {
        "get": _operation(
            "readyz",
            "Readiness: the store answers and the node is not draining",
            {200: "Readiness", 503: "Readiness"},
            secured=False,
        )
    },
}


def build() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "opamp-gateway admin API",
            "version": __version__,
            "description": "The admin port of an opamp-gateway node. /api/v1 needs "
            "`Authorization: Bearer <token>` when the node has --admin-token-file; /metrics, /healthz "
            "and /readyz are always open.",
        },
        "components": {
            "schemas": {
                **SCHEMAS,
                **openapi_configs.SCHEMAS,
                **openapi_rollouts.SCHEMAS,
                **openapi_settings.SCHEMAS,
                **openapi_packages.SCHEMAS,
                **openapi_credentials.SCHEMAS,
            },
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"adminToken": []}],
        "paths": {
            **PATHS,
            **openapi_configs.PATHS,
            **openapi_rollouts.PATHS,
            **openapi_settings.PATHS,
            **openapi_packages.PATHS,
            **openapi_credentials.PATHS,
        },
    }


_DOCUMENT = build()


async def document(_request: Request) -> JSONResponse:
    return JSONResponse(_DOCUMENT)
