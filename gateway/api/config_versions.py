"""The admin API for a config's stored versions: /api/v1/configs/{name}/versions."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api.context import node_of
from gateway.api.errors import error, store_down
from gateway.fleet.configs import InvalidConfig, check_name
from gateway.fleet.versions import KEEP_VERSIONS, version_json
from gateway.store.base import StoreError


async def list_versions(request: Request) -> Response:
    """The config's last versions, newest first (404 when there is no such config)."""
    name = request.path_params["name"]
    try:
        check_name(name)
    except InvalidConfig as exc:
        return error(400, str(exc))
    try:
        versions = await node_of(request).store.config_versions(name)
    except StoreError as exc:
        return store_down(exc)
    if not versions:
        return error(404, f"no config {name!r}")
    return JSONResponse({"keep": KEEP_VERSIONS, "versions": [version_json(v) for v in versions]})
