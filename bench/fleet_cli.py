"""`python -m bench fleet`'s command line and the summary it prints (the benchmark is
bench/fleet_cost.py)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bench import report
from bench.agents import ReplyError
from bench.fleet_cost import FleetConfig, FleetFileLimitError, run
from bench.profile import ProfileError
from bench.ws_client import WsError
from harness.process import ProcessError
from harness.redis_server import RedisMissing

logger = logging.getLogger("bench.fleet_cli")


def table(result: dict[str, object]) -> str:
    """The summary printed at the end of a run."""
    cfg = result["config"]
    sides = result["targets"]
    assert isinstance(cfg, dict) and isinstance(sides, dict)
    lines = [
        f"{cfg['agents']:,} idle WebSocket agents, heartbeat every {cfg['interval']:g} s, "
        f"{cfg['window']:g} s window; {result['pinning']}",
        "",
        "| target   | µs CPU per agent-interval | KiB per agent | heartbeats | pings | GC µs | Redis µs |",
        "| -------- | ------------------------: | ------------: | ---------: | ----: | ----: | -------: |",
    ]
    for name in ("gateway", "baseline"):
        s = sides[name]
        lines.append(
            f"| {name:<8} | {s['us_per_agent_interval']:25.1f} | {s['kib_per_agent']:13.1f} | "
            f"{s['sent']:10,} | {s['pings']:5,} | {s['gc_us_per_agent_interval']:5.1f} | "
            f"{s['redis_us_per_agent_interval']:8.1f} |"
        )
    aim = result["aim"]
    assert isinstance(aim, dict)
    lines += [
        "",
        f"ratio gateway/baseline: CPU {result['cpu_ratio']:.2f}, memory {result['memory_ratio']:.2f}; "
        f"aim: gateway <= {aim['us_per_agent_interval']:.0f} µs per agent-interval, "
        f"<= {aim['kib_per_agent']:.0f} KiB per agent",
    ]
    profile = sides["gateway"].get("profile")
    if isinstance(profile, dict):
        cost = profile["breakdown"]["us_per_agent_interval"]
        lines += ["", f"gateway by component (profiled window, {profile['us_per_agent_interval']:.1f} µs):"]
        lines += [f"  {name:<20} {us:7.1f} µs" for name, us in cost.items()]
    problems = result["problems"]
    assert isinstance(problems, list)
    if problems:
        lines += ["", "INVALID:", *(f"  - {p}" for p in problems)]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    defaults = FleetConfig()
    parser = argparse.ArgumentParser(
        prog="python -m bench fleet",
        description="CPU and memory per idle connected WebSocket agent, gateway against the bare "
        "uvicorn + Starlette echo endpoint holding the same sockets; loopback only.",
    )
    add = parser.add_argument
    add("--agents", type=int, default=defaults.agents, help="agents, one socket each (default %(default)s)")
    add(
        "--interval",
        type=float,
        default=defaults.interval,
        help="seconds between an agent's heartbeats (default %(default)s)",
    )
    add("--window", type=float, default=defaults.window, help="measured seconds (default %(default)s)")
    add(
        "--connect-concurrency",
        type=int,
        default=defaults.connect_concurrency,
        help="handshakes and first reports in flight while agents connect (default %(default)s)",
    )
    add(
        "--ws-ping-interval",
        type=float,
        default=None,
        help="seconds between server pings on both targets (default: the gateway's default)",
    )
    add("--no-redis", action="store_true", help="run the gateway without a Redis bus (no presence)")
    add("--profile", action="store_true", help="one more gateway window under py-spy, split by component")
    add("--output", type=Path, default=defaults.output, help="results JSON (default %(default)s)")
    add("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.agents < 1 or args.interval <= 0 or args.window <= 0 or args.connect_concurrency < 1:
        parser.error("--agents, --interval, --window and --connect-concurrency must be positive")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    cfg = FleetConfig(
        agents=args.agents,
        interval=args.interval,
        window=args.window,
        connect_concurrency=args.connect_concurrency,
        redis=not args.no_redis,
        ping_interval=args.ws_ping_interval,
        profile=args.profile,
        output=args.output,
    )
    try:
        result = run(cfg, lambda line: print(line, flush=True), ["fleet", *argv])
    except (
        ReplyError,
        WsError,
        ProcessError,
        ProfileError,
        RedisMissing,
        FleetFileLimitError,
        OSError,
    ) as exc:
        if args.verbose:
            raise
        print(f"bench fleet: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print()
    print(table(result))
    report.write_json(result, cfg.output)
    print(f"\nresults written to {cfg.output}")
    return 0 if result["valid"] else 1
