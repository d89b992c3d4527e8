"""The connection-settings part of the admin API's OpenAPI document (see openapi.py)."""

from __future__ import annotations

from typing import Any

from gateway.api.openapi_parts import Schema, ref, responses
from gateway.fleet.configs import MAX_PRIORITY, NAME_PATTERN
from gateway.fleet.connection_settings import (
    ENDPOINT_PATTERN,
    HEADER_NAME_PATTERN,
    HEADER_VALUE_PATTERN,
    MAX_ENDPOINT,
    MAX_HEADERS,
    MAX_NAME,
    MAX_OTHER_CONNECTIONS,
    MAX_PEM,
    MAX_TEXT,
    MAX_TLS_VERSION,
    PEM_PATTERN,
    PLAIN_NAME_PATTERN,
)

_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": NAME_PATTERN.pattern},
    "description": "the connection settings' name",
}
_UNAUTHORIZED = ("No or a wrong admin token", "Error")
_STORE_DOWN = ("The store is unavailable; retry after Retry-After seconds", "Error")
_HEADERS: Schema = {
    "type": "object",
    "maxProperties": MAX_HEADERS,
    "propertyNames": {"maxLength": MAX_NAME, "pattern": HEADER_NAME_PATTERN},
    "additionalProperties": {"type": "string", "maxLength": MAX_TEXT, "pattern": HEADER_VALUE_PATTERN},
    "description": "HTTP headers the agent sends with its telemetry",
}
_OTHER_SETTINGS: Schema = {
    "type": "object",
    "maxProperties": MAX_HEADERS,
    "propertyNames": {"minLength": 1, "maxLength": MAX_NAME, "pattern": PLAIN_NAME_PATTERN},
    "additionalProperties": {"type": "string", "maxLength": MAX_TEXT},
}
_TELEMETRY_PROPERTIES: Schema = {
    "destination_endpoint": {
        "type": "string",
        "maxLength": MAX_ENDPOINT,
        "pattern": ENDPOINT_PATTERN,
        "description": "a full OTLP/HTTP URL with its path (https:// recommended)",
    },
    "headers": _HEADERS,
    "tls": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "ca_pem_contents": {
                "type": "string",
                "maxLength": MAX_PEM,
                "pattern": PEM_PATTERN,
                "description": "PEM CA certificates to trust",
            },
            "include_system_ca_certs_pool": {"type": "boolean"},
            "insecure_skip_verify": {"type": "boolean"},
            "min_version": {"type": "string", "maxLength": MAX_TLS_VERSION},
            "max_version": {"type": "string", "maxLength": MAX_TLS_VERSION},
        },
    },
}
_SPEC_PROPERTIES: Schema = {
    "selector": ref("Selector"),
    "priority": {"type": "integer", "minimum": -MAX_PRIORITY, "maximum": MAX_PRIORITY, "default": 0},
    "own_metrics": ref("TelemetryConnection"),
    "own_traces": ref("TelemetryConnection"),
    "own_logs": ref("TelemetryConnection"),
    "other_connections": {
        "type": "object",
        "minProperties": 1,
        "maxProperties": MAX_OTHER_CONNECTIONS,
        "propertyNames": {"minLength": 1, "maxLength": MAX_NAME, "pattern": PLAIN_NAME_PATTERN},
        "additionalProperties": ref("OtherConnection"),
    },
}

SCHEMAS: dict[str, Schema] = {
    "TelemetryConnection": {
        "type": "object",
        "required": ["destination_endpoint"],
        "additionalProperties": False,
        "properties": _TELEMETRY_PROPERTIES,
    },
    "OtherConnection": {
        "type": "object",
        "required": ["destination_endpoint"],
        "additionalProperties": False,
        "properties": {**_TELEMETRY_PROPERTIES, "other_settings": _OTHER_SETTINGS},
    },
    "ConnectionSettingsSpec": {
        "type": "object",
        "description": "at least one of own_metrics, own_traces, own_logs and other_connections; "
        "each part goes only to agents with its capability (docs/opamp.md)",
        "required": ["selector"],
        "anyOf": [
            {"required": [part]} for part in ("own_metrics", "own_traces", "own_logs", "other_connections")
        ],
        "properties": {
            **_SPEC_PROPERTIES,
            # What a GET returns may be PUT back: the server's own fields are accepted and ignored.
            "name": {"description": "ignored (the path names the settings)"},
            "version": {"description": "ignored"},
            "hash": {"description": "ignored"},
            "created_at": {"description": "ignored"},
            "updated_at": {"description": "ignored"},
        },
        "additionalProperties": False,
    },
    "ConnectionSettings": {
        "type": "object",
        "required": ["name", "selector", "priority", "version", "hash", "created_at", "updated_at"],
        "properties": {
            "name": {"type": "string"},
            **_SPEC_PROPERTIES,
            "version": {"type": "integer", "minimum": 1},
            "hash": {"type": "string", "description": "SHA-256 (hex) of the canonical spec"},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
        },
    },
    "ConnectionSettingsList": {
        "type": "object",
        "required": ["connection_settings"],
        "properties": {"connection_settings": {"type": "array", "items": ref("ConnectionSettings")}},
    },
}

PATHS: dict[str, dict[str, dict[str, Any]]] = {
    "/api/v1/connection-settings": {
        "get": {
            "operationId": "listConnectionSettings",
            "summary": "Every connection setting, by name",
            "responses": responses(
                {200: ("OK", "ConnectionSettingsList"), 401: _UNAUTHORIZED, 503: _STORE_DOWN}
            ),
        }
    },
    "/api/v1/connection-settings/{name}": {
        "get": {
            "operationId": "getConnectionSettings",
            "summary": "One connection setting",
            "parameters": [_NAME],
            "responses": responses(
                {
                    200: ("OK", "ConnectionSettings"),
                    401: _UNAUTHORIZED,
                    404: ("No such connection settings", "Error"),
                    503: _STORE_DOWN,
                }
            ),
        },
        "put": {
            "operationId": "putConnectionSettings",
            "summary": "Create or replace connection settings; agents they reach get the new offer pushed",
            "parameters": [_NAME],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ref("ConnectionSettingsSpec")}},
            },
            "responses": responses(
                {
                    200: ("Replaced (or unchanged)", "ConnectionSettings"),
                    201: ("Created", "ConnectionSettings"),
                    400: ("Invalid; the message starts with the bad field's path", "Error"),
                    401: _UNAUTHORIZED,
                    413: ("The body is over --max-config-bytes", "Error"),
                    503: _STORE_DOWN,
                }
            ),
        },
        "delete": {
            "operationId": "deleteConnectionSettings",
            "summary": "Delete connection settings (agents keep what they were offered: an offer "
            "without a part means 'unchanged')",
            "parameters": [_NAME],
            "responses": responses(
                {
                    204: ("Deleted", None),
                    401: _UNAUTHORIZED,
                    404: ("No such connection settings", "Error"),
                    503: _STORE_DOWN,
                }
            ),
        },
    },
}
