"""The configs part of the admin API's OpenAPI document (see openapi.py): schemas and paths."""

from __future__ import annotations

from typing import Any

from gateway.api.openapi_parts import Schema, ref, responses
from gateway.fleet.configs import (
    CONTENT_TYPE_PATTERN,
    FILE_NAME_PATTERN,
    MAX_FILE_NAME,
    MAX_FILES,
    MAX_PRIORITY,
    MAX_VERSION,
)
from gateway.fleet.rollout import CONFIG_STATUSES
from gateway.fleet.selector import MAX_KEY_LENGTH, MAX_TERMS, MAX_VALUE_LENGTH
from gateway.fleet.versions import KEEP_VERSIONS


def _json(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_KEY: Schema = {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH}
_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?$"},
    "description": "the config's name",
}
_VERSION = {
    "name": "version",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_VERSION},
    "description": "only if the stored version is this one (409 otherwise)",
}

SCHEMAS: dict[str, Schema] = {
    "Selector": {
        "type": "object",
        "additionalProperties": False,
        "description": "which agents get the config; {} matches none (docs/remote-config.md)",
        "properties": {
            "match": {
                "type": "object",
                "maxProperties": MAX_TERMS,
                "propertyNames": {"minLength": 1, "maxLength": MAX_KEY_LENGTH},
                "additionalProperties": {"type": "string", "maxLength": MAX_VALUE_LENGTH},
            },
            "expressions": {
                "type": "array",
                "maxItems": MAX_TERMS,
                "items": {"oneOf": [ref("SetExpression"), ref("ExistsExpression")]},
            },
            "instance_uids": {
                "type": "array",
                "maxItems": MAX_TERMS,
                "items": {"type": "string", "format": "uuid"},
            },
        },
    },
    "SetExpression": {
        "type": "object",
        "additionalProperties": False,
        "required": ["key", "operator", "values"],
        "properties": {
            "key": _KEY,
            "operator": {"enum": ["In", "NotIn"]},
            "values": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_TERMS,
                "items": {"type": "string", "maxLength": MAX_VALUE_LENGTH},
            },
        },
    },
    "ExistsExpression": {
        "type": "object",
        "additionalProperties": False,
        "required": ["key", "operator"],
        "properties": {
            "key": _KEY,
            "operator": {"enum": ["Exists", "DoesNotExist"]},
            "values": {"type": "array", "maxItems": 0},
        },
    },
    "ConfigFileSpec": {
        "type": "object",
        "additionalProperties": False,
        "description": "exactly one of body (text) and body_base64 (binary)",
        "oneOf": [{"required": ["body"]}, {"required": ["body_base64"]}],
        "properties": {
            "content_type": {
                "type": "string",
                "maxLength": 255,
                "pattern": CONTENT_TYPE_PATTERN,
                "description": "media type, default text/yaml",
            },
            "body": {"type": "string", "description": "the file as text"},
            "body_base64": {
                "type": "string",
                "pattern": "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
                "description": "the file as base64 (binary files)",
            },
        },
    },
    "ConfigSpec": {
        "type": "object",
        "required": ["selector", "files"],
        "properties": {
            "selector": ref("Selector"),
            "priority": {"type": "integer", "minimum": -MAX_PRIORITY, "maximum": MAX_PRIORITY},
            "files": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": MAX_FILES,
                "propertyNames": {
                    "minLength": 1,
                    "maxLength": MAX_FILE_NAME,
                    # A plain name: no '/', '\\', '..' or control characters (C0, DEL, C1).
                    "pattern": FILE_NAME_PATTERN,
                },
                "additionalProperties": ref("ConfigFileSpec"),
            },
            "version": {
                "anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_VERSION}, {"type": "null"}],
                "description": "precondition: the stored version (0: must not exist yet); null: none",
            },
            # What a GET returns may be PUT back: the server's own fields are accepted and ignored.
            "name": {"description": "ignored (the path names the config)"},
            "hash": {"description": "ignored"},
            "created_at": {"description": "ignored"},
            "updated_at": {"description": "ignored"},
            "rollout": ref("Rollout"),
        },
        "additionalProperties": False,
    },
    "Config": {
        "type": "object",
        "required": ["name", "selector", "priority", "files", "version", "hash", "created_at", "updated_at"],
        "properties": {
            "name": {"type": "string"},
            "selector": ref("Selector"),
            "priority": {"type": "integer"},
            "files": {"type": "object", "additionalProperties": ref("ConfigFileSpec")},
            "version": {"type": "integer", "minimum": 1},
            "hash": {"type": "string", "description": "SHA-256 hex of the config's canonical encoding"},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "rollout": ref("Rollout"),
        },
    },
    "ConfigList": {
        "type": "object",
        "required": ["configs"],
        "properties": {"configs": {"type": "array", "items": ref("Config")}},
    },
    "ConfigVersion": {
        "type": "object",
        "description": "one stored version of a config: what a PUT set then (the file names only)",
        "required": ["version", "hash", "created_at", "priority", "selector", "files"],
        "properties": {
            "version": {"type": "integer", "minimum": 1},
            "hash": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "priority": {"type": "integer"},
            "selector": ref("Selector"),
            "files": {"type": "array", "items": {"type": "string"}},
        },
    },
    "ConfigVersionList": {
        "type": "object",
        "required": ["keep", "versions"],
        "properties": {
            "keep": {"type": "integer", "description": "how many versions a config keeps"},
            "versions": {"type": "array", "items": ref("ConfigVersion"), "maxItems": KEEP_VERSIONS},
        },
    },
    "ConfigSync": {
        "type": "object",
        "required": ["status", "in_sync", "desired_hash", "reported_hash", "configs"],
        "properties": {
            "status": {"enum": list(CONFIG_STATUSES)},
            "in_sync": {"type": "boolean"},
            "desired_hash": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "reported_hash": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "configs": {"type": "array", "items": {"type": "string"}},
        },
    },
}


