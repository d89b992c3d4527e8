"""The double refuses what Elasticsearch refuses, with Elasticsearch's error types and statuses:
request size, immense terms, non-finite numbers, index settings and mapping parameters it does not
know, Serverless' managed settings, terms and bucket limits, long ids, field-name patterns in
`exists`. (The write block's in-flight behaviour is in tests/test_migrate.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import elasticsearch
import pytest
from elasticsearch import AsyncElasticsearch

from harness.es_double import EsDouble

pytestmark = pytest.mark.anyio

INDEX = "limits-000001"
MAPPINGS = {
    "dynamic": "strict",
    "properties": {
        "plain": {"type": "keyword"},
        "capped": {"type": "keyword", "ignore_above": 10},
        "attrs": {"type": "flattened"},
        "n": {"type": "long"},
    },
}


@pytest.fixture(scope="module")
def double() -> Iterator[EsDouble]:
    with EsDouble() as running:
        yield running


@pytest.fixture
async def es(double: EsDouble) -> AsyncIterator[AsyncElasticsearch]:
    client = AsyncElasticsearch(double.url, max_retries=0)
    await client.options(ignore_status=404).indices.delete(index=INDEX)
    await client.indices.create(index=INDEX, mappings=MAPPINGS)
    yield client
    await client.close()


async def _refused(call: Any) -> elasticsearch.ApiError:
    with pytest.raises(elasticsearch.ApiError) as caught:
        await call
    return caught.value


def _kind(error: elasticsearch.ApiError) -> str:
    return str(error.body["error"]["type"])


async def test_a_body_over_http_max_content_length_is_413() -> None:
    with EsDouble(max_content_length=100_000) as small:
        client = AsyncElasticsearch(small.url, max_retries=0)
        try:
            await client.indices.create(index=INDEX, mappings=MAPPINGS)
            too_large = await client.options(ignore_status=413).index(
                index=INDEX, id="1", document={"plain": "x" * 120_000}
            )
            assert too_large.meta.status == 413
            await client.index(index=INDEX, id="1", document={"plain": "x" * 20_000})
        finally:
            await client.close()


async def test_an_immense_keyword_term_is_refused_unless_ignore_above_applies(es: AsyncElasticsearch) -> None:
    error = await _refused(es.index(index=INDEX, id="1", document={"plain": "é" * 16_384}))
    assert (error.status_code, _kind(error)) == (400, "illegal_argument_exception")
    assert "immense term" in str(error.body) and "got 32768" in str(error.body)
    # 16,383 two-byte characters are 32,766 bytes: the limit itself is allowed.
    await es.index(index=INDEX, id="2", document={"plain": "é" * 16_383})
    await es.index(index=INDEX, id="3", document={"capped": "é" * 20_000}, refresh=True)
    found = await es.search(index=INDEX, query={"exists": {"field": "capped"}})
    assert found["hits"]["hits"] == []  # kept in _source, not indexed


async def test_non_finite_numbers_are_refused_in_any_body(double: EsDouble, es: AsyncElasticsearch) -> None:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{double.url}/{INDEX}/_search",
        data=b'{"query": {"range": {"n": {"gt": -Infinity}}}}',
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 400
    assert b"x_content_parse_exception" in caught.value.read()


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"index": {"number_of_shardz": 1}}, "unknown setting [index.number_of_shardz]"),
        ({"index": {"number_of_shards": "one"}}, "Failed to parse value [one]"),
        ({"index": {"refresh_interval": "soon"}}, "Failed to parse value [soon]"),
    ],
)
async def test_unknown_or_mistyped_settings_are_refused(
    es: AsyncElasticsearch, settings: dict[str, Any], reason: str
) -> None:
    error = await _refused(es.indices.create(index="other-000001", settings=settings))
    assert (error.status_code, _kind(error)) == (400, "illegal_argument_exception")
    assert reason in str(error.body)
    error = await _refused(
        es.indices.put_index_template(
            name="other", index_patterns=["other-*"], template={"settings": settings}
        )
    )
    assert reason in str(error.body)


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ({"type": "keyword", "ignore_abov": 5}, "unknown parameter [ignore_abov]"),
        ({"type": "keywrd"}, "No handler for type [keywrd]"),
        ({"type": "keyword", "ignore_above": "many"}, "is not an integer"),
    ],
)
async def test_unknown_or_mistyped_mapping_parameters_are_refused(
    es: AsyncElasticsearch, field: dict[str, Any], reason: str
) -> None:
    mappings = {"properties": {"f": field}}
    error = await _refused(es.indices.create(index="other-000001", mappings=mappings))
    assert (error.status_code, _kind(error)) == (400, "mapper_parsing_exception")
    assert reason in str(error.body)
    error = await _refused(
        es.indices.put_index_template(
            name="other", index_patterns=["other-*"], template={"mappings": mappings}
        )
    )
    assert reason in str(error.body)


async def test_serverless_refuses_shards_and_replicas_and_says_so() -> None:
    with EsDouble(serverless=True) as double:
        client = AsyncElasticsearch(double.url, max_retries=0)
        try:
            assert (await client.info())["version"]["build_flavor"] == "serverless"
            error = await _refused(
                client.indices.create(index="s-000001", settings={"index": {"auto_expand_replicas": "0-1"}})
            )
            assert (error.status_code, _kind(error)) == (400, "illegal_argument_exception")
            assert "not available when running in serverless mode" in str(error.body)
            await client.indices.create(index="s-000001", settings={"index": {"refresh_interval": "5s"}})
        finally:
            await client.close()


async def test_terms_and_buckets_over_their_limits_are_refused(
    double: EsDouble, es: AsyncElasticsearch
) -> None:
    error = await _refused(
        es.search(index=INDEX, query={"terms": {"plain": [str(i) for i in range(65_537)]}})
    )
    assert (error.status_code, _kind(error)) == (400, "illegal_argument_exception")
    assert "index.max_terms_count" in str(error.body)
    await es.search(index=INDEX, query={"terms": {"plain": [str(i) for i in range(65_536)]}})
    for i in range(4):
        await es.index(index=INDEX, id=str(i), document={"plain": f"v{i}", "n": i}, refresh=True)
    aggs = {"p": {"terms": {"field": "plain", "size": 100}, "aggs": {"n": {"terms": {"field": "n"}}}}}
    double.cluster.max_buckets = 8  # 4 outer + 4 inner buckets fit; one more does not
    try:
        await es.search(index=INDEX, size=0, aggs=aggs)
        await es.index(index=INDEX, id="4", document={"plain": "v4", "n": 4}, refresh=True)
        error = await _refused(es.search(index=INDEX, size=0, aggs=aggs))
    finally:
        double.cluster.max_buckets = 65_536
    assert (error.status_code, _kind(error)) == (400, "too_many_buckets_exception")
    assert "search.max_buckets" in str(error.body)


async def test_an_id_over_512_bytes_is_refused(es: AsyncElasticsearch) -> None:
    error = await _refused(es.index(index=INDEX, id="é" * 257, document={"plain": "x"}))
    assert (error.status_code, _kind(error)) == (400, "action_request_validation_exception")
    assert "must be no longer than 512 bytes but was: 514" in str(error.body)
    await es.index(index=INDEX, id="é" * 256, document={"plain": "x"})


async def test_exists_takes_a_field_name_pattern(es: AsyncElasticsearch) -> None:
    await es.index(index=INDEX, id="1", document={"plain": "x", "attrs": {"a*": "1"}}, refresh=True)
    found = await es.search(index=INDEX, query={"exists": {"field": "pla*"}})
    assert [h["_id"] for h in found["hits"]["hits"]] == ["1"]
    # Keys of a flattened field are not field names: the pattern names no field.
    found = await es.search(index=INDEX, query={"exists": {"field": "attrs.a*"}})
    assert found["hits"]["hits"] == []
