"""Mappings as Elasticsearch applies them: strict checks at index time, and the indexed values a
query sees (per field type, `ignore_above`, flattened keyed sub-fields, fields not indexed)."""

from __future__ import annotations

import base64
import binascii
import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from harness.es_double import errors

_TEXT_TYPES = frozenset({"keyword", "wildcard", "text", "constant_keyword"})
_INT_RANGES = {
    "long": (-(1 << 63), (1 << 63) - 1),
    "integer": (-(1 << 31), (1 << 31) - 1),
    "unsigned_long": (0, (1 << 64) - 1),
}
_FLOAT_TYPES = frozenset({"double", "float"})
_NOT_SEARCHABLE = frozenset({"binary"})


@dataclass(frozen=True)
class Field:
    """A searchable field, resolved from a query's field name."""

    name: str
    kind: str
    source_path: tuple[str, ...]
    # For a flattened field's keyed sub-field (`attributes.service.name`): the key ("service.name").
    key: str | None = None
    ignore_above: int | None = None


def _type(field: dict[str, Any]) -> str:
    return str(field.get("type", "object"))


# -- index time ------------------------------------------------------------------------------------


def validate(doc_id: str, source: dict[str, Any], mappings: dict[str, Any]) -> None:
    """Raise the error Elasticsearch answers for a document its mapping refuses."""
    dynamic = str(mappings.get("dynamic", "true")).lower()
    _check_object(doc_id, source, mappings.get("properties", {}), dynamic, "")


def _check_object(
    doc_id: str, obj: dict[str, Any], properties: dict[str, Any], dynamic: str, path: str
) -> None:
    for key, value in obj.items():
        if "." in key:
            # Elasticsearch expands dotted names into objects before mapping them.
            head, _, rest = key.partition(".")
            _check_object(doc_id, {head: {rest: value}}, properties, dynamic, path)
            continue
        full = f"{path}{key}"
        field = properties.get(key)
        if field is None:
            if value is not None and dynamic == "strict":
                raise errors.strict_mapping(key, path.rstrip(".") or "_doc")
            continue
        _check_field(doc_id, value, field, full, dynamic)


def _check_field(doc_id: str, value: Any, field: dict[str, Any], full: str, dynamic: str) -> None:
    if value is None or field.get("enabled") is False:
        return
    kind = _type(field)
    items = value if isinstance(value, list) else [value]
    if kind == "object":
        inner = str(field.get("dynamic", dynamic)).lower()
        for item in items:
            if not isinstance(item, dict):
                raise errors.EsError(
                    400,
                    "document_parsing_exception",
                    f"[1:2] object mapping for [{full}] tried to parse field [{full}] as object, but found a "
                    "concrete value",
                )
            _check_object(doc_id, item, field.get("properties", {}), inner, f"{full}.")
        return
    for item in items:
        if item is not None and not _parses(kind, item):
            raise errors.bad_value(full, kind, doc_id, item)
        if kind == "flattened":
            _check_flattened(full, item, field, [])
        elif kind == "keyword" and item is not None:
            _check_term(full, keyword(item), field)


_MAX_TERM_BYTES = 32766


def java_length(text: str) -> int:
    """String.length() in Java, what `ignore_above` counts: UTF-16 code units, not characters."""
    return len(text.encode("utf-16-le")) // 2


def _check_term(full: str, text: str, field: dict[str, Any]) -> None:
    """Lucene refuses a term longer than 32,766 bytes of UTF-8, and Elasticsearch the whole
    document with it, unless `ignore_above` leaves the value unindexed first."""
    ignore_above = field.get("ignore_above")
    if ignore_above is not None and java_length(text) > int(ignore_above):
        return
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > _MAX_TERM_BYTES:
        raise errors.EsError(
            400,
            "illegal_argument_exception",
            f'Document contains at least one immense term in field="{full}" (whose UTF8 encoding is '
            f"longer than the max length {_MAX_TERM_BYTES}), all of which were skipped. Please correct the "
            f"analyzer to not produce such terms. The prefix of the first immense term is: "
            f"'{list(text[:10].encode())}...', original message: bytes can be at most {_MAX_TERM_BYTES} in "
            f"length; got {size}",
            caused_by={
                "type": "max_bytes_length_exceeded_exception",
                "reason": f"bytes can be at most {_MAX_TERM_BYTES} in length; got {size}",
            },
        )


