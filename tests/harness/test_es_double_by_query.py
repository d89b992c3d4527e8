"""The double's `_delete_by_query`, as Elasticsearch 9 answers it: a snapshot of the last refresh,
internal versioning (a document written since is a version conflict), `conflicts`, `max_docs`, a
boolean `refresh`, and the refusals of a real cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import elasticsearch
import pytest
from elasticsearch import AsyncElasticsearch

from harness.es_double import EsDouble

pytestmark = pytest.mark.anyio

INDEX = "dbq-000001"
ALIAS = "dbq"
OLD = {"range": {"n": {"lt": 10}}}
RESPONSE_KEYS = {
    "took",
    "timed_out",
    "total",
    "deleted",
    "batches",
    "version_conflicts",
    "noops",
    "retries",
    "throttled_millis",
    "requests_per_second",
    "throttled_until_millis",
    "failures",
}


@pytest.fixture(scope="module")
def double() -> Iterator[EsDouble]:
    with EsDouble() as running:
        yield running


@pytest.fixture
async def es(double: EsDouble) -> AsyncIterator[AsyncElasticsearch]:
    client = AsyncElasticsearch(double.url, max_retries=0)
    await client.options(ignore_status=404).indices.delete(index=INDEX)
    await client.indices.create(
        index=INDEX,
        mappings={"dynamic": "strict", "properties": {"n": {"type": "long"}}},
        settings={"index": {"refresh_interval": "-1"}},
        aliases={ALIAS: {"is_write_index": True}},
    )
    for n in range(5):
        await client.index(index=ALIAS, id=f"d{n}", document={"n": n * 5})  # 0, 5, 10, 15, 20
    await client.indices.refresh(index=ALIAS)
    yield client
    await client.close()


async def _ids(es: AsyncElasticsearch) -> list[str]:
    await es.indices.refresh(index=ALIAS)
    hits = (await es.search(index=ALIAS, query={"match_all": {}}, size=100)).body["hits"]["hits"]
    return sorted(hit["_id"] for hit in hits)


async def test_deletes_what_matches_with_the_documented_response(es: AsyncElasticsearch) -> None:
    body: dict[str, Any] = (await es.delete_by_query(index=ALIAS, query=OLD)).body
    assert set(body) == RESPONSE_KEYS
    assert (body["total"], body["deleted"], body["version_conflicts"], body["failures"]) == (2, 2, 0, [])
    assert body["retries"] == {"bulk": 0, "search": 0} and body["requests_per_second"] == -1.0
    # Without refresh=true, a search still sees them until the next refresh; a get does not.
    hits = (await es.search(index=ALIAS, query=OLD)).body["hits"]["hits"]
    assert len(hits) == 2
    assert (await es.options(ignore_status=404).get(index=ALIAS, id="d0")).body["found"] is False
    assert await _ids(es) == ["d2", "d3", "d4"]
    again = (await es.delete_by_query(index=ALIAS, query=OLD)).body
    assert (again["total"], again["deleted"]) == (0, 0)


async def test_refresh_true_makes_the_deletes_visible(es: AsyncElasticsearch) -> None:
    await es.delete_by_query(index=ALIAS, query=OLD, refresh=True)
    hits = (await es.search(index=ALIAS, query={"match_all": {}})).body["hits"]["hits"]
    assert sorted(hit["_id"] for hit in hits) == ["d2", "d3", "d4"]


async def test_a_document_written_since_the_refresh_is_a_conflict(es: AsyncElasticsearch) -> None:
    await es.index(index=ALIAS, id="d0", document={"n": 1})  # still old, but not the refreshed copy
    body = (await es.delete_by_query(index=ALIAS, query=OLD, conflicts="proceed")).body
    assert (body["total"], body["deleted"], body["version_conflicts"], body["failures"]) == (2, 1, 1, [])
    assert (await es.get(index=ALIAS, id="d0")).body["_source"] == {"n": 1}


async def test_a_conflict_aborts_by_default(es: AsyncElasticsearch) -> None:
    await es.delete(index=ALIAS, id="d0")
    with pytest.raises(elasticsearch.ConflictError) as caught:
        await es.delete_by_query(index=ALIAS, query=OLD)
    body = caught.value.body
    assert body["version_conflicts"] == 1 and body["deleted"] == 0
    assert body["failures"][0]["id"] == "d0"
    assert body["failures"][0]["cause"]["type"] == "version_conflict_engine_exception"


async def test_max_docs(es: AsyncElasticsearch) -> None:
    body = (await es.delete_by_query(index=ALIAS, query={"match_all": {}}, max_docs=3)).body
    assert body["deleted"] == 3
    assert await _ids(es) == ["d3", "d4"]


@pytest.mark.parametrize(
    ("kwargs", "kind"),
    [
        ({"conflicts": "ignore"}, "illegal_argument_exception"),
        ({"refresh": "wait_for"}, "illegal_argument_exception"),
        ({"max_docs": 0}, "action_request_validation_exception"),
        ({"wait_for_completion": False}, "illegal_argument_exception"),
        ({"query": None}, "action_request_validation_exception"),
        ({"params": {"routing": "x"}}, "illegal_argument_exception"),
        ({"query": {"nope": {}}}, "parsing_exception"),
    ],
)
async def test_refuses_what_elasticsearch_refuses(
    es: AsyncElasticsearch, kwargs: dict[str, Any], kind: str
) -> None:
    options: dict[str, Any] = {"query": OLD, **kwargs}
    params = options.pop("params", None)
    if options["query"] is None:
        del options["query"]
    client = es.options(ignore_status=()) if params is None else es
    with pytest.raises(elasticsearch.BadRequestError) as caught:
        if params is not None:
            await es.perform_request(
                "POST",
                f"/{ALIAS}/_delete_by_query",
                params=params,
                headers={"content-type": "application/json", "accept": "application/json"},
                body={"query": OLD},
            )
        else:
            await client.delete_by_query(index=ALIAS, **options)
    assert caught.value.body["error"]["type"] == kind
    assert await _ids(es) == ["d0", "d1", "d2", "d3", "d4"]
