"""Locust entry point: `locust -f loadtest/locustfile.py WebSocketAgent --opamp-targets 127.0.0.1:4320`.

The scale runner (`python -m loadtest.run`) starts Locust this way; run it by hand to point the
simulated agents at any gateway.
"""

from __future__ import annotations

import functools
import gc
import resource
import uuid
from typing import Any

from locust import argument_parser, events, runners

from loadtest.users import AGENTS, HttpAgent, Phase, WebSocketAgent, WebSocketGreenletAgent
from loadtest.websocket_client_user import WebSocketClientAgent

__all__ = ["HttpAgent", "WebSocketAgent", "WebSocketClientAgent", "WebSocketGreenletAgent"]

# A worker holding ten thousand sockets on a busy machine can miss its 1-s heartbeats to the master
# for several seconds while it connects agents. With Locust's default (3 missed heartbeats) the
# master declares it missing and, when it was the last worker, stops the whole test.
runners.HEARTBEAT_LIVENESS = 60
# A worker handling the master's spawn message calls `default_args_dict()` once per option of the
# message, and each call builds and parses Locust's whole argument parser: about 0.2 s of CPU per
# spawn message, one a second per worker for the whole ramp, and still running when the hold starts
# (py-spy: 92 % of a worker's samples in the first seconds of a hold). The defaults never change
# within a process: build them once.
argument_parser.default_args_dict = functools.cache(argument_parser.default_args_dict)


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("OpAMP agents")
    group.add_argument(
        "--opamp-targets",
        default="",
        help="gateways as host:port[,host:port...]; agents are spread over them (default: --host)",
    )
    group.add_argument("--heartbeat-interval", type=float, default=30.0, help="seconds between heartbeats")
    group.add_argument(
        "--reply-timeout", type=float, default=30.0, help="seconds a message may wait for its reply"
    )
    group.add_argument("--agent-key", default="", help="agent key sent as Authorization: Bearer")
    group.add_argument(
        "--request-uid-ratio",
        type=float,
        default=0.0,
        help="share of agents (0..1) that ask the server for their instance_uid",
    )
    group.add_argument(
        "--uid-file",
        default="",
        help="at exit, append every simulated agent's current instance_uid (UUID text) to this file",
    )
    group.add_argument(
        "--source-addresses",
        type=int,
        default=4096,
        help="WebSocket agents connect from this many loopback addresses (127.1.0.1 and up)",
    )


@events.init.add_listener
def _raise_open_files(**_: Any) -> None:
    # Thousands of agents allocate fast and free almost everything at once (no cycles): the default
    # young generation of 700 objects would collect many times per second for nothing.
    gc.set_threshold(50_000, 20, 100)
    # Every WebSocket agent holds a socket: use the whole hard limit this process is allowed.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@events.quitting.add_listener
def _write_uids(environment: Any, **_: Any) -> None:
    path = getattr(environment.parsed_options, "uid_file", "")
    if path and AGENTS:
        with open(path, "a") as file:
            file.write("".join(f"{uuid.UUID(bytes=agent.uid)}\n" for agent in AGENTS))


@events.spawning_complete.add_listener
def _holding(**_: Any) -> None:
    # Fired on the master and, by its message, on every worker once all users are spawned.
    Phase.ramping = False
    # Every agent's objects now live for the whole hold: out of the collector's way, so that a
    # collection walks only what the messages allocate.
    gc.collect()
    gc.freeze()
