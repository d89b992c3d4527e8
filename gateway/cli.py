"""The `opamp-gateway` command: serve, migrate, version."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence

from gateway import __version__, logs, pacing, settings as settings_mod
from gateway.auth import CredentialError
from gateway.settings import is_loopback
from gateway.tls import TLSConfigError

logger = logging.getLogger("gateway.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opamp-gateway", description="A horizontally scaled OpAMP server.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run a gateway node",
        description="Run a gateway node. Every flag can also be set as OPAMP_GATEWAY_<FLAG> in the "
        "environment.",
    )
    settings_mod.add_arguments(serve)
    migrate = sub.add_parser(
        "migrate",
        help="create or upgrade the Elasticsearch index templates, indices and aliases",
        description="Create or upgrade the Elasticsearch index templates, indices and aliases (idempotent; "
        "run it before every install or upgrade). Reads the same flags and OPAMP_GATEWAY_* variables as "
        "serve; only the --elasticsearch-* ones and the logging flags matter.",
    )
    settings_mod.add_arguments(migrate)
    migrate.add_argument(
        "--serverless",
        action="store_true",
        default=None,
        help="write templates for Elastic Cloud Serverless (no shard or replica settings); without it, "
        "the cluster's build flavor decides",
    )
    sub.add_parser("version", help="print the version")
    return parser


def _refuse_insecure(s: settings_mod.Settings) -> str | None:
    """Why `serve` must not start with these settings (secure by default), or None."""
    if s.insecure_allow_anonymous:
        return None
    problems = []
    if not is_loopback(s.host) and not s.agent_auth:
        problems.append(
            f"the OpAMP port {s.host}:{s.port} has no agent keys, so anyone who can reach it could enroll "
            "agents. Give keys with --agent-keys-file FILE (one key per line, or sha256:<hex> of it; "
            "OPAMP_GATEWAY_AGENT_KEYS_FILE) or OPAMP_GATEWAY_AGENT_KEYS=key1,key2, or bind it to "
            "loopback with --host 127.0.0.1."
        )
    if not is_loopback(s.admin_host) and not s.admin_auth:
        problems.append(
            f"the admin port {s.admin_host}:{s.admin_port} has no admin token, so anyone who can reach it "
            "could read the fleet and command agents. Give one with --admin-token-file FILE "
            "(OPAMP_GATEWAY_ADMIN_TOKEN_FILE), or bind it to loopback with --admin-host 127.0.0.1."
        )
    if not problems:
        return None
    return (
        "refusing to serve without authentication beyond loopback: "
        + " And ".join(problems)
        + " Only on a network you trust: --insecure-allow-anonymous "
        "(OPAMP_GATEWAY_INSECURE_ALLOW_ANONYMOUS=true) serves without them."
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (uvicorn[standard] brings it): a faster loop under many connections."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"opamp-gateway {__version__}")
        return 0
    try:
        s = settings_mod.from_namespace(args)
    except settings_mod.SettingsError as exc:
        print(f"opamp-gateway: error: {exc}", file=sys.stderr)
        return 2
    logs.configure(s.log_level, s.log_format)
    if args.command == "migrate":
        return _migrate(s, args.serverless)
    refusal = _refuse_insecure(s)
    if refusal:
        print(f"opamp-gateway: error: {refusal}", file=sys.stderr)
        return 2
    if not s.tls and not (is_loopback(s.host) and is_loopback(s.admin_host)):
        logger.warning(
            "serving beyond loopback without TLS: keys and tokens cross the network in clear text. "
            "Give --tls-cert and --tls-key, or terminate TLS in front of the gateway."
        )
    from gateway.server import StartupFailed, serve
    from gateway.store.elasticsearch_client import ElasticsearchConfigError

    try:
        factory = _loop_factory()
        if s.loop_batch_window > 0:
            # gateway/pacing.py: the pacer must tell work under way from an idle loop.
            factory = pacing.loop_factory(factory)
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(s))
    except (StartupFailed, CredentialError, TLSConfigError, ElasticsearchConfigError) as exc:
        print(f"opamp-gateway: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _migrate(s: settings_mod.Settings, serverless: bool | None) -> int:
    from gateway import migrate

    try:
        done = asyncio.run(migrate.run(s, serverless=serverless))
    except migrate.MigrateError as exc:
        print(f"opamp-gateway: error: {exc}", file=sys.stderr)
        return 1
    for line in done or ["nothing to do: the templates, indices and aliases are up to date"]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
