"""`POST /{target}/_delete_by_query`, as Elasticsearch runs it: a snapshot of what the target last
refreshed, then one delete per matching document under internal versioning, so a document written
since that refresh (or already gone) is a version conflict, counted with `conflicts=proceed` and
fatal (409, the deletions done so far stay) with the default `conflicts=abort`.

Parameters the double takes: `conflicts`, `max_docs`, `refresh` (a boolean here: Elasticsearch
refuses `wait_for` on this endpoint), `wait_for_completion` (true only) and `scroll_size`. Body keys:
`query` (required) and `max_docs`."""

from __future__ import annotations

import time
from typing import Any

from harness.es_double import errors, search
from harness.es_double.cluster import Cluster, Index

PARAMS = frozenset({"conflicts", "max_docs", "refresh", "wait_for_completion", "scroll_size"})
_BODY_KEYS = frozenset({"query", "max_docs"})
_DEFAULT_SCROLL_SIZE = 1000


def _boolean(name: str, value: str | None, default: bool) -> bool:
    if value is None:
        return default
    if value in ("", "true"):
        return True
    if value == "false":
        return False
    raise errors.illegal(f"Failed to parse value [{value}] as only [true] or [false] are allowed.")


def _positive(name: str, text: str | int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise errors.illegal(f"Failed to parse int parameter [{name}] with value [{text}]") from None
    if value <= 0:
        raise errors.EsError(
            400,
            "action_request_validation_exception",
            f"Validation Failed: 1: {name} should be greater than 0 if the request is limited to some "
            f"number of documents or -1 if it isn't but it was [{value}];",
        )
    return value


def check_params(params: dict[str, str]) -> bool:
    """Refuse what Elasticsearch refuses; whether to refresh the target afterwards."""
    conflicts = params.get("conflicts", "abort")
    if conflicts not in ("abort", "proceed"):
        raise errors.illegal(f'conflicts may only be "proceed" or "abort" but was [{conflicts}]')
    if not _boolean("wait_for_completion", params.get("wait_for_completion"), True):
        raise errors.illegal("the double runs delete_by_query only with wait_for_completion=true")
    if "scroll_size" in params:
        _positive("scroll_size", params["scroll_size"])
    return _boolean("refresh", params.get("refresh"), False)


def delete_by_query(
    cluster: Cluster, target: str, body: dict[str, Any], params: dict[str, str]
) -> tuple[int, dict[str, Any], set[str]]:
    started = time.monotonic()
    unknown = sorted(set(body) - _BODY_KEYS)
    if unknown:
        raise errors.EsError(400, "parsing_exception", f"Unknown key for a VALUE in [{unknown[0]}].")
    if "query" not in body:
        raise errors.EsError(
            400, "action_request_validation_exception", "Validation Failed: 1: query is missing;"
        )
    raw_max = params.get("max_docs", body.get("max_docs"))
    max_docs = None if raw_max is None else _positive("max_docs", raw_max)
    proceed = params.get("conflicts", "abort") == "proceed"
    scroll_size = int(params.get("scroll_size", _DEFAULT_SCROLL_SIZE))
    indices = cluster.resolve(target)
    # The snapshot: what each index last refreshed, matched by the query, in _id order.
    found: list[tuple[Index, str, int]] = []
    for index in indices:
        predicate = search.Compiler(index.mappings).compile(body["query"])
        for doc_id, stored in sorted(index.visible.items()):
            if predicate(search.Doc(index.name, doc_id, stored.source)):
                found.append((index, doc_id, stored.seq_no))
    deleted = conflicts = 0
    failures: list[dict[str, Any]] = []
    touched: set[str] = set()
    for index, doc_id, seq_no in found:
        if max_docs is not None and deleted >= max_docs:
            break
        if index.write_blocked:
            raise errors.write_blocked(index.name)
        current = index.docs.get(doc_id)
        if current is None or current.seq_no != seq_no:
            conflicts += 1
            if not proceed:
                now = None if current is None else (current.seq_no, index.primary_term)
                conflict = errors.seq_no_conflict(index.name, doc_id, seq_no, index.primary_term, now)
                failures.append({"index": index.name, "id": doc_id, "cause": conflict.cause(), "status": 409})
                break
            continue
        del index.docs[doc_id]
        index.take_seq_no()
        deleted += 1
        touched.add(index.name)
    total = deleted + conflicts
    response = {
        "took": int((time.monotonic() - started) * 1000),
        "timed_out": False,
        "total": total,
        "deleted": deleted,
        "batches": max(1, -(-total // scroll_size)),
        "version_conflicts": conflicts,
        "noops": 0,
        "retries": {"bulk": 0, "search": 0},
        "throttled_millis": 0,
        "requests_per_second": -1.0,
        "throttled_until_millis": 0,
        "failures": failures,
    }
    return (409 if failures else 200), response, touched
