"""The staged-rollout part of the admin API's OpenAPI document (see openapi.py): a config's rollout
strategy and counts (its `rollout` object), and the /api/v1/configs/{name}/rollout routes; the same
routes of packages come from the same builders (openapi_packages.py)."""

from __future__ import annotations

from typing import Any

from gateway.api.openapi_parts import Schema, ref, responses
from gateway.fleet.configs import NAME_PATTERN
from gateway.fleet.rollout import CONFIG_STATUSES
from gateway.fleet.waves import MAX_MIN_WAVE_SECONDS, MAX_WAVES, ROLLOUT_STATES

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


def rollout_schema(counts: tuple[str, ...], description: str) -> Schema:
    """A `rollout` object: the strategy a PUT sets, and the read-only `counts` a GET adds (in a PUT
    they are ignored, whatever they hold)."""
    ignored: dict[str, Schema] = {
        name: {"description": "read-only count (ignored by a PUT)"} for name in counts
    }
    return {
        "description": description,
        "oneOf": [
            {
                "type": "object",
                "additionalProperties": False,
                "properties": {"strategy": {"const": "all"}, **ignored},
            },
            {
                "type": "object",
                "required": ["strategy"],
                "additionalProperties": False,
                "properties": {**_STRATEGY, "strategy": {"const": "staged"}, **ignored},
            },
        ],
    }


def rollout_status(unit: str) -> Schema:
    """The schema of a rollout as the API answers it; `unit` names its versions."""
    return {
        "type": "object",
        "required": [
            "name",
            unit,
            f"previous_{unit}",
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
            unit: {"type": "integer", "minimum": 1, "description": f"the {unit} rolled out"},
            f"previous_{unit}": {
                "anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}],
                "description": "what agents outside the waves keep (and get back after a rollback)",
            },
            "state": {"type": "string", "enum": list(ROLLOUT_STATES)},
            "strategy": ref("RolloutStrategy"),
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
    }


SCHEMAS: dict[str, Schema] = {
    "Rollout": rollout_schema(
        _COUNTS,
        "how a new version reaches the agents (strategy, set by a PUT: all at once, or "
        "staged in cumulative waves) and, in a config's GET, the counts of the connected agents the "
        "selector matches by config status (offline and disconnected ones apart): read-only, a PUT "
        "ignores them. Staged waves must each be above the one before (400 otherwise).",
    ),
    "RolloutStrategy": {
        "type": "object",
        "required": ["strategy"],
        "additionalProperties": False,
        "properties": _STRATEGY,
    },
    "RolloutStatus": rollout_status("version"),
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


def rollout_paths(
    what: str, unit: str, status: str, rollback: str, prefix: str = ""
) -> dict[str, dict[str, dict[str, Any]]]:
    """The /api/v1/<what>s/{name}/rollout routes: `status` and `rollback` name the schemas of the
    answer and of a rollback body; `prefix` starts each operationId (packages: "package")."""
    name = {**_NAME, "description": f"the {what}'s name"}
    missing = (f"No such {what}, or no rollout of its current {unit}", "Error")

    def op(verb: str) -> str:
        return f"{verb}{prefix.capitalize()}Rollout" if prefix else f"{verb}Rollout"

    def action(verb: str, summary: str, conflict: str) -> dict[str, Any]:
        return {
            "post": {
                "operationId": op(verb),
                "summary": summary,
                "parameters": [name],
                "responses": responses(
                    {
                        200: ("The rollout after the action", status),
                        400: ("Invalid name or body; the message names the field", "Error"),
                        401: _UNAUTHORIZED,
                        404: missing,
                        409: (conflict, "Error"),
                        503: _STORE_DOWN,
                    }
                ),
            }
        }

    back = action(
        "rollback",
        f"Offer every agent the previous {unit} again (or {{{unit}: N}}, a kept older one)",
        f"Nothing to roll back to, or the {unit} is not kept",
    )
    back["post"]["requestBody"] = {
        "required": False,
        "content": {"application/json": {"schema": ref(rollback)}},
    }
    base = f"/api/v1/{what}s/{{name}}/rollout"
    return {
        base: {
            "get": {
                "operationId": op("get"),
                "summary": f"The staged rollout of the {what}'s current {unit}: state, wave and counts",
                "parameters": [name],
                "responses": responses(
                    {
                        200: ("OK", status),
                        400: ("Invalid name", "Error"),
                        401: _UNAUTHORIZED,
                        404: missing,
                        503: _STORE_DOWN,
                    }
                ),
            }
        },
        f"{base}/pause": action("pause", "Hold the rollout at its wave", "Only a progressing rollout pauses"),
        f"{base}/resume": action(
            "resume",
            "Let a paused rollout go on (its wave's min_wave_seconds starts again)",
            "Only a paused one resumes",
        ),
        f"{base}/rollback": back,
    }


PATHS = rollout_paths("config", "version", "RolloutStatus", "RollbackRequest")
