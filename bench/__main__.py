"""`python -m bench [http]`: the HTTP heartbeat benchmark; `python -m bench ws`: the WebSocket one;
`python -m bench fleet`: the cost of each idle connected agent; `es`, `config`: see their modules.
`make bench` runs them all, HTTP first."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import config_push, report
from bench.agents import ReplyError
from bench.client import HttpError
from bench.http_bench import HttpBenchConfig, run
from bench.profile import ProfileError
from bench.targets import TargetError
from bench.wrk import WrkError
from bench.ws_bench import FileLimitError, WsBenchConfig, run as run_ws
from bench.ws_client import WsError
from harness.process import ProcessError
from harness.redis_server import RedisMissing

logger = logging.getLogger("bench")

_DEFAULTS = HttpBenchConfig()
_WS_DEFAULTS = WsBenchConfig()
# Failures that deserve one clear line rather than a traceback (-v shows the traceback).
_KNOWN_FAILURES = (
    WrkError,
    TargetError,
    ProcessError,
    RedisMissing,
    ReplyError,
    HttpError,
    ProfileError,
    WsError,
    FileLimitError,
    OSError,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="OpAMP HTTP heartbeat throughput of the gateway against a bare Starlette endpoint on the "
        "same uvicorn, server and load generator on different cores, loopback only. "
        "`python -m bench ws --help` for the WebSocket benchmark.",
    )
    add = parser.add_argument
    add("suite", nargs="?", choices=("http",), default="http", help="which benchmark (default %(default)s)")
    add(
        "--duration",
        type=int,
        default=_DEFAULTS.duration,
        help="seconds per timed phase (default %(default)s)",
    )
    add(
        "--warmup",
        type=int,
        default=_DEFAULTS.warmup,
        help="seconds of warm-up per target, 0 for none (default %(default)s)",
    )
    add(
        "--rounds",
        type=int,
        default=_DEFAULTS.rounds,
        help="timed phases per target, targets alternating (default %(default)s)",
    )
    add("--agents", type=int, default=_DEFAULTS.agents, help="simulated agents (default %(default)s)")
    add(
        "--connections",
        type=int,
        default=_DEFAULTS.connections,
        help="keep-alive connections (default %(default)s)",
    )
    add("--threads", type=int, default=_DEFAULTS.threads, help="wrk threads (default 1: it has one core)")
    add(
        "--baseline-loop",
        choices=("uvloop", "asyncio"),
        default=_DEFAULTS.baseline_loop,
        help="event loop of the baseline's uvicorn (default %(default)s)",
    )
    add(
        "--sample",
        type=int,
        default=_DEFAULTS.sample,
        help="heartbeat replies decoded in full before and after",
    )
    add("--output", type=Path, default=_DEFAULTS.output, help="results JSON (default %(default)s)")
    add("--profile", action="store_true", help="also profile the gateway under load with py-spy (untimed)")
    add("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> HttpBenchConfig:
    if args.duration < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--duration and --rounds must be at least 1, --warmup at least 0")
    if args.threads < 1 or args.connections < args.threads:
        parser.error("--threads must be at least 1 and --connections at least --threads")
    if args.agents < 2 * args.connections:
        # Each agent has one request in flight at most; with fewer agents connections would idle.
        parser.error("--agents must be at least twice --connections")
    if not 1 <= args.sample <= args.agents:
        parser.error("--sample must be between 1 and --agents")
    return HttpBenchConfig(
        duration=args.duration,
        warmup=args.warmup,
        rounds=args.rounds,
        agents=args.agents,
        connections=args.connections,
        threads=args.threads,
        baseline_loop=args.baseline_loop,
        sample=args.sample,
        output=args.output,
        profile=args.profile,
    )


def _ws_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench ws",
        description="OpAMP WebSocket heartbeat round trips of the gateway against a bare Starlette WebSocket "
        "endpoint on the same uvicorn, server and load generator on different cores, loopback only; then "
        "resident memory per idle connected agent.",
    )
    add = parser.add_argument
    add("suite", choices=("ws",), help="the WebSocket benchmark")
    add(
        "--duration",
        type=int,
        default=_WS_DEFAULTS.duration,
        help="seconds per timed phase (default %(default)s)",
    )
    add(
        "--warmup",
        type=int,
        default=_WS_DEFAULTS.warmup,
        help="seconds of warm-up per target, 0 for none (default %(default)s)",
    )
    add(
        "--rounds",
        type=int,
        default=_WS_DEFAULTS.rounds,
        help="timed phases per target, targets alternating (default %(default)s)",
    )
    add(
        "--agents",
        type=int,
        default=_WS_DEFAULTS.agents,
        help="agents in the closed loop, one socket and one heartbeat in flight each (default %(default)s)",
    )
    add(
        "--connect-concurrency",
        type=int,
        default=_WS_DEFAULTS.connect_concurrency,
        help="handshakes and first reports in flight while agents connect (default %(default)s)",
    )
    add(
        "--baseline-loop",
        choices=("uvloop", "asyncio"),
        default=_WS_DEFAULTS.baseline_loop,
        help="event loop of the baseline's uvicorn (default %(default)s)",
    )
    add(
        "--sample",
        type=int,
        default=_WS_DEFAULTS.sample,
        help="heartbeat replies decoded in full before and after (default %(default)s)",
    )
    add(
        "--idle-agents",
        type=int,
        default=_WS_DEFAULTS.idle_agents,
        help="idle sockets for the memory measurement, 0 to skip it (default %(default)s)",
    )
    add(
        "--idle-seconds",
        type=float,
        default=_WS_DEFAULTS.idle_seconds,
        help="seconds the idle sockets sit before memory is read (default %(default)s)",
    )
    add("--output", type=Path, default=_WS_DEFAULTS.output, help="results JSON (default %(default)s)")
    add("--profile", action="store_true", help="also profile the gateway under load with py-spy (untimed)")
    add("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _ws_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> WsBenchConfig:
    if args.duration < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--duration and --rounds must be at least 1, --warmup at least 0")
    if args.agents < 1 or args.connect_concurrency < 1:
        parser.error("--agents and --connect-concurrency must be at least 1")
    if not 1 <= args.sample <= args.agents:
        parser.error("--sample must be between 1 and --agents")
    if args.idle_agents < 0 or args.idle_seconds < 0:
        parser.error("--idle-agents and --idle-seconds must be at least 0")
    return WsBenchConfig(
        duration=args.duration,
        warmup=args.warmup,
        rounds=args.rounds,
        agents=args.agents,
        connect_concurrency=args.connect_concurrency,
        baseline_loop=args.baseline_loop,
        sample=args.sample,
        idle_agents=args.idle_agents,
        idle_seconds=args.idle_seconds,
        output=args.output,
        profile=args.profile,
    )


def _progress(line: str) -> None:
    print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "es":
        from bench import es_requests

        return es_requests.main(argv[1:])
    if argv and argv[0] == "config":
        return config_push.main(argv[1:])
    if argv and argv[0] == "fleet":
        from bench import fleet_cli

        return fleet_cli.main(argv[1:])
    websocket = bool(argv) and argv[0] == "ws"
    parser = _ws_parser() if websocket else _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    try:
        if websocket:
            ws_cfg = _ws_config(args, parser)
            result = run_ws(ws_cfg, _progress, argv)
            table, output = report.ws_table(result), ws_cfg.output
        else:
            cfg = _config(args, parser)
            result = run(cfg, _progress, argv)
            table, output = report.http_table(result), cfg.output
    except _KNOWN_FAILURES as exc:
        if args.verbose:
            raise
        print(f"bench: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print()
    print(table)
    report.write_json(result, output)
    print(f"\nresults written to {output}")
    return 0 if result["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
