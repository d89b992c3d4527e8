"""The admin API of a config's staged rollout: GET /api/v1/configs/{name}/rollout, and POST
.../rollout/pause, .../rollout/resume, .../rollout/rollback (body {} or {"version": N})."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from gateway.api.context import node_of
from gateway.api.errors import error, store_down
from gateway.fleet.configs import InvalidConfig, check_name
from gateway.fleet.render import timestamp
from gateway.fleet.rollout_steps import RolloutConflict
from gateway.node.rollouts import Action, NoRollout, RolloutBusy, Survey
from gateway.store.base import StoreError

# A rollback body is {"version": N} at most.
_MAX_BODY = 1024


class BadRollback(ValueError):
    """A rollback body the API refuses; the message names the field."""


def rollout_json(survey: Survey) -> dict[str, Any]:
    """A rollout as the API answers it: its record and the counts of the agents in its waves."""
    r, counts = survey.rollout, survey.counts
    return {
        "name": r.name,
        "version": r.version,
        "previous_version": r.previous_version,
        "state": r.state,
        "strategy": r.strategy.to_json(),
        "wave": r.wave,
        "waves": [w.to_json() for w in r.strategy.waves],
        "targeted": len(survey.reports),
        "in_wave": counts.targeted,
        "applied": counts.applied,
        "applying": counts.applying,
        "failed": counts.failed,
        "unhealthy": counts.unhealthy,
        "pending": counts.pending,
        "started_at": timestamp(r.started_at),
        "updated_at": timestamp(r.updated_at),
        "events": [
            {"at": timestamp(e.at), "state": e.state, "wave": e.wave, "reason": e.reason} for e in r.events
        ],
    }


def _name(request: Request) -> str:
    name: str = request.path_params["name"]
    return check_name(name)


async def get_rollout(request: Request) -> Response:
    try:
        name = _name(request)
    except InvalidConfig as exc:
        return error(400, str(exc))
    try:
        survey = await node_of(request).rollouts.survey(name)
    except NoRollout as exc:
        return error(404, str(exc))
    except StoreError as exc:
        return store_down(exc)
    return JSONResponse(rollout_json(survey))


def _rollback_version(raw: bytes) -> int | None:
    if not raw.strip():
        return None
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRollback(f"body: not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRollback('body: must be a JSON object, {} or {"version": N}')
    unknown = sorted(set(body) - {"version"})
    if unknown:
        raise BadRollback(f"{unknown[0]}: unknown field; only version is accepted")
    version = body.get("version")
    if version is None:
        return None
    # JSON Schema's integers include 3.0.
    if isinstance(version, float) and version.is_integer():
        version = int(version)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BadRollback("version: must be a positive integer, a version the config keeps")
    return version


async def _act(request: Request, action: Action) -> Response:
    node = node_of(request)
    try:
        name = _name(request)
        raw = await request.body() if action == "rollback" else b""
        if len(raw) > _MAX_BODY:
            raise BadRollback(f'body: too large for {{"version": N}} ({_MAX_BODY} bytes at most)')
        version = _rollback_version(raw)
    except (InvalidConfig, BadRollback) as exc:
        return error(400, str(exc))
    except ClientDisconnect:
        return Response(status_code=400)
    try:
        await node.rollouts.act(name, action, version)
        survey = await node.rollouts.survey(name)
    except NoRollout as exc:
        return error(404, str(exc))
    except (RolloutConflict, RolloutBusy) as exc:
        return error(409, str(exc))
    except StoreError as exc:
        return store_down(exc)
    return JSONResponse(rollout_json(survey))


async def pause_rollout(request: Request) -> Response:
    return await _act(request, "pause")


async def resume_rollout(request: Request) -> Response:
    return await _act(request, "resume")


async def rollback_rollout(request: Request) -> Response:
    return await _act(request, "rollback")
