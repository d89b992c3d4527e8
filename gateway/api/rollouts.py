"""The admin API of a config's staged rollout: GET /api/v1/configs/{name}/rollout, and POST
.../rollout/pause, .../rollout/resume, .../rollout/rollback (body {} or {"version": N}); and the
same for a package's, under /api/v1/packages/{name}/rollout, where versions are revisions (the
rollout's `revision` and `previous_revision`, a rollback body {"revision": N})."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from gateway.api.context import AdminNode, node_of
from gateway.api.errors import error, store_down
from gateway.fleet.configs import InvalidConfig, check_name, shown_key
from gateway.fleet.render import timestamp
from gateway.fleet.rollout_steps import RolloutConflict
from gateway.node.rollouts import Action, NoRollout, RolloutBusy, RolloutController, Survey
from gateway.store.base import StoreError

# A rollback body is {"version": N} at most.
_MAX_BODY = 1024


class BadRollback(ValueError):
    """A rollback body the API refuses; the message names the field."""


def rollout_json(survey: Survey, unit: str = "version") -> dict[str, Any]:
    """A rollout as the API answers it: its record and the counts of the agents in its waves.
    `unit`: what a version is called (a package's are revisions)."""
    r, counts = survey.rollout, survey.counts
    return {
        "name": r.name,
        unit: r.version,
        f"previous_{unit}": r.previous_version,
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


@dataclass(frozen=True)
class RolloutRoutes:
    """The rollout routes of configs or packages: which controller, and the JSON word for a version."""

    controller: Callable[[AdminNode], RolloutController]
    what: str
    unit: str

    def _name(self, request: Request) -> str:
        name: str = request.path_params["name"]
        return check_name(name, self.what)

    async def get(self, request: Request) -> Response:
        try:
            name = self._name(request)
        except InvalidConfig as exc:
            return error(400, str(exc))
        try:
            survey = await self.controller(node_of(request)).survey(name)
        except NoRollout as exc:
            return error(404, str(exc))
        except StoreError as exc:
            return store_down(exc)
        return JSONResponse(rollout_json(survey, self.unit))

    async def act(self, request: Request, action: Action) -> Response:
        controller = self.controller(node_of(request))
        try:
            name = self._name(request)
            raw = await request.body() if action == "rollback" else b""
            if len(raw) > _MAX_BODY:
                raise BadRollback(f'body: too large for {{"{self.unit}": N}} ({_MAX_BODY} bytes at most)')
            version = _rollback_version(raw, self.unit, self.what)
        except (InvalidConfig, BadRollback) as exc:
            return error(400, str(exc))
        except ClientDisconnect:
            return Response(status_code=400)
        try:
            await controller.act(name, action, version)
            survey = await controller.survey(name)
        except NoRollout as exc:
            return error(404, str(exc))
        except (RolloutConflict, RolloutBusy) as exc:
            return error(409, str(exc))
        except StoreError as exc:
            return store_down(exc)
        return JSONResponse(rollout_json(survey, self.unit))

    def action(self, action: Action) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            return await self.act(request, action)

        return handler


def _rollback_version(raw: bytes, unit: str = "version", what: str = "config") -> int | None:
    if not raw.strip():
        return None
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRollback(f"body: not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRollback(f'body: must be a JSON object, {{}} or {{"{unit}": N}}')
    unknown = sorted(set(body) - {unit})
    if unknown:
        raise BadRollback(f"{shown_key(unknown[0])}: unknown field; only {unit} is accepted")
    version = body.get(unit)
    if version is None:
        return None
    # JSON Schema's integers include 3.0.
    if isinstance(version, float) and version.is_integer():
        version = int(version)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BadRollback(f"{unit}: must be a positive integer, a {unit} the {what} keeps")
    return version


def _configs(node: AdminNode) -> RolloutController:
    return node.rollouts


def _packages(node: AdminNode) -> RolloutController:
    return node.package_rollouts


CONFIG_ROLLOUTS = RolloutRoutes(_configs, "config", "version")
PACKAGE_ROLLOUTS = RolloutRoutes(_packages, "package", "revision")

get_rollout = CONFIG_ROLLOUTS.get
pause_rollout = CONFIG_ROLLOUTS.action("pause")
resume_rollout = CONFIG_ROLLOUTS.action("resume")
rollback_rollout = CONFIG_ROLLOUTS.action("rollback")
