"""The baseline target: a bare Starlette app on the gateway's uvicorn settings.

`POST /v1/opamp` reads the body and answers a fixed, pre-serialized ServerToAgent of the same size as
the gateway's heartbeat reply, with the same content type. Everything the gateway adds on top of this
(decode, engine, store, metrics, encode) is what the ratio measures.

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
from starlette.routing import Route

from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb

logger = logging.getLogger("bench.baseline")

PROTOBUF = "application/x-protobuf"
OPAMP_PATH = "/v1/opamp"
# Stands in for an agent's uid in the fixed reply; only its length matters.
FIXED_UID = bytes(range(16))


def heartbeat_reply() -> bytes:
    """What the gateway answers a heartbeat today: the agent's uid and the server's capabilities."""
    reply = pb.ServerToAgent(instance_uid=FIXED_UID, capabilities=caps.SERVER_CAPABILITIES)
    return reply.SerializeToString()


def build_app(reply: bytes) -> Starlette:
    async def opamp(request: Request) -> Response:
        await request.body()
        # Same construction as gateway.transport.http._protobuf.
        return Response(reply, status_code=200, headers={"Content-Type": PROTOBUF})

    async def ready(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ready"})

    return Starlette(
        routes=[
            Route(OPAMP_PATH, opamp, methods=["POST"]),
            Route("/readyz", ready, methods=["GET"]),
        ]
    )


def config(app: Starlette, host: str, port: int, loop: str) -> uvicorn.Config:
    """gateway.server's uvicorn settings, with the HTTP parser and event loop named explicitly."""
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
        ws_per_message_deflate=False,
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
    args = parser.parse_args(argv)
    reply = bytes.fromhex(args.reply_hex) if args.reply_hex else heartbeat_reply()
    logging.basicConfig(level=logging.WARNING)
    uvicorn.Server(config(build_app(reply), args.host, args.port, args.loop)).run()


if __name__ == "__main__":
    main()
