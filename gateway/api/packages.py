"""The admin API for packages (issue 19): /api/v1/packages, /api/v1/packages/{name} and
/api/v1/packages/{name}/versions. Rollouts of packages: rollouts.py."""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api.configs import max_config_bytes
from gateway.api.context import AdminNode, node_of
from gateway.api.errors import error, store_down
from gateway.api.json_body import RefusedBody, read_json
from gateway.fleet.configs import MAX_VERSION, InvalidConfig, check_name, shown_key
from gateway.fleet.package_set import PackageSet
from gateway.fleet.package_status import PackageCounts, package_sync
from gateway.fleet.packages import (
    InvalidPackage,
    Package,
    PackageVersion,
    file_json,
    parse_request,
    spec_json,
)
from gateway.fleet.render import timestamp
from gateway.fleet.versions import KEEP_VERSIONS
from gateway.store.base import MAX_PAGE_SIZE, AgentQuery, StoreError, VersionConflict

logger = logging.getLogger("gateway.api.packages")

_REVISION = re.compile(r"[0-9]{1,19}")


def package_json(package: Package) -> dict[str, Any]:
    """A package as the API shows it: its spec (as a PUT gives it), its strategy and the server's
    fields. `version` is the package's own version; `revision` counts its changes."""
    return {
        "name": package.name,
        **spec_json(package.spec),
        "rollout": package.spec.rollout.to_json(),
        "revision": package.version,
        "hash": package.hash,
        "created_at": timestamp(package.created_at),
        "updated_at": timestamp(package.updated_at),
    }


def version_json(entry: PackageVersion) -> dict[str, Any]:
    """A revision as `GET /api/v1/packages/{name}/versions` lists it."""
    spec = entry.spec
    return {
        "revision": entry.version,
        "hash": entry.hash,
        "created_at": timestamp(entry.created_at),
        "type": spec.type,
        "version": spec.package_version,
        "package_name": spec.package_name,
        "priority": spec.priority,
        "selector": spec.selector.to_json(),
        "file": file_json(spec.file),
    }


async def current_packages(services: AdminNode, package: Package) -> PackageSet:
    """This node's packages, re-read first if it has not caught up with `package` yet."""
    packages = services.config_cache.fleet.packages
    if packages.by_name(package.name) != package:
        # An event is on its way; a rollout read must not count against an older revision.
        await services.config_cache.refresh("package read")
        packages = services.config_cache.fleet.packages
    return packages


async def counts(services: AdminNode, package: Package) -> PackageCounts:
    """Count the package's connected agents by package status, and its offline and disconnected ones
    apart, paging through every agent its selector matches."""
    found = PackageCounts()
    packages = await current_packages(services, package)
    query = AgentQuery(selector=package.selector, limit=MAX_PAGE_SIZE)
    now, offline_after = services.clock(), services.settings.offline_window
    while True:
        page = await services.store.list_agents(query, now, offline_after)
        fresher = services.liveness.fresher
        for stored in page.agents:
            state = fresher(stored) or stored
            found.add(package_sync(state, packages, package.name), state, now, offline_after)
        if page.next_cursor is None:
            return found
        query = replace(query, cursor=page.next_cursor)


def _name(request: Request) -> str:
    name: str = request.path_params["name"]
    return name


async def list_packages(request: Request) -> Response:
    try:
        stored = await node_of(request).store.list_packages()
    except StoreError as exc:
        return store_down(exc)
    return JSONResponse({"packages": [package_json(p) for p in stored]})


async def get_package(request: Request) -> Response:
    services = node_of(request)
    name = _name(request)
    try:
        package = await services.store.get_package(name)
        if package is None:
            return error(404, f"no package {name!r}")
        found = await counts(services, package)
    except StoreError as exc:
        return store_down(exc)
    body = package_json(package)
    # One `rollout` object: the strategy a PUT sets and the counts the server computes (read-only).
    return JSONResponse({**body, "rollout": {**body["rollout"], **found.to_json()}})


async def put_package(request: Request) -> Response:
    services = node_of(request)
    name = _name(request)
    limit = max_config_bytes(services)
    try:
        body = await read_json(request, limit, f"the request body is over {limit} bytes (--max-config-bytes)")
    except RefusedBody as exc:
        return exc.response
    try:
        parsed = parse_request(name, body, allow_insecure=services.settings.allow_insecure_package_urls)
    except InvalidPackage as exc:
        return error(400, str(exc))
    try:
        package, changed = await services.store.put_package(name, parsed, services.clock())
    except VersionConflict as exc:
        return error(409, str(exc))
    except StoreError as exc:
        return store_down(exc)
    if changed:
        logger.info(
            "package %s (%s %s) is now revision %d (%s)",
            name,
            package.spec.package_name,
            package.spec.package_version,
            package.version,
            package.hash[:12],
        )
        try:
            # Before the change is announced: every node then sees the new revision with its rollout.
            await services.package_rollouts.begin(package)
        except StoreError as exc:
            logger.warning("package %s: its rollout starts on the controller's next look: %s", name, exc)
        await services.config_cache.changed(f"package {name} r{package.version}")
    status = 201 if changed and package.version == 1 else 200
    return JSONResponse(package_json(package), status_code=status)


def _expected_revision(request: Request) -> int | None:
    unknown = sorted(set(request.query_params) - {"revision"})
    if unknown:
        raise InvalidPackage(shown_key(unknown[0]), "unknown query parameter; only revision is accepted")
    text = request.query_params.get("revision")
    if text is None:
        return None
    if not _REVISION.fullmatch(text) or int(text) > MAX_VERSION:
        raise InvalidPackage("revision", f"must be an integer from 0 to {MAX_VERSION}")
    return int(text)


async def delete_package(request: Request) -> Response:
    services = node_of(request)
    name = _name(request)
    try:
        check_name(name, "package")
        expected = _expected_revision(request)
    except InvalidConfig as exc:
        return error(400, str(exc))
    try:
        deleted = await services.store.delete_package(name, expected)
    except VersionConflict as exc:
        return error(409, str(exc))
    except StoreError as exc:
        return store_down(exc)
    if not deleted:
        return error(404, f"no package {name!r}")
    logger.info("package %s deleted", name)
    await services.config_cache.changed(f"package {name} deleted")
    return Response(status_code=204)


async def package_resource(request: Request) -> Response:
    """/api/v1/packages/{name}: one route for its three methods, so a 405 lists all of them."""
    if request.method == "PUT":
        return await put_package(request)
    if request.method == "DELETE":
        return await delete_package(request)
    return await get_package(request)


async def list_versions(request: Request) -> Response:
    """The package's last revisions, newest first (404 when there is no such package)."""
    name = _name(request)
    try:
        check_name(name, "package")
    except InvalidConfig as exc:
        return error(400, str(exc))
    try:
        versions = await node_of(request).store.package_versions(name)
    except StoreError as exc:
        return store_down(exc)
    if not versions:
        return error(404, f"no package {name!r}")
    return JSONResponse({"keep": KEEP_VERSIONS, "versions": [version_json(v) for v in versions]})
