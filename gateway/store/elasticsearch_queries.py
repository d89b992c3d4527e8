"""The admin API's questions as Elasticsearch queries: filters as `bool` queries, the fleet summary as
aggregations, selectors over the `attributes` field.

Status is derived at query time, as in the SQLite adapter and in derive_status(): `offline` means
`now - last_seen > offline_after` in IEEE double arithmetic. That set of `last_seen` values is every
double up to some threshold, so it becomes an exact `range` on the `opamp.last_seen` double, with the
threshold found by bisection over the doubles (the boundary agrees with Python's to the last bit).
"""

from __future__ import annotations

import struct
import sys
import uuid
from collections.abc import Mapping
from typing import Any

from gateway.fleet.agent import uid_str
from gateway.fleet.selector import Selector
from gateway.fleet.status import STATUSES, Status
from gateway.store.base import AgentQuery, FleetSummary

_SIGN = 1 << 63
_MAGNITUDE = _SIGN - 1
_BUCKETS = 10_000
ACTIVE: dict[str, Any] = {"term": {"active": True}}
LAST_SEEN = "opamp.last_seen"
PENDING_COMMAND = "opamp.pending_command"
KEY_ID = "opamp.key_id"
PACKAGE_STATES = "packages.states"
CREDENTIAL_KIND = "opamp.credential_kind"


def _order_key(x: float) -> int:
    """An integer that orders like the double `x` (adjacent doubles get adjacent integers)."""
    bits: int = struct.unpack("<Q", struct.pack("<d", x))[0]
    return -(bits & _MAGNITUDE) if bits & _SIGN else bits


def _from_order_key(key: int) -> float:
    bits = key if key >= 0 else (-key) | _SIGN
    value: float = struct.unpack("<d", struct.pack("<Q", bits))[0]
    return value


def offline_threshold(now: float, offline_after: float) -> float:
    """The largest `last_seen` with `now - last_seen > offline_after`: offline means `<=` this."""
    lo, hi = _order_key(-sys.float_info.max), _order_key(sys.float_info.max)
    if not now - _from_order_key(lo) > offline_after:
        return _from_order_key(lo - 1)  # nothing is offline: -inf
    if now - _from_order_key(hi) > offline_after:
        return _from_order_key(hi)
    # Invariant: lo is offline, hi is not. Subtraction is monotonic, so one boundary exists.
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if now - _from_order_key(mid) > offline_after:
            lo = mid
        else:
            hi = mid
    return _from_order_key(lo)


def _checkin(status: str) -> dict[str, Any]:
    return {"term": {"last_checkin_status": status}}


def status_query(status: Status, now: float, offline_after: float) -> dict[str, Any]:
    """derive_status() as a query: disconnected, then offline, then unhealthy, else online."""
    threshold = offline_threshold(now, offline_after)
    if status == "disconnected":
        return _checkin("disconnected")
    if status == "offline":
        return {
            "bool": {
                "filter": [{"range": {LAST_SEEN: {"lte": threshold}}}],
                "must_not": [_checkin("disconnected")],
            }
        }
    recent = {"range": {LAST_SEEN: {"gt": threshold}}}
    return {"bool": {"filter": [recent, _checkin("error" if status == "unhealthy" else "online")]}}


def _attribute(key: str) -> str:
    return f"attributes.{key}"


def _escape_wildcard(text: str) -> str:
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")


def _exists(key: str) -> dict[str, Any]:
    """Whether the attribute has a value. `exists` takes a field-name pattern, so a key with `*` or
    `?` would name other fields (or none); every keyword value is >= "", so a range says it exactly."""
    field = _attribute(key)
    if "*" in key or "?" in key:
        return {"range": {field: {"gte": ""}}}
    return {"exists": {"field": field}}


def selector_query(selector: Selector) -> dict[str, Any]:
    """fleet/selector.py semantics: listed uids, or every label condition; empty matches nothing."""
    if selector.empty:
        return {"match_none": {}}
    should: list[dict[str, Any]] = []
    if selector.instance_uids:
        should.append({"terms": {"agent.id": sorted(uid_str(u) for u in selector.instance_uids)}})
    if selector.has_labels:
        filters: list[dict[str, Any]] = [{"term": {_attribute(k): v}} for k, v in selector.match]
        must_not: list[dict[str, Any]] = []
        for e in selector.expressions:
            field = _attribute(e.key)
            if e.operator == "In":
                filters.append({"terms": {field: list(e.values)}})
            elif e.operator == "NotIn":
                # must_not also holds when the attribute is absent, as NotIn does.
                must_not.append({"terms": {field: list(e.values)}})
            elif e.operator == "Exists":
                filters.append(_exists(e.key))
            else:
                must_not.append(_exists(e.key))
        labels: dict[str, Any] = {"filter": filters}
        if must_not:
            labels["must_not"] = must_not
        should.append({"bool": labels})
    return {"bool": {"should": should, "minimum_should_match": 1}}


