"""The admin JSON API: /api/v1/agents, /api/v1/agents/{instance_uid} (GET, DELETE),
/api/v1/fleet/summary.

(Configs: configs.py; commands and drain: commands.py.)
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, get_args

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api.agent_path import path_agent
from gateway.api.context import AdminNode, node_of
from gateway.api.errors import error, store_down
from gateway.auth import valid_key_id
from gateway.bus.base import BusUnavailable
from gateway.fleet.agent import AgentState, facts, uid_bytes
from gateway.fleet.credentials import KINDS
from gateway.fleet.package_set import PackageSet
from gateway.fleet.package_status import (
    PACKAGE_STATUSES,
    REPORTED_STATUSES,
    package_sync,
    packages_sync_json,
    term,
)
from gateway.fleet.packages import Package
from gateway.fleet.render import agent_json
from gateway.fleet.rollout import CONFIG_STATUSES, config_sync, counted
from gateway.fleet.status import Status
from gateway.store.base import MAX_PAGE_SIZE, AgentQuery, InvalidCursor, StoreError

logger = logging.getLogger("gateway.api.admin")

_STATUSES = get_args(Status)
_KNOWN_PARAMS = frozenset(
    {
        "status",
        "q",
        "limit",
        "cursor",
        "config",
        "config_status",
        "key_id",
        "package",
        "package_status",
        "credential",
    }
)
_ATTR_PREFIX = "attr."
# ASCII digits only: str.isdigit() also takes '²' and other digits int() refuses, and a bounded
# length keeps int() away from its 4,300-digit limit.
_LIMIT = re.compile(r"[0-9]{1,7}")


class BadQuery(ValueError):
    """A query parameter of the admin API is invalid; the message names it."""


def parse_query(params: dict[str, str]) -> AgentQuery:
    unknown = sorted(k for k in params if k not in _KNOWN_PARAMS and not k.startswith(_ATTR_PREFIX))
    if unknown:
        raise BadQuery(
            f"unknown query parameter {unknown[0]!r}; "
            "use status, q, limit, cursor, config, config_status, key_id, package, package_status, "
            "credential or attr.<key>"
        )
    status = params.get("status")
    if status is not None and status not in _STATUSES:
        raise BadQuery(f"status: must be one of {', '.join(_STATUSES)}")
    limit_text = params.get("limit", "50")
    if not _LIMIT.fullmatch(limit_text) or not 1 <= int(limit_text) <= MAX_PAGE_SIZE:
        raise BadQuery(f"limit: must be an integer from 1 to {MAX_PAGE_SIZE}")
    attributes = {k[len(_ATTR_PREFIX) :]: v for k, v in params.items() if k.startswith(_ATTR_PREFIX)}
    if any(not key for key in attributes):
        raise BadQuery("attr.<key>: the attribute key must not be empty")
    config_status = params.get("config_status")
    if config_status is not None and config_status not in CONFIG_STATUSES:
        raise BadQuery(f"config_status: must be one of {', '.join(CONFIG_STATUSES)}")
    package_status = params.get("package_status")
    if package_status is not None and package_status not in PACKAGE_STATUSES:
        raise BadQuery(f"package_status: must be one of {', '.join(PACKAGE_STATUSES)}")
    key_id = params.get("key_id")
    if key_id and not valid_key_id(key_id):
        raise BadQuery("key_id: must be a key group name or sha256: and 12 hex digits (empty: no key)")
    credential = params.get("credential")
    if credential is not None and credential not in KINDS:
        raise BadQuery(f"credential: must be one of {', '.join(KINDS)}")
    return AgentQuery(
        status=status,  # type: ignore[arg-type]  # checked against _STATUSES above
        q=params.get("q") or None,
        attributes=attributes,
        key_id=key_id,
        credential=credential,
        limit=int(limit_text),
        cursor=params.get("cursor") or None,
    )


def _package_terms(
    query: AgentQuery, package: Package, packages: PackageSet, wanted: str | None
) -> AgentQuery:
    """The store's part of ?package_status=: the terms of the hashes the package may be offered as now
    (gateway/fleet/package_status.py). Each agent is then checked exactly (its own revision)."""
    if wanted not in REPORTED_STATUSES and wanted != "pending":
        return query
    view = packages.by_name(package.name)
    offers = packages.rollout_offers(view) if view is not None else ()
    if wanted == "pending":
        if len(offers) != 1:
            return query  # during a rollout an agent may be pending for either revision
        done = tuple(term(n, s, h) for n, h in offers for s in REPORTED_STATUSES)
        return dataclasses.replace(query, without_package_states=done)
    return dataclasses.replace(query, with_package_states=tuple(term(n, wanted, h) for n, h in offers))


async def _package_filter(
    services: AdminNode, query: AgentQuery, name: str, wanted: str | None
) -> AgentQuery | JSONResponse:
    package = await services.store.get_package(name)
    if package is None:
        return error(404, f"package: no package {name!r}")
    packages = services.config_cache.fleet.packages
    if packages.by_name(name) != package:
        await services.config_cache.refresh("package filter")
        packages = services.config_cache.fleet.packages
    query = dataclasses.replace(query, selector=package.selector)
    return _package_terms(query, package, packages, wanted)


def _package_status_is(state: AgentState, packages: PackageSet, name: str | None, wanted: str) -> bool:
    """Whether the agent is in `wanted` with package `name`; without a name, with any package it
    should have (`none`: it should have none)."""
    if name:
        return package_sync(state, packages, name).status == wanted
    shown = packages_sync_json(state, packages)
    statuses = {p["status"] for p in shown["packages"].values()} if shown is not None else set()
    return not statuses if wanted == "none" else wanted in statuses


async def list_agents(request: Request) -> Response:
    """With `config_status` or `package_status`, the filter runs on each store page too: a page may
    hold fewer agents than `limit` (even none) while `next_cursor` says there are more."""
    services = node_of(request)
    params = dict(request.query_params)
    try:
        query = parse_query(params)
    except BadQuery as exc:
        return error(400, str(exc))
    now, offline_after = services.clock(), services.settings.offline_window
    try:
        if params.get("config"):
            config = await services.store.get_config(params["config"])
            if config is None:
                return error(404, f"config: no config {params['config']!r}")
            query = dataclasses.replace(query, selector=config.selector)
        also = None
        if params.get("package"):
            filtered = await _package_filter(services, query, params["package"], params.get("package_status"))
            if isinstance(filtered, JSONResponse):
                return filtered
            # With config= too: the store matches the package's selector, the config's is checked here.
            also, query = query.selector, filtered
        page = await services.store.list_agents(query, now, offline_after)
    except InvalidCursor as exc:
        return error(400, f"cursor: {exc}")
    except StoreError as exc:
        return store_down(exc)
    configs = services.config_cache.fleet.configs
    packages = services.config_cache.fleet.packages
    settings = services.config_cache.fleet.settings
    # Agents on this node's sockets: their liveness as of their last message, not as last stored.
    fresher = services.liveness.fresher
    states = [fresher(state) or state for state in page.agents]
    if also is not None:
        states = [state for state in states if also.matches(state.instance_uid, facts(state).attributes)]
    syncs = [(state, config_sync(state, configs)) for state in states]
    wanted = params.get("config_status")
    if wanted is not None:
        # As the rollout counts: offline and disconnected agents are counted apart (`status=`).
        syncs = [
            (state, sync)
            for state, sync in syncs
            if sync.status == wanted and counted(state, now, offline_after)
        ]
    package_wanted = params.get("package_status")
    if package_wanted is not None:
        # The store matched reported terms; each agent's own revision decides (and as the counts).
        syncs = [
            (state, sync)
            for state, sync in syncs
            if _package_status_is(state, packages, params.get("package"), package_wanted)
            and counted(state, now, offline_after)
        ]
    where = await services.router.connection_info([state for state, _ in syncs], now)
    return JSONResponse(
        {
            "agents": [
                agent_json(
                    state,
                    now,
                    offline_after,
                    where.get(state.instance_uid),
                    sync,
                    packages_sync_json(state, packages),
                    page.credentials.get(state.instance_uid),
                    settings.sources_for(state),
                )
                for state, sync in syncs
            ],
            "next_cursor": page.next_cursor,
        }
    )


async def get_agent(request: Request) -> Response:
    services = node_of(request)
    state = await path_agent(request, services)
    if isinstance(state, JSONResponse):
        return state
    now = services.clock()
    try:
        credential = (await services.store.get_credentials([state.instance_uid])).get(state.instance_uid)
    except StoreError as exc:
        return store_down(exc)
    where = await services.router.connection_info([state], now)
    body = agent_json(
        state,
        now,
        services.settings.offline_window,
        where.get(state.instance_uid),
        config_sync(state, services.config_cache.fleet.configs),
        packages_sync_json(state, services.config_cache.fleet.packages),
        credential,
        services.config_cache.fleet.settings.sources_for(state),
    )
    text = request.path_params["instance_uid"]
    if state.instance_uid != uid_bytes(text):
        # The uid was moved: say where to, so scripts holding the old uid can follow.
        body["moved_from"] = text
    return JSONResponse(body)


async def forget_agent(request: Request) -> Response:
    """DELETE /api/v1/agents/{instance_uid}: 204 once the record is gone; 409 while the agent is
    connected (its next message would enroll it again)."""
    services = node_of(request)
    state = await path_agent(request, services)
    if isinstance(state, JSONResponse):
        return state
    where = (await services.router.connection_info([state], services.clock())).get(state.instance_uid)
    if where is not None and where.connected:
        return error(
            409,
            f"agent {state.uid} is connected ({where.transport or 'unknown transport'} on node "
            f"{where.node or 'unknown'}): its next message would enroll it again; stop it or revoke "
            "its key first, or wait until it is offline",
            "connected",
        )
    # Before the delete: a held HTTP heartbeat written after it would enroll the agent again.
    services.writer.drop_held(state.instance_uid)
    try:
        forgotten = await services.store.forget(state.instance_uid)
    except StoreError as exc:
        return store_down(exc)
    if forgotten is None:
        return error(404, f"no agent {request.path_params['instance_uid']}")
    # Its credential record went with it: every node drops its copy, so the uid may enroll again.
    await services.credentials.forgotten(forgotten)
    services.metrics.agents_forgotten.labels(reason="admin").inc()
    logger.info("agent forgotten by an administrator", extra={"instance_uid": state.uid})
    return Response(status_code=204)


async def agent_resource(request: Request) -> Response:
    """/api/v1/agents/{instance_uid}: one route for its two methods, so a 405 lists both."""
    if request.method == "DELETE":
        return await forget_agent(request)
    return await get_agent(request)


async def fleet_summary(request: Request) -> Response:
    services = node_of(request)
    try:
        summary = await services.store.summary(services.clock(), services.settings.offline_window)
    except StoreError as exc:
        return store_down(exc)
    return JSONResponse({**dataclasses.asdict(summary), "websockets": await _websockets(services)})


async def _websockets(services: AdminNode) -> dict[str, Any]:
    """WebSocket agents connected now, by live node: from the nodes' liveness records, so a node that
    died or hangs drops out within --node-ttl. `known: false` when the bus cannot say (this node only)."""
    mine = services.registry.websocket_agents
    known = services.bus.authoritative
    try:
        by_node = await services.bus.live_nodes()
    except BusUnavailable:
        by_node, known = {}, False
    by_node[services.settings.node_id] = mine
    return {"connected": sum(by_node.values()), "by_node": by_node, "known": known}
