"""Admin actions: POST /api/v1/agents/{instance_uid}/restart, POST /api/v1/drain and
POST /api/v1/rebalance."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api.agent_path import path_agent
from gateway.api.context import node_of
from gateway.api.errors import error, store_unavailable
from gateway.bus.base import BusUnavailable
from gateway.fleet.agent import uid_str
from gateway.opamp import engine
from gateway.proto import opamp_pb2 as pb
from gateway.store.base import StoreError
from gateway.store.writer import WriterFull, WriterStopped


async def restart_agent(request: Request) -> Response:
    """202 once the restart is stored on the agent's record: "pushed" if a socket took it (this node's
    or the owning node's), else "pending" until the agent's next message or reconnect."""
    services = node_of(request)
    state = await path_agent(request, services, fresher=False)
    if isinstance(state, JSONResponse):
        return state
    command = pb.CommandType_Restart
    if not engine.accepts_command(state, command):
        return error(
            409,
            f"agent {state.uid} does not accept restart commands: it does not report the "
            "AcceptsRestartCommand capability",
        )
    try:
        delivery = await services.router.deliver_command(state.instance_uid, command)
    except (StoreError, WriterFull, WriterStopped) as exc:
        return store_unavailable(f"could not keep the command for the agent's next message: {exc}")
    return JSONResponse(
        {
            "instance_uid": uid_str(state.instance_uid),
            "command": "restart",
            "delivery": delivery.kind,
            "node": delivery.node,
            "command_id": delivery.command_id,
        },
        status_code=202,
    )


async def drain(request: Request) -> Response:
    """Start draining this node (idempotent). The process keeps running: Kubernetes' SIGTERM, which
    follows a preStop hook that calls this, joins the running drain and then exits."""
    services = node_of(request)
    services.drain.start()
    return JSONResponse(
        {
            "status": "draining",
            "node": services.settings.node_id,
            "websockets": services.registry.socket_count,
            "drain_seconds": services.settings.drain_seconds,
        },
        status_code=202,
    )


_MAX_REBALANCE_WINDOW = 3600.0


async def rebalance(request: Request) -> Response:
    """Shed this node's WebSocket agents above the fair share over `?window=` seconds (default
    --drain-seconds); for after a node came back. Answers with the plan."""
    services = node_of(request)
    if services.drain.draining:
        return error(409, "this node is draining: it sheds every WebSocket already")
    text = request.query_params.get("window")
    window = services.settings.drain_seconds
    if text is not None:
        try:
            window = float(text)
        except ValueError:
            return error(400, f"window: not a number of seconds: {text!r}")
        if not 0 <= window <= _MAX_REBALANCE_WINDOW:
            return error(400, f"window: must be 0 to {_MAX_REBALANCE_WINDOW:g} seconds, got {text}")
    try:
        plan = await services.rebalance.start(window)
    except BusUnavailable as exc:
        return error(503, f"the node liveness records cannot be read, so no fair share is known: {exc}")
    return JSONResponse(
        {
            "status": "rebalancing" if plan.sockets else "balanced",
            "node": services.settings.node_id,
            "live_nodes": plan.nodes,
            "websocket_agents": plan.agents,
            "fair_share": plan.fair_share,
            "shedding_agents": plan.shedding,
            "shedding_sockets": plan.sockets,
            "window_seconds": plan.window,
        },
        status_code=202,
    )
