"""The packages part of the admin API's OpenAPI document (see openapi.py): schemas and paths."""

from __future__ import annotations

from typing import Any

from gateway.api.openapi_parts import Schema, ref, responses
from gateway.api.openapi_rollouts import rollout_paths, rollout_schema, rollout_status
from gateway.fleet.configs import MAX_PRIORITY, MAX_VERSION, NAME_PATTERN
from gateway.fleet.package_status import PACKAGE_STATUSES, STATUS_NAMES
from gateway.fleet.packages import (
    ANY_URL_PATTERN,
    CONTENT_HASH_PATTERN,
    HEADER_NAME_PATTERN,
    HEADER_VALUE_PATTERN,
    HTTPS_URL_PATTERN,
    MAX_HEADER_NAME,
    MAX_HEADERS,
    MAX_PACKAGE_VERSION,
    MAX_SIGNATURE,
    MAX_TEXT,
    MAX_URL,
    PACKAGE_TYPES,
    VERSION_PATTERN,
)
from gateway.fleet.versions import KEEP_VERSIONS

_COUNTS = ("matched", *PACKAGE_STATUSES, "offline", "disconnected")
# Canonical base64, as Python's strict decoder takes it.
_BASE64 = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": NAME_PATTERN.pattern},
    "description": "the package's name",
}
_REVISION = {
    "name": "revision",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_VERSION},
    "description": "only if the stored revision is this one (409 otherwise)",
}
_UNAUTHORIZED = ("No or a wrong admin token", "Error")
_STORE_DOWN = ("The store is unavailable; retry after Retry-After seconds", "Error")
_HASH: Schema = {
    "type": "string",
    "pattern": CONTENT_HASH_PATTERN,
    "description": "SHA-256 of the file (hex)",
}
_FILE_PROPERTIES: Schema = {
    "download_url": {
        "type": "string",
        "maxLength": MAX_URL,
        "pattern": HTTPS_URL_PATTERN,
        "description": "where agents download the file (an artifact repository); https:// only, unless "
        "the gateway runs with --allow-insecure-package-urls",
    },
    "content_hash": _HASH,
    "signature": {
        "type": "string",
        "maxLength": MAX_SIGNATURE * 4 // 3 + 4,
        "pattern": _BASE64,
        "description": "a signature of the file (e.g. a detached GPG or cosign signature), base64",
    },
    "headers": {
        "type": "object",
        "maxProperties": MAX_HEADERS,
        "propertyNames": {"maxLength": MAX_HEADER_NAME, "pattern": HEADER_NAME_PATTERN},
        "additionalProperties": {"type": "string", "maxLength": MAX_TEXT, "pattern": HEADER_VALUE_PATTERN},
        "description": "HTTP headers the agent sends with its download",
    },
}
_SPEC_PROPERTIES: Schema = {
    "type": {"enum": list(PACKAGE_TYPES), "default": "top_level"},
    "version": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_PACKAGE_VERSION,
        "pattern": VERSION_PATTERN,
        "description": "the package's own version, e.g. 0.121.0",
    },
    "selector": ref("Selector"),
    "priority": {"type": "integer", "minimum": -MAX_PRIORITY, "maximum": MAX_PRIORITY, "default": 0},
    "package_name": {
        "type": "string",
        "pattern": NAME_PATTERN.pattern,
        "description": "the name agents get it under (default: the package's name); of the packages of one "
        "package_name that match an agent, the highest priority wins",
    },
}
_PACKAGE_STATUS: Schema = {
    "type": "object",
    "required": [
        "status",
        "agent_has_version",
        "agent_has_hash",
        "server_offered_version",
        "server_offered_hash",
        "error_message",
        "download_percent",
        "download_bytes_per_second",
    ],
    "properties": {
        "status": {
            "type": "string",
            "description": f"one of {', '.join(STATUS_NAMES.values())} (or a number)",
        },
        "agent_has_version": {"type": "string"},
        "agent_has_hash": {"type": "string", "description": "hex"},
        "server_offered_version": {"type": "string"},
        "server_offered_hash": {"type": "string", "description": "hex"},
        "error_message": {"type": "string"},
        "download_percent": {"type": "number"},
        "download_bytes_per_second": {"type": "number"},
    },
}

