"""Document APIs: index/create/update/delete (alone and in `_bulk`), get, mget, search, reindex.

Sequence numbers, primary terms and versions behave as on a one-shard index; `if_seq_no` and
`op_type=create` conflicts answer 409 exactly as Elasticsearch does. GET and mget are realtime by
default; search and reindex read what the last refresh made visible.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from typing import Any

from harness.es_double import errors, mapping, search
from harness.es_double.cluster import Cluster, Index, Stored

SHARDS_OK = {"total": 2, "successful": 1, "failed": 0}
_BULK_META = frozenset(
    {
        "_index",
        "_id",
        "if_seq_no",
        "if_primary_term",
        "require_alias",
        "routing",
        "op_type",
        "retry_on_conflict",
    }
)


def _no_constant(name: str) -> Any:
    raise errors.EsError(
        400,
        "document_parsing_exception",
        f"[1:2] Non-standard token '{name}': enable `ALLOW_NON_NUMERIC_NUMBERS`",
    )


def strict_json(data: bytes) -> Any:
    """JSON as Elasticsearch reads it: NaN and Infinity are not numbers."""
    try:
        return json.loads(data, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise errors.EsError(400, "document_parsing_exception", f"[1:2] failed to parse: {exc}") from None


_MAX_ID_BYTES = 512


def _check_id(doc_id: str) -> None:
    size = len(doc_id.encode())
    if size > _MAX_ID_BYTES:
        raise errors.EsError(
            400,
            "action_request_validation_exception",
            f"Validation Failed: 1: id [{doc_id}] is too long, must be no longer than 512 bytes but was: "
            f"{size};",
        )


def unblocked(cluster: Cluster, target: str | None, payload: bytes) -> bool:
    """Whether no index a bulk request writes has a write block now (its start, on the primary)."""
    for line in payload.split(b"\n"):
        if not line.strip():
            continue
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError:
            return False
        if not isinstance(parsed, dict) or len(parsed) != 1:
            continue  # a document line
        ((action, meta),) = parsed.items()
        if action not in ("index", "create", "update", "delete") or not isinstance(meta, dict):
            continue
        name = meta.get("_index", target)
        if name is None:
            continue
        try:
            indices = cluster.resolve(str(name))
        except errors.EsError:
            continue
        if any(i.write_blocked for i in indices):
            return False
    return True


def _item(index: Index, doc_id: str, stored: Stored, result: str, status: int) -> dict[str, Any]:
    return {
        "_index": index.name,
        "_id": doc_id,
        "_version": stored.version,
        "result": result,
        "_shards": SHARDS_OK if result != "noop" else {"total": 0, "successful": 0, "failed": 0},
        "_seq_no": stored.seq_no,
        "_primary_term": index.primary_term,
        "status": status,
    }


def _check_seq_no(
    index: Index, doc_id: str, current: Stored | None, seq_no: int | None, term: int | None
) -> None:
    if seq_no is None and term is None:
        return
    if seq_no is None or term is None:
        raise errors.EsError(
            400,
            "action_request_validation_exception",
            "Validation Failed: 1: ifSeqNo is set, but primary term is [0];",
        )
    if current is None or current.seq_no != seq_no or index.primary_term != term:
        actual = None if current is None else (current.seq_no, index.primary_term)
        raise errors.seq_no_conflict(index.name, doc_id, seq_no, term, actual)


def index_doc(
    cluster: Cluster,
    target: str,
    doc_id: str,
    source: dict[str, Any],
    *,
    op_type: str = "index",
    if_seq_no: int | None = None,
    if_primary_term: int | None = None,
    require_alias: bool = False,
    check_block: bool = True,
) -> dict[str, Any]:
    _check_id(doc_id)
    index = cluster.write_target(target, require_alias)
    if check_block and index.write_blocked:
        raise errors.write_blocked(index.name)
    current = index.docs.get(doc_id)
    if op_type == "create" and current is not None:
        raise errors.already_exists(index.name, doc_id, current.version)
    _check_seq_no(index, doc_id, current, if_seq_no, if_primary_term)
    mapping.validate(doc_id, source, index.mappings)
    stored = Stored(copy.deepcopy(source), index.take_seq_no(), 1 if current is None else current.version + 1)
    index.docs[doc_id] = stored
    return _item(
        index, doc_id, stored, "created" if current is None else "updated", 201 if current is None else 200
    )


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def update_doc(
    cluster: Cluster,
    target: str,
    doc_id: str,
    body: dict[str, Any],
    *,
    if_seq_no: int | None = None,
    if_primary_term: int | None = None,
    require_alias: bool = False,
    check_block: bool = True,
) -> dict[str, Any]:
    if "script" in body:
        raise errors.illegal("the double does not run scripts; the gateway never sends one")
    unknown = set(body) - {"doc", "doc_as_upsert", "upsert", "detect_noop"}
    if unknown:
        raise errors.EsError(
            400, "x_content_parse_exception", f"[1:2] [UpdateRequest] unknown field [{sorted(unknown)[0]}]"
        )
    _check_id(doc_id)
    index = cluster.write_target(target, require_alias)
    if check_block and index.write_blocked:
        raise errors.write_blocked(index.name)
    current = index.docs.get(doc_id)
    doc = body.get("doc", {})
    if current is None:
        if "upsert" in body or body.get("doc_as_upsert"):
            upsert = body.get("upsert", doc)
            return index_doc(
                cluster,
                target,
                doc_id,
                upsert,
                op_type="create",
                require_alias=require_alias,
                check_block=check_block,
            )
        raise errors.document_missing(index.name, doc_id)
    _check_seq_no(index, doc_id, current, if_seq_no, if_primary_term)
    merged = _merge(current.source, doc)
    if body.get("detect_noop", True) and merged == current.source:
        return _item(index, doc_id, current, "noop", 200)
    mapping.validate(doc_id, merged, index.mappings)
    stored = Stored(merged, index.take_seq_no(), current.version + 1)
    index.docs[doc_id] = stored
    return _item(index, doc_id, stored, "updated", 200)


def delete_doc(
    cluster: Cluster,
    target: str,
    doc_id: str,
    *,
    if_seq_no: int | None = None,
    if_primary_term: int | None = None,
) -> tuple[int, dict[str, Any]]:
    index = cluster.write_target(target, False)
    if index.write_blocked:
        raise errors.write_blocked(index.name)
    current = index.docs.get(doc_id)
    _check_seq_no(index, doc_id, current, if_seq_no, if_primary_term)
    if current is None:
        missing = Stored({}, index.take_seq_no(), 1)
        return 404, _item(index, doc_id, missing, "not_found", 404)
    del index.docs[doc_id]
    gone = Stored({}, index.take_seq_no(), current.version + 1)
    return 200, _item(index, doc_id, gone, "deleted", 200)


def _found(index: Index, doc_id: str, stored: Stored | None, includes: list[str] | None) -> dict[str, Any]:
    if stored is None:
        return {"_index": index.name, "_id": doc_id, "found": False}
    return {
        "_index": index.name,
        "_id": doc_id,
        "_version": stored.version,
        "_seq_no": stored.seq_no,
        "_primary_term": index.primary_term,
        "found": True,
        "_source": mapping.filter_source(copy.deepcopy(stored.source), includes),
    }


def get_doc(
    cluster: Cluster, target: str, doc_id: str, realtime: bool, includes: list[str] | None
) -> dict[str, Any]:
    index = cluster.read_target(target)
    docs = index.docs if realtime else index.visible
    return _found(index, doc_id, docs.get(doc_id), includes)


def mget(
    cluster: Cluster, target: str | None, body: dict[str, Any], realtime: bool, includes: list[str] | None
) -> dict[str, Any]:
    if "ids" in body:
        if target is None:
            raise errors.EsError(
                400,
                "action_request_validation_exception",
                "Validation Failed: 1: index is missing for doc 0;",
            )
        wanted = [(target, str(i)) for i in body["ids"]]
    else:
        wanted = [(d.get("_index", target), str(d["_id"])) for d in body.get("docs", [])]
    out = []
    for name, doc_id in wanted:
        try:
            out.append(get_doc(cluster, str(name), doc_id, realtime, includes))
        except errors.EsError as exc:
            out.append({"_index": name, "_id": doc_id, "error": exc.cause()})
    return {"docs": out}


def bulk(
    cluster: Cluster,
    target: str | None,
    payload: bytes,
    require_alias: bool,
    reject: Callable[[], bool],
    *,
    passed_blocks: bool = False,
) -> tuple[dict[str, Any], set[str]]:
    """Run a `_bulk` body; `reject()` says whether to refuse the next item with 429 (fault injection).
    `passed_blocks`: the request passed its write-block check when it started (see unblocked()).
    Returns the response and the names of the indices written."""
    started = time.monotonic()
    lines = [line for line in payload.split(b"\n") if line.strip()]
    items: list[dict[str, Any]] = []
    touched: set[str] = set()
    i = 0
    while i < len(lines):
        action_line = json.loads(lines[i])
        ((action, meta),) = action_line.items()
        unknown = set(meta) - _BULK_META
        if unknown:
            raise errors.illegal(
                f"Action/metadata line [{i + 1}] contains an unknown parameter [{sorted(unknown)[0]}]"
            )
        has_body = action != "delete"
        raw_body = lines[i + 1] if has_body else None
        i += 2 if has_body else 1
        name = meta.get("_index", target)
        doc_id = str(meta.get("_id", ""))
        options = {"if_seq_no": meta.get("if_seq_no"), "if_primary_term": meta.get("if_primary_term")}
        alias_only = bool(meta.get("require_alias", require_alias))
        try:
            body = None if raw_body is None else strict_json(raw_body)
            if name is None:
                raise errors.EsError(
                    400, "action_request_validation_exception", "Validation Failed: 1: index is missing;"
                )
            if reject():
                raise errors.rejected("primary")
            if action in ("index", "create"):
                op_type = "create" if action == "create" else meta.get("op_type", "index")
                result = index_doc(
                    cluster,
                    name,
                    doc_id,
                    body or {},
                    op_type=op_type,
                    require_alias=alias_only,
                    check_block=not passed_blocks,
                    **options,
                )
            elif action == "update":
                result = update_doc(
                    cluster,
                    name,
                    doc_id,
                    body or {},
                    require_alias=alias_only,
                    check_block=not passed_blocks,
                    **options,
                )
            elif action == "delete":
                _, result = delete_doc(cluster, name, doc_id, **options)
            else:
                raise errors.illegal(
                    f"Malformed action/metadata line [{i}], expected one of [create, delete, index, update] "
                    f"but found [{action}]"
                )
            touched.add(result["_index"])
            items.append({action: result})
        except errors.EsError as exc:
            concrete = name
            if name in cluster.aliases and exc.kind != "index_not_found_exception":
                concrete = next(iter(cluster.aliases[name]))
            items.append(
                {action: {"_index": concrete, "_id": doc_id, "status": exc.status, "error": exc.cause()}}
            )
    took = int((time.monotonic() - started) * 1000)
    errors_found = any("error" in next(iter(item.values())) for item in items)
    return {"errors": errors_found, "took": took, "items": items}, touched


# The search body keys the double implements. Elasticsearch refuses a key it does not know with the
# error below; the double refuses the same way any key it does not implement (e.g. `stored_fields`),
# where ignoring it would let a test pass that a real cluster answers differently.
_SEARCH_KEYS = frozenset(
    {"query", "size", "from", "sort", "search_after", "track_total_hits", "_source", "aggs", "aggregations"}
)


def _token(value: Any) -> str:
    """The JSON token Elasticsearch names in a parsing error."""
    if isinstance(value, dict):
        return "START_OBJECT"
    if isinstance(value, list):
        return "START_ARRAY"
    if isinstance(value, bool):
        return "VALUE_BOOLEAN"
    if isinstance(value, int | float):
        return "VALUE_NUMBER"
    return "VALUE_NULL" if value is None else "VALUE_STRING"


def run_search(cluster: Cluster, target: str, body: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    unknown = sorted(set(body) - _SEARCH_KEYS)
    if unknown:
        key = unknown[0]
        raise errors.EsError(400, "parsing_exception", f"Unknown key for a {_token(body[key])} in [{key}].")
    indices = cluster.resolve(target)
    size = int(body.get("size", 10))
    offset = int(body.get("from", 0))
    if size + offset > search.MAX_RESULT_WINDOW:
        raise errors.illegal(
            "Result window is too large, from + size must be less than or equal to: "
            f"[{search.MAX_RESULT_WINDOW}] but was [{size + offset}]."
        )
    hits: list[search.Doc] = []
    compilers: dict[str, search.Compiler] = {}
    query = body.get("query", {"match_all": {}})
    for index in indices:
        compiler = compilers[index.name] = search.Compiler(index.mappings)
        predicate = compiler.compile(query)
        for doc_id, stored in index.visible.items():
            doc = search.Doc(index.name, doc_id, stored.source)
            if predicate(doc):
                hits.append(doc)
    # Sorting and aggregations use the first index's mappings (the gateway searches one index).
    compiler = next(iter(compilers.values()), search.Compiler({}))
    response: dict[str, Any] = {
        "took": int((time.monotonic() - started) * 1000),
        "timed_out": False,
        "_shards": {"total": len(indices), "successful": len(indices), "skipped": 0, "failed": 0},
    }
    sort = body.get("sort")
    if sort is not None:
        rows = search.order(search.sort_keys(compiler, sort), hits, body.get("search_after"))
    else:
        rows = [(doc, []) for doc in hits]
    includes = _source_includes(body.get("_source"))
    page = []
    for doc, values in rows[offset : offset + size]:
        hit: dict[str, Any] = {
            "_index": doc.index,
            "_id": doc.id,
            "_score": None if sort is not None else 1.0,
        }
        if body.get("_source") is not False:
            hit["_source"] = mapping.filter_source(copy.deepcopy(doc.source), includes)
        if sort is not None:
            hit["sort"] = values
        page.append(hit)
    out_hits: dict[str, Any] = {
        "max_score": None if sort is not None else (1.0 if hits else None),
        "hits": page,
    }
    track = body.get("track_total_hits", 10_000)
    if track is not False:
        limit = len(hits) if track is True else int(track)
        out_hits["total"] = {
            "value": min(len(hits), limit),
            "relation": "eq" if len(hits) <= limit else "gte",
        }
    response["hits"] = out_hits
    aggs = body.get("aggs") or body.get("aggregations")
    if aggs:
        response["aggregations"] = search.aggregate(compiler, aggs, hits, cluster.max_buckets)
    return response


def _source_includes(spec: Any) -> list[str] | None:
    if isinstance(spec, dict):
        includes = spec.get("includes", spec.get("include"))
        return [includes] if isinstance(includes, str) else includes
    if isinstance(spec, list):
        return spec
    if isinstance(spec, str):
        return [spec]
    return None


def reindex(cluster: Cluster, body: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    started = time.monotonic()
    sources = cluster.resolve(body["source"]["index"])
    dest = body["dest"]["index"]
    op_type = body["dest"].get("op_type", "index")
    created = updated = 0
    failures: list[dict[str, Any]] = []
    touched: set[str] = set()
    for index in sources:
        # A scroll over the source: it sees what the source index last refreshed.
        for doc_id, stored in list(index.visible.items()):
            try:
                result = index_doc(cluster, dest, doc_id, stored.source, op_type=op_type)
            except errors.EsError as exc:
                failures.append({"index": dest, "id": doc_id, "cause": exc.cause(), "status": exc.status})
                continue
            touched.add(result["_index"])
            created += result["result"] == "created"
            updated += result["result"] == "updated"
    response = {
        "took": int((time.monotonic() - started) * 1000),
        "timed_out": False,
        "total": created + updated + len(failures),
        "updated": updated,
        "created": created,
        "deleted": 0,
        "batches": 1,
        "version_conflicts": 0,
        "noops": 0,
        "retries": {"bulk": 0, "search": 0},
        "throttled_millis": 0,
        "requests_per_second": -1.0,
        "throttled_until_millis": 0,
        "failures": failures,
    }
    return response, touched
