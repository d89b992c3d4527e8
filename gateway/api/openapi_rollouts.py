"""The staged-rollout part of the admin API's OpenAPI document (see openapi.py): a config's rollout
strategy and counts (its `rollout` object), and the /api/v1/configs/{name}/rollout routes."""

from __future__ import annotations

from typing import Any

from gateway.fleet.configs import NAME_PATTERN
from gateway.fleet.rollout import CONFIG_STATUSES
from gateway.fleet.waves import MAX_MIN_WAVE_SECONDS, MAX_WAVES, ROLLOUT_STATES

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _responses(codes: dict[int, tuple[str, str]]) -> dict[str, Any]:
    return {
        str(code): {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}
        for code, (description, schema) in codes.items()
    }


_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": NAME_PATTERN.pattern},
    "description": "the config's name",
}
_UNAUTHORIZED = ("No or a wrong admin token", "Error")
_STORE_DOWN = ("The store is unavailable; retry after Retry-After seconds", "Error")

_COUNTS = ("matched", *CONFIG_STATUSES[:-1], "offline", "disconnected")
_WAVE: Schema = {
    "oneOf": [
        {"type": "number", "exclusiveMinimum": 0, "maximum": 100, "description": "cumulative percentage"},
        {
            "type": "object",
            "required": ["count"],
            "additionalProperties": False,
            "properties": {"count": {"type": "integer", "minimum": 1, "description": "cumulative agents"}},
        },
    ]
}
_STRATEGY: dict[str, Schema] = {
    "strategy": {"type": "string", "enum": ["all", "staged"], "default": "all"},
    "waves": {"type": "array", "minItems": 1, "maxItems": MAX_WAVES, "items": _WAVE},
    "min_wave_seconds": {"type": "number", "minimum": 0, "maximum": MAX_MIN_WAVE_SECONDS},
    "max_failure_ratio": {"type": "number", "minimum": 0, "maximum": 1},
    "require_healthy": {"type": "boolean"},
}

# A count in a config's GET (an integer); in a PUT it is ignored, whatever it holds.
_COUNT_PROPERTIES: dict[str, Schema] = {
    name: {"description": "read-only count (ignored by a PUT)"} for name in _COUNTS
}

SCHEMAS: dict[str, Schema] = {
    "Rollout": {
        "description": "how a new version reaches the agents (strategy, set by a PUT: all at once, or "
        "staged in cumulative waves) and, in a config's GET, the counts of the connected agents the "
        "selector matches by config status (offline and disconnected ones apart): read-only, a PUT "
        "ignores them. Staged waves must each be above the one before (400 otherwise).",
        "oneOf": [
            {
                "type": "object",
                "additionalProperties": False,
                "properties": {"strategy": {"const": "all"}, **_COUNT_PROPERTIES},
            },
            {
                "type": "object",
                "required": ["strategy"],
                "additionalProperties": False,
                "properties": {**_STRATEGY, "strategy": {"const": "staged"}, **_COUNT_PROPERTIES},
            },
        ],
    },
    "RolloutStrategy": {
        "type": "object",
        "required": ["strategy"],
        "additionalProperties": False,
        "properties": _STRATEGY,
    },
    "RolloutStatus": {
        "type": "object",
        "required": [
            "name",
            "version",
            "previous_version",
            "state",
            "strategy",
            "wave",
            "waves",
            "targeted",
            "in_wave",
            "applied",
            "applying",
            "failed",
            "unhealthy",
            "pending",
            "started_at",
            "updated_at",
            "events",
        ],  # fmt: skip
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "integer", "minimum": 1, "description": "the version rolled out"},
            "previous_version": {
                "anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}],
                "description": "what agents outside the waves keep (and get back after a rollback)",
            },
            "state": {"type": "string", "enum": list(ROLLOUT_STATES)},
            "strategy": _ref("RolloutStrategy"),
            "wave": {"type": "integer", "minimum": 0, "description": "index into waves"},
            "waves": {"type": "array", "items": _WAVE},
            "targeted": {
                "type": "integer",
                "minimum": 0,
                "description": "connected agents the version targets",
            },
            **{
                name: {"type": "integer", "minimum": 0}
                for name in ("in_wave", "applied", "applying", "failed", "unhealthy", "pending")
            },
            "started_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "events": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["at", "state", "wave", "reason"],
                    "properties": {
                        "at": {"type": "string", "format": "date-time"},
                        "state": {"type": "string", "enum": list(ROLLOUT_STATES)},
                        "wave": {"type": "integer", "minimum": 0},
                        "reason": {"type": "string"},
                    },
                },
            },
        },
    },
    "RollbackRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "version": {
                "type": "integer",
                "minimum": 1,
                "description": "a kept older version; default: previous",
            }
        },
    },
}

_NO_ROLLOUT = ("No such config, or no rollout of its current version", "Error")


def _action(operation: str, summary: str, conflict: str) -> dict[str, Any]:
    return {
        "post": {
            "operationId": operation,
            "summary": summary,
            "parameters": [_NAME],
            "responses": _responses(
                {
                    200: ("The rollout after the action", "RolloutStatus"),
                    400: ("Invalid name or body; the message names the field", "Error"),
                    401: _UNAUTHORIZED,
                    404: _NO_ROLLOUT,
                    409: (conflict, "Error"),
                    503: _STORE_DOWN,
                }
            ),
        }
    }


_ROLLBACK = _action(
    "rollbackRollout",
    "Offer every agent the previous version again (or {version: N}, a kept older one)",
    "Nothing to roll back to, or the version is not kept",
)
_ROLLBACK["post"]["requestBody"] = {
    "required": False,
    "content": {"application/json": {"schema": _ref("RollbackRequest")}},
}

PATHS: dict[str, dict[str, dict[str, Any]]] = {
    "/api/v1/configs/{name}/rollout": {
        "get": {
            "operationId": "getRollout",
            "summary": "The staged rollout of the config's current version: state, wave and counts",
            "parameters": [_NAME],
            "responses": _responses(
                {
                    200: ("OK", "RolloutStatus"),
                    400: ("Invalid name", "Error"),
                    401: _UNAUTHORIZED,
                    404: _NO_ROLLOUT,
                    503: _STORE_DOWN,
                }
            ),
        }
    },
    "/api/v1/configs/{name}/rollout/pause": _action(
        "pauseRollout", "Hold the rollout at its wave", "Only a progressing rollout pauses"
    ),
    "/api/v1/configs/{name}/rollout/resume": _action(
        "resumeRollout",
        "Let a paused rollout go on (its wave's min_wave_seconds starts again)",
        "Only a paused one resumes",
    ),
    "/api/v1/configs/{name}/rollout/rollback": _ROLLBACK,
}
