"""Admin actions: POST /api/v1/agents/{instance_uid}/restart and POST /api/v1/drain."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api.context import node_of
from gateway.api.errors import error, store_down, store_unavailable
from gateway.fleet.agent import InvalidInstanceUid, uid_bytes, uid_str
from gateway.opamp import engine
from gateway.proto import opamp_pb2 as pb
from gateway.store.base import StoreError
from gateway.store.writer import WriterFull, WriterStopped


async def restart_agent(request: Request) -> Response:
    """202 once the restart is on its way: pushed over the agent's socket (this node or the node that
    holds it), or pending for the agent's next poll."""
    services = node_of(request)
    text = request.path_params["instance_uid"]
    try:
        uid = uid_bytes(text)
    except InvalidInstanceUid:
        return error(404, f"no agent {text!r}: instance_uid must be a canonical UUID string")
    try:
        state = await services.writer.get(uid)
    except StoreError as exc:
        return store_down(exc)
    if state is None:
        return error(404, f"no agent {text}")
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