def _check_flattened(root: str, value: Any, field: dict[str, Any], path: list[str]) -> None:
    """FlattenedFieldParser's refusals: NUL in a key, nesting past depth_limit, an immense term."""
    limit = int(field.get("depth_limit", 20))
    ignore_above = int(field.get("ignore_above", 2**31 - 1))
    if isinstance(value, dict):
        for key, inner in value.items():
            if isinstance(inner, dict):
                if len(path) + 2 > limit:
                    raise errors.EsError(
                        400,
                        "document_parsing_exception",
                        f"[1:2] The provided [flattened] field [{root}] exceeds the maximum depth limit of "
                        f"[{limit}].",
                    )
                _check_flattened(root, inner, field, [*path, key])
            elif isinstance(inner, list):
                for item in inner:
                    _check_flattened(root, {key: item}, field, path)
            elif inner is not None:
                full_key = ".".join([*path, key])
                if "\0" in full_key:
                    raise errors.EsError(
                        400,
                        "document_parsing_exception",
                        "[1:2] Keys in [flattened] fields cannot contain the reserved character \\0. "
                        f"Offending key: [{full_key}].",
                    )
                text = keyword(inner)
                if (
                    java_length(text) <= ignore_above
                    and len(f"{full_key}\0{text}".encode()) > _MAX_TERM_BYTES
                ):
                    raise errors.EsError(
                        400,
                        "document_parsing_exception",
                        f"[1:2] Flattened field [{root}] contains one immense field whose keyed encoding is "
                        f"longer than the allowed max length of {_MAX_TERM_BYTES} bytes.",
                    )


