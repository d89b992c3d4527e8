"""The Query DSL, sorting, `search_after` and aggregations, over the documents a search can see.

Only what the gateway and docs/opamp.md use: bool, term, terms, range, exists, wildcard, ids,
match_all, match_none; sort on keyword and numeric fields; filters, terms, value_count and
cardinality aggregations. Anything else is refused the way Elasticsearch refuses an unknown query
(search body keys: documents.run_search).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.es_double import errors, mapping

Predicate = Callable[["Doc"], bool]
MAX_RESULT_WINDOW = 10_000
# index.max_terms_count and search.max_buckets, at their defaults.
MAX_TERMS_COUNT = 65_536
MAX_BUCKETS = 65_536


@dataclass(frozen=True)
class Doc:
    index: str
    id: str
    source: dict[str, Any]


class Compiler:
    def __init__(self, mappings: dict[str, Any]) -> None:
        self.mappings = mappings

    def field(self, name: str) -> mapping.Field | None:
        return mapping.resolve(self.mappings, name)

    def compile(self, query: Any) -> Predicate:
        if not isinstance(query, dict) or len(query) != 1:
            raise errors.EsError(
                400, "parsing_exception", "[_na] query malformed, must start with start_object"
            )
        ((name, body),) = query.items()
        method = getattr(self, f"_q_{name}", None)
        if method is None:
            raise errors.unknown_query(name)
        predicate: Predicate = method(body)
        return predicate

    def _clauses(self, body: dict[str, Any], key: str) -> list[Predicate]:
        clauses = body.get(key, [])
        if isinstance(clauses, dict):
            clauses = [clauses]
        return [self.compile(c) for c in clauses]

    def _q_bool(self, body: dict[str, Any]) -> Predicate:
        unknown = set(body) - {"must", "filter", "should", "must_not", "minimum_should_match", "boost"}
        if unknown:
            raise errors.EsError(
                400, "x_content_parse_exception", f"[1:2] [bool] unknown field [{sorted(unknown)[0]}]"
            )
        required = self._clauses(body, "must") + self._clauses(body, "filter")
        should = self._clauses(body, "should")
        excluded = self._clauses(body, "must_not")
        minimum = int(body.get("minimum_should_match", 0 if required else 1 if should else 0))

        def matches(doc: Doc) -> bool:
            if not all(p(doc) for p in required) or any(p(doc) for p in excluded):
                return False
            return sum(1 for p in should if p(doc)) >= minimum

        return matches

    def _q_match_all(self, _body: dict[str, Any]) -> Predicate:
        return lambda doc: True

    def _q_match_none(self, _body: dict[str, Any]) -> Predicate:
        return lambda doc: False

    def _q_ids(self, body: dict[str, Any]) -> Predicate:
        wanted = set(body.get("values", []))
        return lambda doc: doc.id in wanted

    def _single(self, body: dict[str, Any], what: str) -> tuple[str, Any]:
        entries = {k: v for k, v in body.items() if k != "boost"}
        if len(entries) != 1:
            raise errors.EsError(400, "parsing_exception", f"[{what}] query doesn't support multiple fields")
        ((name, value),) = entries.items()
        return name, value

    def _values_of(self, field: mapping.Field | None) -> Callable[[Doc], list[Any]]:
        if field is None:
            return lambda doc: []
        return lambda doc: mapping.values(field, doc.source)

    def _q_term(self, body: dict[str, Any]) -> Predicate:
        name, spec = self._single(body, "term")
        value = spec.get("value") if isinstance(spec, dict) else spec
        fold = isinstance(spec, dict) and spec.get("case_insensitive") is True
        field = self.field(name)
        if field is None:
            return lambda doc: False
        wanted = mapping.normalise(field, value)
        values = self._values_of(field)
        if fold and isinstance(wanted, str):
            lowered = wanted.lower()
            return lambda doc: any(isinstance(v, str) and v.lower() == lowered for v in values(doc))
        return lambda doc: wanted in values(doc)

    def _q_terms(self, body: dict[str, Any]) -> Predicate:
        name, raw = self._single(body, "terms")
        if isinstance(raw, list) and len(raw) > MAX_TERMS_COUNT:
            raise errors.illegal(
                f"The number of terms [{len(raw)}] used in the Terms Query request has exceeded the allowed "
                f"maximum of [{MAX_TERMS_COUNT}]. This maximum can be set by changing the "
                "[index.max_terms_count] index level setting."
            )
        field = self.field(name)
        if field is None:
            return lambda doc: False
        wanted = {mapping.normalise(field, v) for v in raw}
        values = self._values_of(field)
        return lambda doc: any(v in wanted for v in values(doc))

    def _q_exists(self, body: dict[str, Any]) -> Predicate:
        unknown = set(body) - {"field", "boost", "_name"}
        if unknown:
            raise errors.EsError(
                400, "parsing_exception", f"[exists] query does not support [{sorted(unknown)[0]}]"
            )
        name = body.get("field")
        if not isinstance(name, str):
            raise errors.EsError(400, "parsing_exception", "[exists] must be provided with a [field]")
        if "*" in name or "?" in name:
            # A field-name pattern, matched against the mapped field names (never inside a flattened
            # field, whose keys are not fields): `attributes.a*` exists on no document.
            fields = [f for f in mapping.field_names(self.mappings) if fnmatch.fnmatchcase(f, name)]
            predicates = [self._q_exists({"field": f}) for f in fields]
            return lambda doc: any(p(doc) for p in predicates)
        # A field whose values are all null (or an empty array) indexes nothing: it does not exist.
        field = self.field(name)
        if field is None:
            # An object path: exists if any field under it has a value.
            return lambda doc: bool(_leaves_under(doc.source, name.split(".")))
        values = self._values_of(field)
        return lambda doc: bool(values(doc))

    def _q_range(self, body: dict[str, Any]) -> Predicate:
        name, bounds = self._single(body, "range")
        field = self.field(name)
        if field is None:
            return lambda doc: False
        checks: list[Callable[[Any], bool]] = []
        for op, raw in bounds.items():
            if op in ("format", "boost", "time_zone"):
                continue
            limit = mapping.normalise(field, raw)
            checks.append(_comparison(op, limit))
        values = self._values_of(field)
        return lambda doc: any(v is not None and all(c(v) for c in checks) for v in values(doc))

    def _q_wildcard(self, body: dict[str, Any]) -> Predicate:
        name, spec = self._single(body, "wildcard")
        pattern = spec.get("value", spec.get("wildcard")) if isinstance(spec, dict) else spec
        fold = isinstance(spec, dict) and spec.get("case_insensitive") is True
        field = self.field(name)
        if field is None:
            return lambda doc: False
        regex = re.compile(_wildcard_regex(str(pattern)), re.DOTALL | (re.IGNORECASE if fold else 0))
        values = self._values_of(field)
        return lambda doc: any(isinstance(v, str) and regex.fullmatch(v) for v in values(doc))


def _comparison(op: str, limit: Any) -> Callable[[Any], bool]:
    if op == "gt":
        return lambda v: v > limit
    if op == "gte":
        return lambda v: v >= limit
    if op == "lt":
        return lambda v: v < limit
    if op == "lte":
        return lambda v: v <= limit
    raise errors.EsError(400, "parsing_exception", f"[range] query does not support [{op}]")


def _wildcard_regex(pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if char == "*" else "." if char == "?" else re.escape(char))
        i += 1
    return "".join(out)


def _leaves_under(source: Any, path: list[str]) -> list[Any]:
    node = source
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return []
        node = node[part]
    found: dict[str, list[Any]] = {}
    mapping._flatten(node, "", found)
    return [v for vs in found.values() for v in vs]


# -- sorting ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SortKey:
    field: mapping.Field
    descending: bool


def sort_keys(compiler: Compiler, sort: Any) -> list[SortKey]:
    keys: list[SortKey] = []
    for entry in sort if isinstance(sort, list) else [sort]:
        if isinstance(entry, str):
            name, order = entry, "asc"
        else:
            ((name, spec),) = entry.items()
            order = spec.get("order", "asc") if isinstance(spec, dict) else spec
        field = compiler.field(name)
        if field is None:
            raise errors.query_shard(f"No mapping found for [{name}] in order to sort on")
        keys.append(SortKey(field, order == "desc"))
    return keys


def sort_values(keys: list[SortKey], doc: Doc) -> list[Any]:
    out: list[Any] = []
    for key in keys:
        values = [v for v in mapping.values(key.field, doc.source) if v is not None]
        out.append((max(values) if key.descending else min(values)) if values else None)
    return out


def _before(keys: list[SortKey], a: list[Any], b: list[Any]) -> bool:
    """Whether sort values `a` come strictly before `b` (missing values sort last)."""
    for key, x, y in zip(keys, a, b, strict=True):
        if x == y:
            continue
        if x is None or y is None:
            return y is None
        return bool(x > y) if key.descending else bool(x < y)
    return False


def order(
    keys: list[SortKey], docs: list[Doc], search_after: list[Any] | None
) -> list[tuple[Doc, list[Any]]]:
    import functools

    rows = [(doc, sort_values(keys, doc)) for doc in docs]

    def compare(a: tuple[Doc, list[Any]], b: tuple[Doc, list[Any]]) -> int:
        return -1 if _before(keys, a[1], b[1]) else 1 if _before(keys, b[1], a[1]) else 0

    rows.sort(key=functools.cmp_to_key(compare))
    if search_after is not None:
        if len(search_after) != len(keys):
            raise errors.illegal(f"search_after has {len(search_after)} value(s) but sort has {len(keys)}.")
        after = [mapping.normalise(k.field, v) for k, v in zip(keys, search_after, strict=True)]
        rows = [row for row in rows if _before(keys, after, row[1])]
    return rows


# -- aggregations ----------------------------------------------------------------------------------


def aggregate(
    compiler: Compiler, aggs: dict[str, Any], docs: list[Doc], max_buckets: int = MAX_BUCKETS
) -> dict[str, Any]:
    out = _aggregate(compiler, aggs, docs)
    buckets = _count_buckets(out)
    if buckets > max_buckets:
        raise errors.EsError(
            400,
            "too_many_buckets_exception",
            f"Trying to create too many buckets. Must be less than or equal to: [{max_buckets}] but this "
            f"number of buckets was exceeded. This limit can be set by changing the [search.max_buckets] "
            "cluster level setting.",
            max_buckets=max_buckets,
        )
    return out


def _count_buckets(value: Any) -> int:
    if isinstance(value, dict):
        own = value.get("buckets")
        count = len(own) if isinstance(own, list | dict) else 0
        return count + sum(_count_buckets(v) for v in value.values())
    if isinstance(value, list):
        return sum(_count_buckets(v) for v in value)
    return 0


def _aggregate(compiler: Compiler, aggs: dict[str, Any], docs: list[Doc]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, spec in aggs.items():
        sub = spec.get("aggs") or spec.get("aggregations") or {}
        kinds = [k for k in spec if k not in ("aggs", "aggregations", "meta")]
        if len(kinds) != 1:
            raise errors.EsError(400, "parsing_exception", f"Expected one aggregation type for [{name}]")
        kind = kinds[0]
        body = spec[kind]
        if kind == "filters":
            out[name] = _filters(compiler, body, sub, docs)
        elif kind == "terms":
            out[name] = _terms(compiler, body, sub, docs)
        elif kind in ("value_count", "cardinality"):
            field = compiler.field(body["field"])
            values = [v for d in docs for v in (mapping.values(field, d.source) if field else [])]
            out[name] = {"value": len(values) if kind == "value_count" else len(set(values))}
        else:
            raise errors.EsError(400, "parsing_exception", f"Unknown aggregation type [{kind}]")
    return out


def _filters(
    compiler: Compiler, body: dict[str, Any], sub: dict[str, Any], docs: list[Doc]
) -> dict[str, Any]:
    filters = body["filters"]
    if isinstance(filters, dict):
        buckets: dict[str, Any] = {}
        for key, query in filters.items():
            matched = [d for d in docs if compiler.compile(query)(d)]
            buckets[key] = {"doc_count": len(matched), **_aggregate(compiler, sub, matched)}
        return {"buckets": buckets}
    listed = []
    for query in filters:
        matched = [d for d in docs if compiler.compile(query)(d)]
        listed.append({"doc_count": len(matched), **_aggregate(compiler, sub, matched)})
    return {"buckets": listed}


def _terms(compiler: Compiler, body: dict[str, Any], sub: dict[str, Any], docs: list[Doc]) -> dict[str, Any]:
    field = compiler.field(body["field"])
    size = int(body.get("size", 10))
    groups: dict[Any, list[Doc]] = {}
    for doc in docs:
        values = sorted(set(mapping.values(field, doc.source))) if field else []
        if not values and "missing" in body:
            values = [mapping.normalise(field, body["missing"]) if field else body["missing"]]
        for value in values:
            groups.setdefault(value, []).append(doc)
    ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    buckets = []
    for key, members in ranked[:size]:
        bucket: dict[str, Any] = {"key": key, "doc_count": len(members)}
        if isinstance(key, bool):
            bucket = {"key": int(key), "key_as_string": "true" if key else "false", "doc_count": len(members)}
        bucket.update(_aggregate(compiler, sub, members))
        buckets.append(bucket)
    return {
        "doc_count_error_upper_bound": 0,
        "sum_other_doc_count": sum(len(m) for _, m in ranked[size:]),
        "buckets": buckets,
    }