def agents_query(query: AgentQuery, now: float, offline_after: float) -> dict[str, Any]:
    filters: list[dict[str, Any]] = [ACTIVE]
    if query.status is not None:
        if query.status not in STATUSES:
            raise ValueError(f"unknown status: {query.status!r}")
        filters.append(status_query(query.status, now, offline_after))
    if query.q:
        # search_text is stored lower-cased; wildcard characters in q are literal, as in SQLite.
        filters.append({"wildcard": {"search_text": {"value": f"*{_escape_wildcard(query.q.lower())}*"}}})
    if query.key_id == "":
        filters.append({"bool": {"must_not": [{"exists": {"field": KEY_ID}}]}})
    elif query.key_id is not None:
        filters.append({"term": {KEY_ID: query.key_id}})
    if query.credential == "shared":
        # No credential record at all, or one without an active credential (one offered, not used).
        shared = {"bool": {"must_not": [{"exists": {"field": CREDENTIAL_KIND}}]}}
        filters.append({"bool": {"should": [{"term": {CREDENTIAL_KIND: "shared"}}, shared]}})
    elif query.credential is not None:
        filters.append({"term": {CREDENTIAL_KIND: query.credential}})
    for key, value in sorted(query.attributes.items()):
        filters.append({"term": {_attribute(key): value}})
    if query.selector is not None:
        filters.append(selector_query(query.selector))
    if query.with_package_states:
        filters.append({"terms": {PACKAGE_STATES: list(query.with_package_states)}})
    if query.without_package_states:
        filters.append(
            {"bool": {"must_not": [{"terms": {PACKAGE_STATES: list(query.without_package_states)}}]}}
        )
    return {"bool": {"filter": filters}}


def summary_body(now: float, offline_after: float) -> dict[str, Any]:
    return {
        "size": 0,
        "track_total_hits": True,
        "query": ACTIVE,
        "aggs": {
            "status": {"filters": {"filters": {s: status_query(s, now, offline_after) for s in STATUSES}}},
            "types": {
                "terms": {"field": "agent.type", "missing": "", "size": _BUCKETS},
                "aggs": {"versions": {"terms": {"field": "agent.version", "missing": "", "size": _BUCKETS}}},
            },
            "os": {"terms": {"field": "local_metadata.os.type", "missing": "", "size": _BUCKETS}},
        },
    }


def pending_commands_body(size: int) -> dict[str, Any]:
    """The agents with a command waiting, most recently seen first; only the command in `_source`
    (the uid is the `_id`). A cleared command is stored as null, which `exists` does not match."""
    return {
        "query": {"bool": {"filter": [ACTIVE, {"exists": {"field": PENDING_COMMAND}}]}},
        "sort": [{LAST_SEEN: "desc"}],
        "size": size,
        "track_total_hits": False,
        "_source": {"includes": [PENDING_COMMAND]},
    }


def unseen_before(before: float) -> dict[str, Any]:
    """Agent records last seen before `before` (`--forget-after`); moved-uid stubs have no
    `last_seen` and are not matched."""
    return {"bool": {"filter": [{"range": {LAST_SEEN: {"lt": float(before)}}}]}}


class UnreadableHit(ValueError):
    """A search hit that is not an agent document of this gateway."""


def parse_pending_commands(body: Mapping[str, Any]) -> dict[bytes, int]:
    out: dict[bytes, int] = {}
    for hit in body["hits"]["hits"]:
        try:
            out[uuid.UUID(hit["_id"]).bytes] = int(hit["_source"]["opamp"]["pending_command"])
        except (KeyError, TypeError, ValueError):
            raise UnreadableHit(f"agent document {hit.get('_id')!r} in {hit.get('_index')}") from None
    return out


def _count_into(target: dict[str, int], key: object, count: int) -> None:
    name = str(key) or "unknown"
    target[name] = target.get(name, 0) + count


def parse_summary(body: Mapping[str, Any]) -> FleetSummary:
    aggs = body["aggregations"]
    by_status: dict[str, int] = {s: int(aggs["status"]["buckets"][s]["doc_count"]) for s in STATUSES}
    by_type_version: dict[str, dict[str, int]] = {}
    for bucket in aggs["types"]["buckets"]:
        versions = by_type_version.setdefault(str(bucket["key"]) or "unknown", {})
        for version in bucket["versions"]["buckets"]:
            _count_into(versions, version["key"], int(version["doc_count"]))
    by_os: dict[str, int] = {}
    for bucket in aggs["os"]["buckets"]:
        _count_into(by_os, bucket["key"], int(bucket["doc_count"]))
    return FleetSummary(
        total=int(body["hits"]["total"]["value"]),
        by_status=by_status,
        by_type_version=by_type_version,
        by_os=by_os,
    )
