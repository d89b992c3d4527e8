"""Builds the two ASGI apps (OpAMP port and admin port) around one node's Services."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api import (
    admin,
    agent_keys,
    browser_guard,
    commands,
    config_versions,
    configs,
    connection_settings,
    context as api_context,
    credentials,
    health,
    openapi,
    packages,
    rollouts,
    ui,
)
from gateway.api.errors import http_exception
from gateway.auth import AdminGuard, AgentGuard
from gateway.transport import context as transport_context
from gateway.transport.http import OpampHttp

if TYPE_CHECKING:
    from gateway.services import Services

OPAMP_PATH = "/v1/opamp"


class _OpampPort:
    """The OpAMP port: POST /v1/opamp, every HTTP agent's hot path, goes straight to the transport's
    bare ASGI handler (no Starlette middleware, router, Request or Response); anything else on the
    port (health, other methods) to the Starlette app. WebSocket upgrades never reach an ASGI app:
    uvicorn hands them to the port's own protocol (gateway/server.py, transport/ws_protocol.py)."""

    def __init__(self, post: ASGIApp, app: Starlette) -> None:
        self._post = post
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == OPAMP_PATH:
            await self._post(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def opamp_post(services: Services) -> OpampHttp:
    """POST /v1/opamp: answered by the port's protocol, and over ASGI by `opamp_app`."""
    return OpampHttp(services, services.auth.agents, services.metrics.auth_failed("opamp"))


def opamp_app(services: Services, post: OpampHttp) -> ASGIApp:
    on_auth_failure = services.metrics.auth_failed("opamp")
    app = Starlette(
        routes=[
            # _OpampPort answers POST before the app; the route gives other methods their 405.
            Route(OPAMP_PATH, post, methods=["POST"]),
            Route("/healthz", health.healthz, methods=["GET"]),
            Route("/readyz", health.readyz_plain, methods=["GET"]),
        ],
        middleware=[
            Middleware(
                AgentGuard, credentials=services.auth.agents, path=OPAMP_PATH, on_failure=on_auth_failure
            )
        ],
    )
    transport_context.attach(app, services)
    # /healthz and /readyz
    api_context.attach(app, services)
    return _OpampPort(post, app)


async def _metrics(request: Request) -> Response:
    node = api_context.node_of(request)
    return Response(generate_latest(node.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def admin_app(services: Services) -> Starlette:
    ui_files = ui.UiFiles(ui.load_files())
    app = Starlette(
        routes=[
            Route("/api/v1/agents", admin.list_agents, methods=["GET"]),
            Route("/api/v1/agents/{instance_uid}", admin.agent_resource, methods=["GET", "DELETE"]),
            Route("/api/v1/agents/{instance_uid}/restart", commands.restart_agent, methods=["POST"]),
            Route("/api/v1/agents/{instance_uid}/key", agent_keys.move_agent_key, methods=["PUT"]),
            Route(
                "/api/v1/agents/{instance_uid}/credentials/rotate",
                credentials.rotate_credential,
                methods=["POST"],
            ),
            Route(
                "/api/v1/agents/{instance_uid}/credentials",
                credentials.revoke_credentials,
                methods=["DELETE"],
            ),
            Route("/api/v1/connection-settings", connection_settings.list_settings, methods=["GET"]),
            Route(
                "/api/v1/connection-settings/{name}",
                connection_settings.settings_resource,
                methods=["GET", "PUT", "DELETE"],
            ),
            Route("/api/v1/configs", configs.list_configs, methods=["GET"]),
            Route("/api/v1/configs/{name}", configs.config_resource, methods=["GET", "PUT", "DELETE"]),
            Route("/api/v1/configs/{name}/versions", config_versions.list_versions, methods=["GET"]),
            Route("/api/v1/configs/{name}/rollout", rollouts.get_rollout, methods=["GET"]),
            Route("/api/v1/configs/{name}/rollout/pause", rollouts.pause_rollout, methods=["POST"]),
            Route("/api/v1/configs/{name}/rollout/resume", rollouts.resume_rollout, methods=["POST"]),
            Route("/api/v1/configs/{name}/rollout/rollback", rollouts.rollback_rollout, methods=["POST"]),
            Route("/api/v1/packages", packages.list_packages, methods=["GET"]),
            Route("/api/v1/packages/{name}", packages.package_resource, methods=["GET", "PUT", "DELETE"]),
            Route("/api/v1/packages/{name}/versions", packages.list_versions, methods=["GET"]),
            Route("/api/v1/packages/{name}/rollout", rollouts.PACKAGE_ROLLOUTS.get, methods=["GET"]),
            Route(
                "/api/v1/packages/{name}/rollout/pause",
                rollouts.PACKAGE_ROLLOUTS.action("pause"),
                methods=["POST"],
            ),
            Route(
                "/api/v1/packages/{name}/rollout/resume",
                rollouts.PACKAGE_ROLLOUTS.action("resume"),
                methods=["POST"],
            ),
            Route(
                "/api/v1/packages/{name}/rollout/rollback",
                rollouts.PACKAGE_ROLLOUTS.action("rollback"),
                methods=["POST"],
            ),
            Route("/api/v1/drain", commands.drain, methods=["POST"]),
            Route("/api/v1/rebalance", commands.rebalance, methods=["POST"]),
            Route("/api/v1/fleet/summary", admin.fleet_summary, methods=["GET"]),
            Route(openapi.PATH, openapi.document, methods=["GET"]),
            Route("/metrics", _metrics, methods=["GET"]),
            Route("/healthz", health.healthz, methods=["GET"]),
            Route("/readyz", health.readyz, methods=["GET"]),
            Route("/", ui_files.root, methods=["GET"]),
            Route(ui.PREFIX, ui_files.file, methods=["GET"]),
            Route(ui.PREFIX + "{name}", ui_files.file, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_exception},
        middleware=[
            # Outermost: a rebinding or cross-site request is refused before it learns anything.
            Middleware(
                browser_guard.BrowserGuard,
                hosts=browser_guard.allowed_hosts(
                    services.settings.admin_host, services.settings.allowed_admin_hosts
                ),
            ),
            Middleware(
                AdminGuard, credentials=services.auth.admin, on_failure=services.metrics.auth_failed("admin")
            ),
        ],
    )
    api_context.attach(app, services)
    return app
