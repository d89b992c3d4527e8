"""Conversion of OpAMP AnyValue/KeyValue trees to JSON-compatible values."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import TypeAlias

from gateway.proto import anyvalue_pb2 as av

JSONValue: TypeAlias = "str | int | float | bool | None | list[JSONValue] | dict[str, JSONValue]"


def any_value(value: av.AnyValue) -> JSONValue:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return key_values(value.kvlist_value.values)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    result: str | int | float | bool = getattr(value, kind)
    return result


def key_values(pairs: Iterable[av.KeyValue]) -> dict[str, JSONValue]:
    """A KeyValue list as a dict; a repeated key keeps its last value, as OTLP readers do."""
    return {kv.key: any_value(kv.value) for kv in pairs}


def scalar_text(value: JSONValue) -> str:
    """The form used for equality filters and text search: plain strings stay as they are."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)
