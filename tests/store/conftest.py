"""Store fixtures shared by the contract suites.

To add an adapter, add its id to `BACKENDS` and a branch to `store_factory` that returns a fresh
client on one shared, empty backing store (so several clients act like several gateway nodes).

"elasticsearch" runs on the wire-level double (harness/es_double), "elasticsearch-serverless" on the
double as Elastic Cloud Serverless, both on a real cluster when OPAMP_GATEWAY_TEST_ES_URL is set.
Its clients write with `refresh=true`, so the inventory searches
see every write at once, as SQLite's queries do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store.base import Store
from gateway.store.sqlite import SQLiteStore
from tests.store.store_helpers import StoreFactory
from tests.support.es import EsAliases

BACKENDS = ["sqlite", "elasticsearch", "elasticsearch-serverless"]


@pytest.fixture(params=BACKENDS)
async def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens clients on one backing store; each call is like one more gateway node."""
    opened: list[Store] = []

    async def make() -> Store:
        store: Store
        if request.param == "sqlite":
            store = SQLiteStore(str(tmp_path / "agents.db"))
        elif request.param in ("elasticsearch", "elasticsearch-serverless"):
            fixture = "es_aliases" if request.param == "elasticsearch" else "es_serverless_aliases"
            aliases: EsAliases = request.getfixturevalue(fixture)
            store = aliases.store()
        else:  # pragma: no cover - a new backend without a factory branch
            raise AssertionError(f"no factory for backend {request.param}")
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(store_factory: StoreFactory) -> Store:
    return await store_factory()
