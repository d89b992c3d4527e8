"""The Elasticsearch double answers as Elasticsearch 9 does, for what the gateway sends: headers,
response shapes, error bodies and refresh semantics, through the official client. (These tests
describe the double; on a real cluster, the contract and adapter tests run instead.)"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from email.message import Message
from typing import Any

import elasticsearch
import pytest
from elasticsearch import AsyncElasticsearch

from harness.es_double import EsDouble

pytestmark = pytest.mark.anyio

INDEX = "things-000001"
ALIAS = "things"
MAPPINGS = {
    "dynamic": "strict",
    "properties": {
        "name": {"type": "keyword"},
        "n": {"type": "long"},
        "when": {"type": "date"},
        "on": {"type": "boolean"},
        "attrs": {"type": "flattened"},
        "blob": {"type": "binary"},
        "kept": {"type": "object", "enabled": False},
        "text": {"type": "wildcard"},
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
    await client.indices.create(
        index=INDEX,
        mappings=MAPPINGS,
        settings={"index": {"refresh_interval": "-1"}},
        aliases={ALIAS: {"is_write_index": True}},
    )
    yield client
    await client.close()


def _raw(double: EsDouble, method: str, path: str, headers: dict[str, str]) -> tuple[int, Message, Any]:
    """Status, headers (case-insensitive) and JSON body of one plain HTTP request."""
    request = urllib.request.Request(double.url + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


def test_every_response_says_it_is_elasticsearch(double: EsDouble) -> None:
    status, headers, body = _raw(double, "GET", "/", {"Accept": "application/json"})
    assert status == 200 and headers["X-Elastic-Product"] == "Elasticsearch"
    assert headers["Content-Type"] == "application/json"
    assert headers["Server"] is None
    assert body["version"]["number"].startswith("9.") and body["tagline"] == "You Know, for Search"
    status, headers, body = _raw(double, "GET", "/nope/_doc/1", {})
    assert status == 404 and headers["X-Elastic-Product"] == "Elasticsearch"


def test_compatibility_media_types(double: EsDouble) -> None:
    compat = "application/vnd.elasticsearch+json; compatible-with=9"
    status, headers, _ = _raw(double, "GET", "/", {"Accept": compat})
    assert status == 200
    assert headers["content-type"] == "application/vnd.elasticsearch+json;compatible-with=9"
    status, _, body = _raw(
        double, "GET", "/", {"Accept": "application/vnd.elasticsearch+json; compatible-with=7"}
    )
    assert status == 400 and body["error"]["type"] == "media_type_header_exception"


async def test_index_not_found(es: AsyncElasticsearch) -> None:
    with pytest.raises(elasticsearch.NotFoundError) as raised:
        await es.get(index="missing", id="1")
    error = raised.value.body["error"]
    assert raised.value.body["status"] == 404
    assert error["type"] == "index_not_found_exception"
    assert error["reason"] == "no such index [missing]"
    assert error["root_cause"][0]["type"] == "index_not_found_exception"
    assert error["resource.id"] == "missing" and error["index"] == "missing"


async def test_get_is_realtime_and_search_sees_only_refreshed_documents(es: AsyncElasticsearch) -> None:
    created = await es.index(index=ALIAS, id="a", document={"name": "x"})
    assert created.body["result"] == "created" and created.meta.status == 201
    assert created.body["_index"] == INDEX
    got = await es.get(index=ALIAS, id="a")
    assert got.body["found"] is True and got.body["_source"] == {"name": "x"}
    assert got.body["_seq_no"] == created.body["_seq_no"] and got.body["_primary_term"] == 1
    hits = await es.search(index=ALIAS, query={"match_all": {}})
    assert hits.body["hits"]["total"] == {"value": 0, "relation": "eq"}
    not_realtime = await es.options(ignore_status=404).get(index=ALIAS, id="a", realtime=False)
    assert not_realtime.body["found"] is False
    await es.indices.refresh(index=ALIAS)
    hits = await es.search(index=ALIAS, query={"match_all": {}})
    assert [h["_id"] for h in hits.body["hits"]["hits"]] == ["a"]
    await es.index(index=ALIAS, id="b", document={"name": "y"}, refresh=True)
    hits = await es.search(index=ALIAS, query={"match_all": {}})
    assert hits.body["hits"]["total"]["value"] == 2


async def test_version_conflicts(es: AsyncElasticsearch) -> None:
    first = await es.index(index=ALIAS, id="a", document={"n": 1})
    await es.index(index=ALIAS, id="a", document={"n": 2})
    with pytest.raises(elasticsearch.ConflictError) as stale:
        await es.index(
            index=ALIAS,
            id="a",
            document={"n": 3},
            if_seq_no=first.body["_seq_no"],
            if_primary_term=first.body["_primary_term"],
        )
    error = stale.value.body["error"]
    assert error["type"] == "version_conflict_engine_exception"
    assert error["reason"] == (
        f"[a]: version conflict, required seqNo [{first.body['_seq_no']}], primary term [1]. "
        f"current document has seqNo [{first.body['_seq_no'] + 1}] and primary term [1]"
    )
    with pytest.raises(elasticsearch.ConflictError) as exists:
        await es.index(index=ALIAS, id="a", document={"n": 3}, op_type="create")
    assert (
        exists.value.body["error"]["reason"]
        == "[a]: version conflict, document already exists (current version [2])"
    )


async def test_strict_mappings_and_field_types(es: AsyncElasticsearch) -> None:
    with pytest.raises(elasticsearch.BadRequestError) as unknown:
        await es.index(index=ALIAS, id="a", document={"name": "x", "surprise": 1})
    assert unknown.value.body["error"]["type"] == "strict_dynamic_mapping_exception"
    assert (
        "dynamic introduction of [surprise] within [_doc] is not allowed"
        in unknown.value.body["error"]["reason"]
    )
    with pytest.raises(elasticsearch.BadRequestError) as typed:
        await es.index(index=ALIAS, id="a", document={"on": "maybe"})
    assert typed.value.body["error"]["type"] == "document_parsing_exception"
    with pytest.raises(elasticsearch.BadRequestError) as nul:
        await es.index(index=ALIAS, id="a", document={"attrs": {"a\u0000b": "x"}})
    assert "reserved character" in nul.value.body["error"]["reason"]
    # Objects that are not indexed take anything.
    await es.index(index=ALIAS, id="a", document={"kept": {"any": {"thing": [1, "x"]}}})


async def test_unknown_query_and_unsearchable_fields(es: AsyncElasticsearch) -> None:
    with pytest.raises(elasticsearch.BadRequestError) as unknown:
        await es.search(index=ALIAS, query={"matches": {"name": "x"}})
    assert unknown.value.body["error"]["type"] == "parsing_exception"
    assert unknown.value.body["error"]["reason"] == "unknown query [matches]"
    with pytest.raises(elasticsearch.BadRequestError):
        await es.search(index=ALIAS, query={"term": {"blob": "eA=="}})
    with pytest.raises(elasticsearch.BadRequestError) as params:
        await es.perform_request("GET", f"/{ALIAS}/_search", params={"nonsense": "1"})
    assert "unrecognized parameter: [nonsense]" in params.value.body["error"]["reason"]


async def test_exists_matches_only_fields_that_have_a_value(es: AsyncElasticsearch) -> None:
    docs: dict[str, dict[str, Any]] = {
        "zero": {"n": 0},
        "null": {"n": None},
        "empty": {"n": []},
        "absent": {"name": "x"},
        "many": {"n": [1, None]},
    }
    for doc_id, source in docs.items():
        await es.index(index=ALIAS, id=doc_id, document=source)
    await es.indices.refresh(index=ALIAS)
    found = await es.search(index=ALIAS, query={"exists": {"field": "n"}}, sort=[{"n": "desc"}])
    assert [(h["_id"], h["sort"]) for h in found.body["hits"]["hits"]] == [("many", [1]), ("zero", [0])]
    unmapped = await es.search(index=ALIAS, query={"exists": {"field": "no_such_field"}})
    assert unmapped.body["hits"]["hits"] == []
    with pytest.raises(elasticsearch.BadRequestError) as no_field:
        await es.search(index=ALIAS, query={"exists": {}})
    assert no_field.value.body["error"]["type"] == "parsing_exception"
    assert no_field.value.body["error"]["reason"] == "[exists] must be provided with a [field]"
    with pytest.raises(elasticsearch.BadRequestError) as extra:
        await es.search(index=ALIAS, query={"exists": {"field": "n", "value": 1}})
    assert extra.value.body["error"]["reason"] == "[exists] query does not support [value]"


async def test_search_bodies_and_source_filtering(es: AsyncElasticsearch) -> None:
    await es.index(index=ALIAS, id="a", document={"name": "x", "n": 1, "attrs": {"k": "v"}}, refresh=True)
    body = {
        "query": {"match_all": {}},
        "size": 10,
        "track_total_hits": False,
        "_source": {"includes": ["n"]},
    }
    found = (await es.search(index=ALIAS, body=body)).body
    assert "total" not in found["hits"]
    assert [(h["_id"], h["_source"]) for h in found["hits"]["hits"]] == [("a", {"n": 1})]
    # Misspelt keys, as Elasticsearch refuses them (the double also refuses the keys it does not implement).
    for key, value, token in (
        ("_sources", ["n"], "START_ARRAY"),
        ("track_total", "1s", "VALUE_STRING"),
        ("sizes", 1, "VALUE_NUMBER"),
    ):
        with pytest.raises(elasticsearch.BadRequestError) as unknown:
            await es.search(index=ALIAS, body={**body, key: value})
        assert unknown.value.body["error"]["type"] == "parsing_exception"
        assert unknown.value.body["error"]["reason"] == f"Unknown key for a {token} in [{key}]."


async def test_queries_sorting_and_aggregations(es: AsyncElasticsearch) -> None:
    docs = [
        ("a", {"name": "web", "n": 3, "on": True, "attrs": {"os.type": "linux", "k": 1}, "text": "abc*def"}),
        ("b", {"name": "db", "n": 1, "on": False, "attrs": {"os": {"type": "linux"}}, "text": "xyz"}),
        ("c", {"name": "web", "n": 2, "attrs": {"os.type": "windows"}}),
    ]
    for doc_id, source in docs:
        await es.index(index=ALIAS, id=doc_id, document=source)
    await es.indices.refresh(index=ALIAS)

    async def ids(query: dict[str, Any]) -> list[str]:
        body = (await es.search(index=ALIAS, query=query, sort=[{"name": "asc"}, {"n": "desc"}])).body
        return [h["_id"] for h in body["hits"]["hits"]]

    assert await ids({"term": {"attrs.os.type": "linux"}}) == ["b", "a"]
    assert await ids({"term": {"attrs.k": "1"}}) == ["a"]
    assert await ids({"bool": {"must_not": [{"term": {"on": True}}]}}) == ["b", "c"]
    assert await ids({"range": {"n": {"gt": 1, "lte": 3}}}) == ["a", "c"]
    assert await ids({"wildcard": {"text": {"value": "*c\\*d*"}}}) == ["a"]
    assert await ids({"exists": {"field": "on"}}) == ["b", "a"]
    assert await ids(
        {"bool": {"should": [{"term": {"n": 1}}, {"term": {"n": 2}}], "minimum_should_match": 1}}
    ) == [
        "b",
        "c",
    ]
    page = await es.search(
        index=ALIAS, sort=[{"name": "asc"}, {"n": "desc"}], search_after=["web", 3], size=5
    )
    assert [h["_id"] for h in page.body["hits"]["hits"]] == ["c"]
    aggs = await es.search(
        index=ALIAS,
        size=0,
        aggs={
            "names": {"terms": {"field": "name", "missing": "?"}},
            "os": {"filters": {"filters": {"linux": {"term": {"attrs.os.type": "linux"}}}}},
        },
    )
    assert aggs.body["aggregations"]["names"]["buckets"] == [
        {"key": "web", "doc_count": 2},
        {"key": "db", "doc_count": 1},
    ]
    assert aggs.body["aggregations"]["os"]["buckets"] == {"linux": {"doc_count": 2}}


async def test_bulk_items_fail_alone(double: EsDouble, es: AsyncElasticsearch) -> None:
    double.faults.reject_bulk_items = 1
    response = await es.bulk(
        index=ALIAS,
        operations=[
            {"index": {"_id": "a"}},
            {"name": "x"},
            {"create": {"_id": "b"}},
            {"name": "y"},
            {"update": {"_id": "missing"}},
            {"doc": {"name": "z"}},
        ],
        require_alias=True,
    )
    items = [next(iter(i.values())) for i in response.body["items"]]
    assert response.body["errors"] is True
    assert items[0]["status"] == 429 and items[0]["error"]["type"] == "es_rejected_execution_exception"
    assert items[1]["status"] == 201 and items[1]["result"] == "created"
    assert items[2]["status"] == 404 and items[2]["error"]["type"] == "document_missing_exception"
    refused = await es.bulk(
        index=INDEX, operations=[{"index": {"_id": "c"}}, {"name": "x"}], require_alias=True
    )
    item = refused.body["items"][0]["index"]
    assert item["status"] == 404 and "[require_alias] request flag is [true]" in item["error"]["reason"]


async def test_a_rejected_request(double: EsDouble, es: AsyncElasticsearch) -> None:
    double.faults.reject_requests = 1
    with pytest.raises(elasticsearch.ApiError) as raised:
        await es.search(index=ALIAS)
    assert raised.value.status_code == 429
    assert raised.value.body["error"]["type"] == "es_rejected_execution_exception"
    await es.search(index=ALIAS)


async def test_writes_to_a_write_blocked_index(es: AsyncElasticsearch) -> None:
    await es.indices.put_settings(index=INDEX, settings={"index.blocks.write": True})
    with pytest.raises(elasticsearch.AuthorizationException) as blocked:
        await es.index(index=ALIAS, id="a", document={"name": "x"})
    assert blocked.value.body["error"]["type"] == "cluster_block_exception"


async def test_missing_alias_and_wildcard_deletes(es: AsyncElasticsearch) -> None:
    missing = await es.options(ignore_status=404).indices.get_alias(name="no-such-alias")
    assert missing.meta.status == 404 and missing.body == {
        "error": "alias [no-such-alias] missing",
        "status": 404,
    }
    with pytest.raises(elasticsearch.BadRequestError):
        await es.indices.delete(index="things-*")
