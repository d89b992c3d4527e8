"""Elasticsearch for tests: the wire-level double, or a real cluster when OPAMP_GATEWAY_TEST_ES_URL
is set (e.g. the official container, see docs/deployment.md). Every test gets its own aliases, so
tests never see each other's documents, on the double and on a real cluster alike."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from gateway import settings as settings_mod
from gateway.migrate import index_specs, migrate
from gateway.settings import Settings
from gateway.store.elasticsearch import ElasticsearchStore
from gateway.store.elasticsearch_client import make_client
from harness.es_double import EsDouble

REAL_CLUSTER_ENV = "OPAMP_GATEWAY_TEST_ES_URL"
# With security on (the official container's default): an API key (the base64 "encoded" form), and
# the CA of the cluster's HTTP certificate when it is https.
API_KEY_ENV = "OPAMP_GATEWAY_TEST_ES_API_KEY"
CA_CERT_ENV = "OPAMP_GATEWAY_TEST_ES_CA_CERT"
T = TypeVar("T")


_SECRET_FLAGS = ("elasticsearch_api_key", "elasticsearch_ca_cert")


@dataclass
class EsTarget:
    url: str
    # None on a real cluster: fault injection and request counts exist only on the double.
    double: EsDouble | None


@dataclass(frozen=True)
class EsAliases:
    """One test's slice of the cluster, and the settings a gateway needs to use it."""

    target: EsTarget
    agents: str
    configs: str
    refresh_interval: str = "1s"

    @property
    def url(self) -> str:
        return self.target.url

    @property
    def double(self) -> EsDouble:
        if self.target.double is None:
            pytest.skip("needs the Elasticsearch double (fault injection or request counts)")
        return self.target.double

    def settings(self, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "elasticsearch_url": self.url,
            "elasticsearch_api_key": os.environ.get(API_KEY_ENV, "") if self.target.double is None else "",
            "elasticsearch_ca_cert": os.environ.get(CA_CERT_ENV, "") if self.target.double is None else "",
            "elasticsearch_agents_alias": self.agents,
            "elasticsearch_configs_alias": self.configs,
            "elasticsearch_refresh_interval": self.refresh_interval,
        }
        values.update(overrides)
        return settings_mod.Settings(**values)  # type: ignore[arg-type]

    def flags(self) -> dict[str, object]:
        """The same, as `opamp-gateway serve` flags."""
        secrets = {k: v for k, v in self.settings().__dict__.items() if k in _SECRET_FLAGS and v}
        return {
            **secrets,
            "elasticsearch_url": self.url,
            "elasticsearch_agents_alias": self.agents,
            "elasticsearch_configs_alias": self.configs,
        }

    def store(self, *, refresh: str | None = "true") -> ElasticsearchStore:
        """A client like one more gateway node's (refresh=true: searches see each write at once)."""
        s = self.settings()
        return ElasticsearchStore(
            make_client(s), agents_alias=self.agents, configs_alias=self.configs, refresh=refresh
        )

    async def migrate(self) -> list[str]:
        s = self.settings()
        client = make_client(s)
        try:
            return await migrate(client, index_specs(s))
        finally:
            await client.close()

    async def drop(self) -> None:
        """Delete this test's indices and templates (on a real cluster, nothing else is touched)."""
        client = make_client(self.settings())
        try:
            for alias in (self.agents, self.configs):
                # By name: clusters refuse wildcard deletes (action.destructive_requires_name).
                found = await client.indices.get_mapping(index=f"{alias}-*")
                for index in found.body:
                    await client.indices.delete(index=index)
                await client.options(ignore_status=404).indices.delete_index_template(name=alias)
        finally:
            await client.close()


@pytest.fixture(scope="session")
def es_target() -> Iterator[EsTarget]:
    url = os.environ.get(REAL_CLUSTER_ENV, "")
    if url:
        yield EsTarget(url.rstrip("/"), None)
        return
    with EsDouble() as double:
        yield EsTarget(double.url, double)


@pytest.fixture(scope="session")
def es_serverless_target() -> Iterator[EsTarget]:
    """The double as Elastic Cloud Serverless (refuses shard and replica settings); with a real
    cluster, that cluster (which is what it is)."""
    url = os.environ.get(REAL_CLUSTER_ENV, "")
    if url:
        yield EsTarget(url.rstrip("/"), None)
        return
    with EsDouble(serverless=True) as double:
        yield EsTarget(double.url, double)


@pytest.fixture
def es_serverless_aliases(es_serverless_target: EsTarget) -> Iterator[EsAliases]:
    aliases = new_aliases(es_serverless_target)
    run_sync(aliases.migrate)
    try:
        yield aliases
    finally:
        run_sync(aliases.drop)


def new_aliases(target: EsTarget) -> EsAliases:
    tag = uuid.uuid4().hex[:10]
    return EsAliases(target, f"opamp-test-{tag}-agents", f"opamp-test-{tag}-configs")


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to the end on a loop of its own thread: works from sync code and from
    fixtures set up while an async test's loop is running."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


@pytest.fixture
def es_aliases(es_target: EsTarget) -> Iterator[EsAliases]:
    """Fresh, migrated aliases for one test; dropped afterwards."""
    aliases = new_aliases(es_target)
    run_sync(aliases.migrate)
    try:
        yield aliases
    finally:
        run_sync(aliases.drop)
