"""`python -m bench`: the HTTP heartbeat benchmark (what `make bench` runs)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import report
from bench.agents import ReplyError
from bench.client import HttpError
from bench.http_bench import HttpBenchConfig, run
from bench.profile import ProfileError
from bench.targets import TargetError
from bench.wrk import WrkError

logger = logging.getLogger("bench")

_DEFAULTS = HttpBenchConfig()
# Failures that deserve one clear line rather than a traceback (-v shows the traceback).
_KNOWN_FAILURES = (WrkError, TargetError, ReplyError, HttpError, ProfileError, OSError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="OpAMP HTTP heartbeat throughput of the gateway against a bare Starlette endpoint on the "
        "same uvicorn, server and load generator on different cores, loopback only.",
    )
    add = parser.add_argument
    # `es` has its own flags: python -m bench es --help
    add(
        "suite",
        nargs="?",
        choices=("http", "es"),
        default="http",
        help="which benchmark (default %(default)s)",
    )
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


def _progress(line: str) -> None:
    print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["es"]:
        from bench import es_requests

        return es_requests.main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    cfg = _config(args, parser)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    try:
        result = run(cfg, _progress, argv)
    except _KNOWN_FAILURES as exc:
        if args.verbose:
            raise
        print(f"bench: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print()
    print(report.http_table(result))
    report.write_json(result, cfg.output)
    print(f"\nresults written to {cfg.output}")
    return 0 if result["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