def _parses(kind: str, value: Any) -> bool:
    if kind == "flattened":
        return isinstance(value, dict)
    if isinstance(value, dict | list):
        return False
    if kind in _TEXT_TYPES:
        return True
    if kind == "boolean":
        return isinstance(value, bool) or value in ("true", "false", "")
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        number = _integer(value)
        return number is not None and low <= number <= high
    if kind in _FLOAT_TYPES:
        return _number(value) is not None
    if kind == "date":
        return _millis(value) is not None
    if kind == "binary":
        try:
            base64.b64decode(str(value), validate=True)
        except binascii.Error:
            return False
        return True
    raise errors.illegal(f"the double does not know field type [{kind}]")


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _millis(value: Any) -> int | None:
    """strict_date_optional_time||epoch_millis, the default date format."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(round(parsed.timestamp() * 1000))


# -- mapping definitions ---------------------------------------------------------------------------

# Parameters each field type accepts (what the gateway could plausibly send, and their neighbours);
# anything else is refused as Elasticsearch refuses an unknown mapping parameter.
_COMMON_PARAMS = frozenset(
    {"type", "meta", "fields", "copy_to", "store", "index", "doc_values", "null_value"}
)
_PARAMS: dict[str, frozenset[str]] = {
    "keyword": _COMMON_PARAMS | {"ignore_above", "normalizer", "eager_global_ordinals", "similarity"},
    "wildcard": frozenset({"type", "meta", "ignore_above", "null_value"}),
    "text": _COMMON_PARAMS | {"analyzer", "search_analyzer", "norms", "index_options", "fielddata"},
    "constant_keyword": frozenset({"type", "meta", "value"}),
    "boolean": _COMMON_PARAMS,
    "date": _COMMON_PARAMS | {"format", "locale", "ignore_malformed"},
    "long": _COMMON_PARAMS | {"coerce", "ignore_malformed"},
    "integer": _COMMON_PARAMS | {"coerce", "ignore_malformed"},
    "unsigned_long": _COMMON_PARAMS | {"coerce", "ignore_malformed"},
    "double": _COMMON_PARAMS | {"coerce", "ignore_malformed"},
    "float": _COMMON_PARAMS | {"coerce", "ignore_malformed"},
    "binary": frozenset({"type", "meta", "store", "doc_values"}),
    "flattened": frozenset(
        {
            "type",
            "depth_limit",
            "doc_values",
            "eager_global_ordinals",
            "ignore_above",
            "index",
            "null_value",
            "similarity",
            "split_queries_on_whitespace",
            "time_series_dimensions",
        }
    ),
    "object": frozenset({"type", "properties", "enabled", "dynamic", "subobjects"}),
}
_INT_PARAMS = frozenset({"ignore_above", "depth_limit"})
_BOOL_PARAMS = frozenset({"index", "doc_values", "store", "enabled", "coerce", "ignore_malformed"})
_ROOT_PARAMS = frozenset({"dynamic", "_meta", "properties", "_source", "date_detection", "numeric_detection"})


def _mapper_error(reason: str) -> errors.EsError:
    return errors.EsError(
        400,
        "mapper_parsing_exception",
        f"Failed to parse mapping: {reason}",
        caused_by={"type": "mapper_parsing_exception", "reason": reason},
    )


def check_mappings(mappings: dict[str, Any]) -> None:
    """Raise what Elasticsearch answers for a mapping it cannot parse: an unknown type, an unknown
    parameter for the type, a parameter of the wrong kind."""
    unknown = sorted(set(mappings) - _ROOT_PARAMS)
    if unknown:
        raise _mapper_error(f"Root mapping definition has unsupported parameters:  [{unknown[0]} : ...]")
    dynamic = mappings.get("dynamic", "true")
    if str(dynamic).lower() not in ("true", "false", "strict", "runtime"):
        raise _mapper_error(f"Could not convert [dynamic.dynamic] to a dynamic mapping value: [{dynamic}]")
    _check_properties(mappings.get("properties", {}))


def _check_properties(properties: Any) -> None:
    if not isinstance(properties, dict):
        raise _mapper_error("Expected map for property [properties] on field [_doc]")
    for name, field in properties.items():
        if not isinstance(field, dict):
            raise _mapper_error(
                f"Expected map for property [fields] on field [{name}] but got a {type(field)}"
            )
        kind = str(field.get("type", "object"))
        allowed = _PARAMS.get(kind)
        if allowed is None:
            raise _mapper_error(f"No handler for type [{kind}] declared on field [{name}]")
        for param, value in field.items():
            if param not in allowed:
                raise _mapper_error(f"unknown parameter [{param}] on mapper [{name}] of type [{kind}]")
            if param in _INT_PARAMS and (isinstance(value, bool) or not isinstance(value, int)):
                raise _mapper_error(f"Cannot parse [{param}] on mapper [{name}]: [{value}] is not an integer")
            if param in _BOOL_PARAMS and not isinstance(value, bool) and value not in ("true", "false"):
                raise _mapper_error(f"Failed to parse value [{value}] as only [true] or [false] are allowed.")
        if kind == "object":
            _check_properties(field.get("properties", {}))


# -- query time ------------------------------------------------------------------------------------


def resolve(mappings: dict[str, Any], name: str) -> Field | None:
    """The field a query names, or None when it is not mapped (queries on it match nothing)."""
    properties = mappings.get("properties", {})
    parts = name.split(".")
    path: list[str] = []
    for i, part in enumerate(parts):
        field = properties.get(part)
        if field is None:
            return None
        path.append(part)
        kind = _type(field)
        if kind == "flattened":
            key = ".".join(parts[i + 1 :]) or None
            return Field(name, kind, tuple(path), key, field.get("ignore_above"))
        if field.get("enabled") is False:
            return None  # an object kept only in _source: nothing under it is mapped
        if i == len(parts) - 1:
            if kind in _NOT_SEARCHABLE:
                raise errors.query_shard(f"{kind.capitalize()} fields do not support searching")
            if field.get("index") is False:
                raise errors.query_shard(f"Cannot search on field [{name}] since it is not indexed.")
            return Field(name, kind, tuple(path), None, field.get("ignore_above"))
        if kind != "object":
            return None
        properties = field.get("properties", {})
    return None


def field_names(mappings: dict[str, Any], prefix: str = "") -> list[str]:
    """Every mapped leaf field's full name (objects are not fields; nothing under enabled: false)."""
    out: list[str] = []
    for name, field in mappings.get("properties", {}).items():
        full = f"{prefix}{name}"
        if field.get("enabled") is False:
            continue
        if _type(field) == "object":
            out += field_names(field, f"{full}.")
        else:
            out.append(full)
    return out


