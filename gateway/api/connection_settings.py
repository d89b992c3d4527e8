"""The admin API for connection settings: /api/v1/connection-settings and .../{name} (issue 19)."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api.configs import max_config_bytes
from gateway.api.context import node_of
from gateway.api.errors import error, store_down
from gateway.api.json_body import RefusedBody, read_json
from gateway.fleet.connection_settings import InvalidConnectionSettings, parse_spec, settings_json
from gateway.fleet.render import timestamp
from gateway.store.base import StoreError

logger = logging.getLogger("gateway.api.connection_settings")


def _shown(body: dict[str, object]) -> dict[str, object]:
    """settings_json with the timestamps as the rest of the API writes them."""
    created, updated = body["created_at"], body["updated_at"]
    assert isinstance(created, float) and isinstance(updated, float)
    return {**body, "created_at": timestamp(created), "updated_at": timestamp(updated)}


async def list_settings(request: Request) -> Response:
    try:
        stored = await node_of(request).store.list_connection_settings()
    except StoreError as exc:
        return store_down(exc)
    return JSONResponse({"connection_settings": [_shown(settings_json(s)) for s in stored]})


async def get_settings(request: Request) -> Response:
    name = request.path_params["name"]
    try:
        stored = await node_of(request).store.get_connection_settings(name)
    except StoreError as exc:
        return store_down(exc)
    if stored is None:
        return error(404, f"no connection settings {name!r}")
    return JSONResponse(_shown(settings_json(stored)))


async def put_settings(request: Request) -> Response:
    services = node_of(request)
    name = request.path_params["name"]
    limit = max_config_bytes(services)
    try:
        body = await read_json(request, limit, f"the request body is over {limit} bytes (--max-config-bytes)")
    except RefusedBody as exc:
        return exc.response
    try:
        spec = parse_spec(name, body)
    except InvalidConnectionSettings as exc:
        return error(400, str(exc))
    try:
        stored, changed = await services.store.put_connection_settings(name, spec, services.clock())
    except StoreError as exc:
        return store_down(exc)
    if changed:
        logger.info("connection settings %s are now version %d (%s)", name, stored.version, stored.hash[:12])
        await services.config_cache.changed(f"connection settings {name} v{stored.version}")
    status = 201 if changed and stored.version == 1 else 200
    return JSONResponse(_shown(settings_json(stored)), status_code=status)


async def delete_settings(request: Request) -> Response:
    services = node_of(request)
    name = request.path_params["name"]
    try:
        deleted = await services.store.delete_connection_settings(name)
    except StoreError as exc:
        return store_down(exc)
    if not deleted:
        return error(404, f"no connection settings {name!r}")
    logger.info("connection settings %s deleted", name)
    await services.config_cache.changed(f"connection settings {name} deleted")
    return Response(status_code=204)


async def settings_resource(request: Request) -> Response:
    """/api/v1/connection-settings/{name}: one route for its three methods, so a 405 lists all."""
    if request.method == "PUT":
        return await put_settings(request)
    if request.method == "DELETE":
        return await delete_settings(request)
    return await get_settings(request)
