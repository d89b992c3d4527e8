"""The baseline target: a bare Starlette app on the gateway's uvicorn settings.

`POST /v1/opamp` reads the body and answers a fixed, pre-serialized ServerToAgent of the same size as
the gateway's heartbeat reply, with the same content type. A WebSocket on `GET /v1/opamp` (the same
port and path, as on the gateway) answers every binary message with the same ServerToAgent, framed
(header 0 first). Everything the gateway adds on top of this (decode, engine, store, metrics,
encode) is what the ratio measures.

Run: python -m bench.baseline --port P --reply-hex HEX [--loop uvloop|asyncio]
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from gateway.opamp import capabilities as caps, framing
from gateway.proto import opamp_pb2 as pb
from gateway.settings import Settings

logger = logging.getLogger("bench.baseline")

PROTOBUF = "application/x-protobuf"
OPAMP_PATH = "/v1/opamp"
# Stands in for an agent's uid in the fixed reply; only its length matters.
FIXED_UID = bytes(range(16))


def heartbeat_reply() -> bytes:
    """What the gateway answers a heartbeat today: the agent's uid and the server's capabilities
    (OffersConnectionSettings among them: the default --agent-heartbeat-interval offers one)."""
    reply = pb.ServerToAgent(
        instance_uid=FIXED_UID, capabilities=caps.server_capabilities(offers_settings=True)
    )
    return reply.SerializeToString()


def build_app(reply: bytes) -> Starlette:
    async def opamp(request: Request) -> Response:
        await request.body()
        # Same construction as gateway.transport.http._protobuf.
        return Response(reply, status_code=200, headers={"Content-Type": PROTOBUF})

    framed = framing.encode(reply)

    async def opamp_websocket(websocket: WebSocket) -> None:
        await websocket.accept()
        # The gateway's loop (gateway.transport.websocket.Connection.serve) minus the gateway.
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            await websocket.send_bytes(framed)

    async def ready(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ready"})

    return Starlette(
        routes=[
            Route(OPAMP_PATH, opamp, methods=["POST"]),
            WebSocketRoute(OPAMP_PATH, opamp_websocket),
            Route("/readyz", ready, methods=["GET"]),
        ]
    )


def config(
    app: Starlette, host: str, port: int, loop: str, ping_interval: float | None = None
) -> uvicorn.Config:
    """gateway.server's uvicorn settings (WebSocket ones at the gateway's defaults, or pings every
    `ping_interval` seconds), with the HTTP parser and event loop named explicitly."""
    defaults = Settings()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop=loop,
        http="httptools",
        lifespan="off",
        log_config=None,
        log_level="warning",
        access_log=False,
        # uvicorn's "auto" WebSocket implementation, as the gateway's: websockets' sans-I/O protocol.
        ws="auto",
        ws_per_message_deflate=False,
        ws_max_size=defaults.max_message_bytes,
        ws_ping_interval=defaults.ws_ping_interval if ping_interval is None else ping_interval,
        ws_ping_timeout=defaults.ws_ping_timeout,
        timeout_graceful_shutdown=10,
        server_header=False,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.baseline", description="bare Starlette OpAMP endpoint"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--reply-hex", default=None, help="the reply body (default: heartbeat_reply())")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--ping-interval", type=float, default=None, help="default: the gateway's")
    args = parser.parse_args(argv)
    reply = bytes.fromhex(args.reply_hex) if args.reply_hex else heartbeat_reply()
    logging.basicConfig(level=logging.WARNING)
    uvicorn.Server(config(build_app(reply), args.host, args.port, args.loop, args.ping_interval)).run()


if __name__ == "__main__":
    main()