def _walk(value: Any, path: tuple[str, ...]) -> Iterator[Any]:
    if not path:
        if isinstance(value, list):
            for item in value:
                yield from _walk(item, path)
        elif value is not None:
            yield value
        return
    if isinstance(value, list):
        for item in value:
            yield from _walk(item, path)
    elif isinstance(value, dict):
        head, rest = path[0], path[1:]
        if head in value:
            yield from _walk(value[head], rest)
        # A source may spell the rest of the path with dots in one key.
        for key, inner in value.items():
            if key != head and key.startswith(f"{head}."):
                yield from _walk({key[len(head) + 1 :]: inner}, rest)


def _flatten(value: Any, prefix: str, out: dict[str, list[Any]]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(inner, f"{prefix}.{key}" if prefix else key, out)
    elif isinstance(value, list):
        for item in value:
            _flatten(item, prefix, out)
    elif value is not None:
        out.setdefault(prefix, []).append(value)


def keyword(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def values(field: Field, source: dict[str, Any]) -> list[Any]:
    """The values the field has in the index for this document, normalised for comparison."""
    raw = list(_walk(source, field.source_path))
    if field.kind == "flattened":
        leaves: dict[str, list[Any]] = {}
        for item in raw:
            _flatten(item, "", leaves)
        found = (
            leaves.get(field.key, []) if field.key is not None else [v for vs in leaves.values() for v in vs]
        )
        out = [keyword(v) for v in found]
    else:
        out = [normalise(field, v) for v in raw]
    if field.ignore_above is not None:
        out = [v for v in out if not isinstance(v, str) or java_length(v) <= field.ignore_above]
    return out


def normalise(field: Field, value: Any) -> Any:
    """A source or query value as the field indexes it."""
    kind = field.kind
    if kind in _TEXT_TYPES or kind == "flattened":
        return keyword(value)
    if kind == "boolean":
        return value if isinstance(value, bool) else str(value) == "true"
    if kind in _INT_RANGES:
        return _integer(value)
    if kind in _FLOAT_TYPES:
        return _number(value)
    if kind == "date":
        if isinstance(value, str) and value.startswith("now"):
            raise errors.query_shard("the double does not implement date math")
        return _millis(value)
    return value


# -- source filtering ------------------------------------------------------------------------------


def _wanted(path: str, includes: list[str]) -> tuple[bool, bool]:
    """(keep all of it, look inside it) for the source path under `includes`."""
    whole = any(fnmatch.fnmatchcase(path, p) or path.startswith(f"{p}.") for p in includes)
    inside = any(p.startswith(f"{path}.") or "*" in p for p in includes)
    return whole, inside


def filter_source(source: dict[str, Any], includes: list[str] | None, prefix: str = "") -> dict[str, Any]:
    if not includes:
        return source
    out: dict[str, Any] = {}
    for key, value in source.items():
        path = f"{prefix}{key}"
        whole, inside = _wanted(path, includes)
        if whole:
            out[key] = value
        elif inside and isinstance(value, dict):
            kept = filter_source(value, includes, f"{path}.")
            if kept:
                out[key] = kept
    return out
