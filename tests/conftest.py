from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from harness.gateway import TLSFiles
from harness.process import ProcessError, UncleanExit
from harness.redis_server import RedisServer
from tests.support.es import es_aliases, es_serverless_aliases, es_serverless_target, es_target
from tests.support.process import Gateway, GatewayFactory, start_gateway
from tests.support.redis_server import RedisFactory

__all__ = [
    "es_aliases",
    "es_serverless_aliases",
    "es_serverless_target",
    "es_target",
]  # Elasticsearch (the double, or OPAMP_GATEWAY_TEST_ES_URL)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisFactory]:
    """Starts real redis-server processes on free loopback ports; all are stopped at session end."""
    factory = RedisFactory(tmp_path_factory.mktemp("redis"))
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def shared_redis(redis_factory: RedisFactory) -> RedisServer:
    """One redis-server for tests that do not stop it."""
    return redis_factory()


_GATEWAYS = pytest.StashKey[list[Gateway]]()
_PORT_RETRIES = 3


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach every gateway's output to the report of a failed setup, call or teardown."""
    report = yield
    if report.failed:
        for gateway in item.stash.get(_GATEWAYS, []):
            report.sections.append((f"gateway {gateway.name} (pid {gateway.pid}) output", gateway.log_text()))
    return report


@pytest.fixture
def gateway_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GatewayFactory]:
    """`gateway_factory(**flags) -> Gateway`: start a node (flags as for `opamp-gateway serve`, e.g.
    `offline_after=2`; `agent_key=`, `admin_token=` and `tls=TLSFiles(...)` for a secured node),
    ready on free loopback ports with its own SQLite file unless `sqlite_path` is given. Every node
    is stopped (SIGTERM, then SIGKILL) at teardown, which fails if a node needed SIGKILL or exited
    with a non-zero code."""
    started: list[Gateway] = []
    request.node.stash[_GATEWAYS] = started

    def factory(
        *,
        agent_key: str | None = None,
        admin_token: str | None = None,
        tls: TLSFiles | None = None,
        **flags: object,
    ) -> Gateway:
        name = f"gw{len(started) + 1}"
        for attempt in range(_PORT_RETRIES):
            try:
                gateway = start_gateway(
                    tmp_path, name, flags, agent_key=agent_key, admin_token=admin_token, tls=tls
                )
            except ProcessError as exc:
                # A free port can be taken between probing and binding; only then try again.
                pinned = "port" in flags or "admin_port" in flags
                if pinned or "address already in use" not in str(exc).lower() or attempt == _PORT_RETRIES - 1:
                    raise
                continue
            started.append(gateway)
            return gateway
        raise AssertionError("unreachable")

    yield factory

    problems: list[str] = []
    for gateway in reversed(started):
        try:
            gateway.stop_cleanly()
        except UncleanExit as exc:
            problems.append(f"gateway {exc}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)
