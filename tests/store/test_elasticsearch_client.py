"""What the client's failures mean for the gateway, and how Settings become client options."""

from __future__ import annotations

from typing import Any, cast

import elastic_transport
import pytest
from elasticsearch import ApiError

from gateway import settings as settings_mod
from gateway.settings import Settings
from gateway.store.base import StoreError, StoreUnavailable
from gateway.store.elasticsearch import ElasticsearchStore
from gateway.store.elasticsearch_client import NotMigrated, make_client, store_error

pytestmark = pytest.mark.anyio


def _api_error(status: int, kind: str, **extra: Any) -> ApiError:
    body = {"error": {"root_cause": [{"type": kind, "reason": "r"}], "type": kind, "reason": "r", **extra}}
    meta = elastic_transport.ApiResponseMeta(
        status=status,
        http_version="1.1",
        headers=elastic_transport.HttpHeaders(),
        duration=0.0,
        node=cast(Any, None),
    )
    return ApiError(message=kind, meta=meta, body=body)


@pytest.mark.parametrize(
    ("status", "kind", "expected", "says"),
    [
        (
            404,
            "index_not_found_exception",
            NotMigrated,
            "opamp-agents does not exist; run `opamp-gateway migrate`",
        ),
        (401, "security_exception", StoreError, "check the API key"),
        (403, "security_exception", StoreError, "check the API key"),
        (403, "cluster_block_exception", StoreUnavailable, "cluster_block_exception"),
        (429, "es_rejected_execution_exception", StoreUnavailable, "HTTP 429"),
        (503, "unavailable_shards_exception", StoreUnavailable, "HTTP 503"),
        (400, "parsing_exception", StoreError, "HTTP 400 parsing_exception"),
    ],
)
def test_api_errors(status: int, kind: str, expected: type[StoreError], says: str) -> None:
    error = store_error(_api_error(status, kind, index="opamp-agents"), "bulk")
    assert type(error) is expected
    assert says in str(error)


def test_a_connection_failure_is_transient() -> None:
    error = store_error(elastic_transport.ConnectionError("refused"), "mget")
    assert isinstance(error, StoreUnavailable) and "Elasticsearch mget: ConnectionError" in str(error)


async def test_credentials_reach_the_client() -> None:
    with_key = make_client(
        settings_mod.load(["--elasticsearch-url=http://es:9200", "--elasticsearch-api-key=c2VjcmV0"], {})
    )
    basic = make_client(
        settings_mod.load(
            [
                "--elasticsearch-url=http://es:9200",
                "--elasticsearch-username=gw",
                "--elasticsearch-password=pw",
            ],
            {},
        )
    )
    try:
        assert with_key._headers["authorization"] == "ApiKey c2VjcmV0"
        assert basic._headers["authorization"] == "Basic Z3c6cHc="
    finally:
        await with_key.close()
        await basic.close()


async def test_an_elasticsearch_8_cluster_is_named_in_the_readiness_error() -> None:
    from harness.es_double import EsDouble

    with EsDouble(major=8) as double:
        store = ElasticsearchStore(make_client(Settings(elasticsearch_url=double.url)))
        try:
            with pytest.raises(StoreError, match="Elasticsearch 9 required"):
                await store.ping()
        finally:
            await store.close()


def test_connections_per_node_follow_the_messages_in_flight() -> None:
    def connections(**values: object) -> int:
        client = make_client(Settings(elasticsearch_url="http://127.0.0.1:9200", **values))  # type: ignore[arg-type]
        return int(client.transport.node_pool.get().config.connections_per_node)

    assert connections(max_inflight=1000) == 256
    assert connections(max_inflight=64) == 64
    assert connections(max_inflight=1) == 10
