from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import RedisFactory, RedisServer


@pytest.fixture(scope="session")
def redis_factory() -> Iterator[RedisFactory]:
    factory = RedisFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def shared_redis(redis_factory: RedisFactory) -> RedisServer:
    """One redis-server for tests that do not stop it."""
    return redis_factory()
