"""The admin API for remote configs: /api/v1/configs and /api/v1/configs/{name}."""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api.context import AdminNode, node_of
from gateway.api.errors import error, store_down
from gateway.api.json_body import RefusedBody, read_json
from gateway.fleet.configs import (
    MAX_VERSION,
    Config,
    InvalidConfig,
    check_name,
    parse_request,
    shown_key,
    spec_json,
)
from gateway.fleet.render import timestamp
from gateway.fleet.rollout import RolloutCounts, config_sync
from gateway.store.base import MAX_PAGE_SIZE, AgentQuery, StoreError, VersionConflict

logger = logging.getLogger("gateway.api.configs")

# ASCII digits (str.isdigit() also takes '²', which int() refuses), few enough for int().
_VERSION = re.compile(r"[0-9]{1,19}")
# Room for the rest of a ServerToAgent around the config files.
_REPLY_OVERHEAD = 64 * 1024


def max_config_bytes(services: AdminNode) -> int:
    s = services.settings
    return max(1, min(s.max_config_bytes, s.max_message_bytes - _REPLY_OVERHEAD))


def config_json(config: Config) -> dict[str, Any]:
    return {
        "name": config.name,
        **spec_json(config.spec),
        "rollout": config.spec.rollout.to_json(),
        "version": config.version,
        "hash": config.hash,
        "created_at": timestamp(config.created_at),
        "updated_at": timestamp(config.updated_at),
    }


async def rollout(services: AdminNode, config: Config) -> RolloutCounts:
    """Count the config's connected agents by config status, and its offline and disconnected ones
    apart, paging through every agent it matches."""
    counts = RolloutCounts()
    configs = services.config_cache.fleet.configs
    if configs.by_name(config.name) != config:
        # This node has not caught up with the stored config yet (an event is on its way).
        await services.config_cache.refresh("rollout read")
        configs = services.config_cache.fleet.configs
    query = AgentQuery(selector=config.selector, limit=MAX_PAGE_SIZE)
    now, offline_after = services.clock(), services.settings.offline_window
    while True:
        page = await services.store.list_agents(query, now, offline_after)
        fresher = services.liveness.fresher
        for stored in page.agents:
            # Agents on this node's sockets: their liveness as of their last message (as list_agents).
            state = fresher(stored) or stored
            counts.add(config_sync(state, configs), state, now, offline_after)
        if page.next_cursor is None:
            return counts
        query = replace(query, cursor=page.next_cursor)


def _expected_version(request: Request) -> int | None:
    unknown = sorted(set(request.query_params) - {"version"})
    if unknown:
        raise InvalidConfig(shown_key(unknown[0]), "unknown query parameter; only version is accepted")
    text = request.query_params.get("version")
    if text is None:
        return None
    if not _VERSION.fullmatch(text) or int(text) > MAX_VERSION:
        raise InvalidConfig("version", f"must be an integer from 0 to {MAX_VERSION}")
    return int(text)


async def list_configs(request: Request) -> Response:
    services = node_of(request)
    try:
        configs = await services.store.list_configs()
    except StoreError as exc:
        return store_down(exc)
    return JSONResponse({"configs": [config_json(c) for c in configs]})


async def get_config(request: Request) -> Response:
    services = node_of(request)
    name = request.path_params["name"]
    try:
        config = await services.store.get_config(name)
        if config is None:
            return error(404, f"no config {name!r}")
        counts = await rollout(services, config)
    except StoreError as exc:
        return store_down(exc)
    body = config_json(config)
    # One `rollout` object: the strategy a PUT sets and the counts the server computes (read-only).
    return JSONResponse({**body, "rollout": {**body["rollout"], **counts.to_json()}})


async def put_config(request: Request) -> Response:
    services = node_of(request)
    name = request.path_params["name"]
    limit = max_config_bytes(services)
    too_large = f"the request body is too large for a config of at most {limit} bytes"
    try:
        # JSON escaping can double a body (and base64 adds a third): allow for it before parsing.
        body = await read_json(request, 2 * limit + _REPLY_OVERHEAD, too_large)
    except RefusedBody as exc:
        return exc.response
    try:
        parsed = parse_request(name, body, max_bytes=limit)
    except InvalidConfig as exc:
        return error(400, str(exc))
    try:
        config, changed = await services.store.put_config(name, parsed, services.clock())
    except VersionConflict as exc:
        return error(409, str(exc))
    except StoreError as exc:
        return store_down(exc)
    if changed:
        logger.info("config %s is now version %d (%s)", name, config.version, config.hash[:12])
        try:
            # Before the change is announced: every node then sees the new version with its rollout.
            await services.rollouts.begin(config)
        except StoreError as exc:
            # Stored: the controller starts the rollout on its next look; until then it is at wave 0.
            logger.warning("config %s: its rollout starts on the controller's next look: %s", name, exc)
        await services.config_cache.changed(f"config {name} v{config.version}")
    status = 201 if changed and config.version == 1 else 200
    return JSONResponse(config_json(config), status_code=status)


async def delete_config(request: Request) -> Response:
    services = node_of(request)
    name = request.path_params["name"]
    try:
        check_name(name)
        expected = _expected_version(request)
    except InvalidConfig as exc:
        return error(400, str(exc))
    try:
        deleted = await services.store.delete_config(name, expected)
    except VersionConflict as exc:
        return error(409, str(exc))
    except StoreError as exc:
        return store_down(exc)
    if not deleted:
        return error(404, f"no config {name!r}")
    logger.info("config %s deleted", name)
    await services.config_cache.changed(f"config {name} deleted")
    return Response(status_code=204)


async def config_resource(request: Request) -> Response:
    """/api/v1/configs/{name}: one route for its three methods, so a 405 lists all of them."""
    if request.method == "PUT":
        return await put_config(request)
    if request.method == "DELETE":
        return await delete_config(request)
    return await get_config(request)