SCHEMAS: dict[str, Schema] = {
    "PackageFile": {
        "type": "object",
        "required": ["download_url", "content_hash"],
        "additionalProperties": False,
        "properties": _FILE_PROPERTIES,
    },
    "StoredPackageFile": {
        "type": "object",
        "description": "a package's file as stored (an http:// URL only if it was accepted with "
        "--allow-insecure-package-urls)",
        "required": ["download_url", "content_hash"],
        "properties": {
            **_FILE_PROPERTIES,
            "download_url": {**_FILE_PROPERTIES["download_url"], "pattern": ANY_URL_PATTERN},
        },
    },
    "PackageSpec": {
        "type": "object",
        "required": ["version", "file", "selector"],
        "properties": {
            **_SPEC_PROPERTIES,
            "file": ref("PackageFile"),
            "rollout": ref("PackageRollout"),
            "revision": {
                "anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_VERSION}, {"type": "null"}],
                "description": "precondition: the stored revision (0: must not exist yet); null: none",
            },
            # What a GET returns may be PUT back: the server's own fields are accepted and ignored.
            "name": {"description": "ignored (the path names the package)"},
            "hash": {"description": "ignored"},
            "created_at": {"description": "ignored"},
            "updated_at": {"description": "ignored"},
        },
        "additionalProperties": False,
    },
    "Package": {
        "type": "object",
        "required": [
            "name",
            "type",
            "version",
            "file",
            "selector",
            "priority",
            "package_name",
            "rollout",
            "revision",
            "hash",
            "created_at",
            "updated_at",
        ],
        "properties": {
            "name": {"type": "string"},
            **_SPEC_PROPERTIES,
            "file": ref("StoredPackageFile"),
            "rollout": ref("PackageRollout"),
            "revision": {"type": "integer", "minimum": 1, "description": "1 on create, +1 on every change"},
            "hash": {"type": "string", "description": "SHA-256 hex of the package's canonical spec"},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
        },
    },
    "PackageList": {
        "type": "object",
        "required": ["packages"],
        "properties": {"packages": {"type": "array", "items": ref("Package")}},
    },
    "PackageRollout": rollout_schema(
        _COUNTS,
        "how a new revision reaches the agents (strategy, set by a PUT: all at once, or staged in "
        "cumulative waves) and, in a package's GET, the counts of the connected agents the selector "
        "matches by package status (offline and disconnected ones apart): read-only, a PUT ignores "
        "them. Staged waves must each be above the one before (400 otherwise).",
    ),
    "PackageVersion": {
        "type": "object",
        "description": "one stored revision of a package",
        "required": [
            "revision",
            "hash",
            "created_at",
            "type",
            "version",
            "package_name",
            "priority",
            "selector",
            "file",
        ],
        "properties": {
            "revision": {"type": "integer", "minimum": 1},
            "hash": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            **_SPEC_PROPERTIES,
            "file": ref("StoredPackageFile"),
        },
    },
    "PackageVersionList": {
        "type": "object",
        "required": ["keep", "versions"],
        "properties": {
            "keep": {"type": "integer", "description": "how many revisions a package keeps"},
            "versions": {"type": "array", "items": ref("PackageVersion"), "maxItems": KEEP_VERSIONS},
        },
    },
    "PackageRolloutStatus": rollout_status("revision"),
    "PackageRollbackRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "revision": {
                "type": "integer",
                "minimum": 1,
                "description": "a kept older revision; default: previous",
            }
        },
    },
    "AgentPackages": {
        "type": "object",
        "description": "the agent's last PackageStatuses (ReportsPackageStatuses), and the all_packages_hash "
        "it was last offered",
        "required": ["server_provided_all_packages_hash", "error_message", "offered_hash", "packages"],
        "properties": {
            "server_provided_all_packages_hash": {"type": "string", "description": "hex"},
            "error_message": {"type": "string"},
            "offered_hash": {"type": ["string", "null"]},
            "packages": {"type": "object", "additionalProperties": _PACKAGE_STATUS},
        },
    },
    "PackageSync": {
        "type": "object",
        "description": "the packages the agent should have now (by package name), each with its status",
        "required": ["all_packages_hash", "packages"],
        "properties": {
            "all_packages_hash": {"type": ["string", "null"]},
            "packages": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["package", "revision", "version", "hash", "status"],
                    "properties": {
                        "package": {"type": "string", "description": "the stored package it comes from"},
                        "revision": {"type": "integer", "minimum": 1},
                        "version": {"type": "string"},
                        "hash": {"type": "string"},
                        "status": {"enum": list(PACKAGE_STATUSES)},
                    },
                },
            },
        },
    },
}

PATHS: dict[str, dict[str, dict[str, Any]]] = {
    "/api/v1/packages": {
        "get": {
            "operationId": "listPackages",
            "summary": "Every package, by name",
            "responses": responses({200: ("OK", "PackageList"), 401: _UNAUTHORIZED, 503: _STORE_DOWN}),
        }
    },
    "/api/v1/packages/{name}": {
        "get": {
            "operationId": "getPackage",
            "summary": "One package, with the counts of its agents by package status",
            "parameters": [_NAME],
            "responses": responses(
                {
                    200: ("OK", "Package"),
                    401: _UNAUTHORIZED,
                    404: ("No such package", "Error"),
                    503: _STORE_DOWN,
                }
            ),
        },
        "put": {
            "operationId": "putPackage",
            "summary": "Create or replace a package; agents it applies to get their packages pushed",
            "parameters": [_NAME],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ref("PackageSpec")}},
            },
            "responses": responses(
                {
                    200: ("Replaced (or unchanged)", "Package"),
                    201: ("Created", "Package"),
                    400: ("Invalid; the message starts with the bad field's path", "Error"),
                    401: _UNAUTHORIZED,
                    409: ("The revision precondition failed", "Error"),
                    413: ("The body is over --max-config-bytes", "Error"),
                    503: _STORE_DOWN,
                }
            ),
        },
        "delete": {
            "operationId": "deletePackage",
            "summary": "Delete a package; agents that had it are offered their packages without it",
            "parameters": [_NAME, _REVISION],
            "responses": responses(
                {
                    204: ("Deleted", None),
                    400: ("Invalid name or revision", "Error"),
                    401: _UNAUTHORIZED,
                    404: ("No such package", "Error"),
                    409: ("The revision precondition failed", "Error"),
                    503: _STORE_DOWN,
                }
            ),
        },
    },
    "/api/v1/packages/{name}/versions": {
        "get": {
            "operationId": "listPackageVersions",
            "summary": f"The package's last {KEEP_VERSIONS} revisions, newest first",
            "parameters": [_NAME],
            "responses": responses(
                {
                    200: ("OK", "PackageVersionList"),
                    400: ("Invalid name", "Error"),
                    401: _UNAUTHORIZED,
                    404: ("No such package", "Error"),
                    503: _STORE_DOWN,
                }
            ),
        }
    },
    **rollout_paths(
        "package", "revision", "PackageRolloutStatus", "PackageRollbackRequest", prefix="package"
    ),
}