_UNAUTHORIZED = ("No or a wrong admin token", "Error")
_STORE_DOWN = ("The store is unavailable; retry after Retry-After seconds", "Error")

PATHS: dict[str, dict[str, dict[str, Any]]] = {
    "/api/v1/configs": {
        "get": {
            "operationId": "listConfigs",
            "summary": "Every config, by name",
            "responses": responses({200: ("OK", "ConfigList"), 401: _UNAUTHORIZED, 503: _STORE_DOWN}),
        }
    },
    "/api/v1/configs/{name}": {
        "get": {
            "operationId": "getConfig",
            "summary": "One config, with its rollout over the agents it matches",
            "parameters": [_NAME],
            "responses": responses(
                {
                    200: ("OK", "Config"),
                    401: _UNAUTHORIZED,
                    404: ("No such config", "Error"),
                    503: _STORE_DOWN,
                }
            ),
        },
        "put": {
            "operationId": "putConfig",
            "summary": "Create or replace a config; agents it matches get their new config pushed",
            "parameters": [_NAME],
            "requestBody": {"required": True, "content": _json(ref("ConfigSpec"))},
            "responses": responses(
                {
                    200: ("Replaced (or unchanged)", "Config"),
                    201: ("Created", "Config"),
                    400: ("Invalid; the message starts with the bad field's path", "Error"),
                    401: _UNAUTHORIZED,
                    409: ("The version precondition failed", "Error"),
                    413: ("The body is far over --max-config-bytes", "Error"),
                    503: _STORE_DOWN,
                }
            ),
        },
        "delete": {
            "operationId": "deleteConfig",
            "summary": "Delete a config; agents it matched get their new config pushed",
            "parameters": [_NAME, _VERSION],
            "responses": responses(
                {
                    204: ("Deleted", None),
                    400: ("Invalid name or version", "Error"),
                    401: _UNAUTHORIZED,
                    404: ("No such config", "Error"),
                    409: ("The version precondition failed", "Error"),
                    503: _STORE_DOWN,
                }
            ),
        },
    },
    "/api/v1/configs/{name}/versions": {
        "get": {
            "operationId": "listConfigVersions",
            "summary": f"The config's last {KEEP_VERSIONS} versions, newest first",
            "parameters": [_NAME],
            "responses": responses(
                {
                    200: ("OK", "ConfigVersionList"),
                    400: ("Invalid name", "Error"),
                    401: _UNAUTHORIZED,
                    404: ("No such config", "Error"),
                    503: _STORE_DOWN,
                }
            ),
        }
    },
}
