"""Which agents a config applies to: label-style selectors over an agent's attributes.

JSON form (every part optional):

    {"match": {"service.name": "otelcol-contrib"},
     "expressions": [{"key": "deployment.environment", "operator": "In", "values": ["prod"]},
                     {"key": "canary", "operator": "DoesNotExist"}],
     "instance_uids": ["0190c3a4-..."]}

An agent matches if its uid is listed in `instance_uids`, or if `match` and `expressions` are not
both empty and every one of their conditions holds (Kubernetes label-selector semantics; `NotIn`
and `DoesNotExist` also hold when the attribute is absent). Attribute values compare as text
(`scalar_text`); identifying attributes win over non-identifying ones with the same key. An empty
selector (`{}`) is valid and matches nothing: a config can be staged before it is targeted, and never
reaches the whole fleet by accident.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from gateway.fleet.agent import InvalidInstanceUid, uid_bytes, uid_str

Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
OPERATORS: tuple[Operator, ...] = ("In", "NotIn", "Exists", "DoesNotExist")
MAX_KEY_LENGTH = 256
MAX_VALUE_LENGTH = 1024
MAX_TERMS = 256


class InvalidSelector(ValueError):
    """A selector that cannot be parsed; the message starts with the path of the bad field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


@dataclass(frozen=True, slots=True)
class Expression:
    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def holds(self, attributes: Mapping[str, str]) -> bool:
        value = attributes.get(self.key)
        if self.operator == "In":
            return value is not None and value in self.values
        if self.operator == "NotIn":
            return value is None or value not in self.values
        if self.operator == "Exists":
            return value is not None
        return value is None


@dataclass(frozen=True, slots=True)
class Selector:
    match: tuple[tuple[str, str], ...] = ()
    expressions: tuple[Expression, ...] = ()
    instance_uids: frozenset[bytes] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.match or self.expressions or self.instance_uids)

    @property
    def has_labels(self) -> bool:
        return bool(self.match or self.expressions)

    def matches(self, uid: bytes, attributes: Mapping[str, str]) -> bool:
        if uid in self.instance_uids:
            return True
        if not self.has_labels:
            return False
        if any(attributes.get(key) != value for key, value in self.match):
            return False
        return all(e.holds(attributes) for e in self.expressions)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.match:
            out["match"] = dict(self.match)
        if self.expressions:
            out["expressions"] = [
                {"key": e.key, "operator": e.operator, "values": list(e.values)}
                if e.operator in ("In", "NotIn")
                else {"key": e.key, "operator": e.operator}
                for e in self.expressions
            ]
        if self.instance_uids:
            out["instance_uids"] = sorted(uid_str(u) for u in self.instance_uids)
        return out


def _text(value: object, field: str, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidSelector(field, f"must be a string, got {type(value).__name__}")
    if not value and field.endswith(".key"):
        raise InvalidSelector(field, "must not be empty")
    if len(value) > limit:
        raise InvalidSelector(field, f"must be at most {limit} characters")
    return value


def _key(value: object, field: str) -> str:
    key = _text(value, field, MAX_KEY_LENGTH)
    if not key:
        raise InvalidSelector(field, "must not be empty")
    return key


def _list(value: object, field: str) -> list[object]:
    if not isinstance(value, list):
        raise InvalidSelector(field, f"must be a list, got {type(value).__name__}")
    if len(value) > MAX_TERMS:
        raise InvalidSelector(field, f"must have at most {MAX_TERMS} entries")
    return value


def _expression(raw: object, field: str) -> Expression:
    if not isinstance(raw, dict):
        raise InvalidSelector(field, "must be an object with key, operator and (for In/NotIn) values")
    unknown = set(raw) - {"key", "operator", "values"}
    if unknown:
        raise InvalidSelector(f"{field}.{sorted(unknown)[0]}", "unknown field")
    key = _key(raw.get("key"), f"{field}.key")
    operator = raw.get("operator")
    if operator not in OPERATORS:
        raise InvalidSelector(f"{field}.operator", f"must be one of {', '.join(OPERATORS)}, got {operator!r}")
    op = cast(Operator, operator)
    if op in ("In", "NotIn"):
        raw_values = _list(raw.get("values"), f"{field}.values")
        if not raw_values:
            raise InvalidSelector(f"{field}.values", f"{op} needs at least one value")
        values = tuple(_text(v, f"{field}.values[{i}]", MAX_VALUE_LENGTH) for i, v in enumerate(raw_values))
        return Expression(key, op, tuple(sorted(set(values))))
    if "values" in raw and _list(raw["values"], f"{field}.values"):
        raise InvalidSelector(f"{field}.values", f"{op} takes no values")
    return Expression(key, op)


def parse(raw: object, field: str = "selector") -> Selector:
    """A Selector from its JSON form; InvalidSelector names the bad field."""
    if not isinstance(raw, dict):
        raise InvalidSelector(field, "must be an object with match, expressions and/or instance_uids")
    unknown = set(raw) - {"match", "expressions", "instance_uids"}
    if unknown:
        raise InvalidSelector(f"{field}.{sorted(unknown)[0]}", "unknown field")
    match_raw = raw.get("match", {})
    if not isinstance(match_raw, dict):
        raise InvalidSelector(f"{field}.match", "must be an object of attribute -> value")
    if len(match_raw) > MAX_TERMS:
        raise InvalidSelector(f"{field}.match", f"must have at most {MAX_TERMS} entries")
    match = tuple(
        sorted(
            (_key(k, f"{field}.match"), _text(v, f"{field}.match.{k}", MAX_VALUE_LENGTH))
            for k, v in match_raw.items()
        )
    )
    expressions = tuple(
        _expression(e, f"{field}.expressions[{i}]")
        for i, e in enumerate(_list(raw.get("expressions", []), f"{field}.expressions"))
    )
    uids: set[bytes] = set()
    for i, text in enumerate(_list(raw.get("instance_uids", []), f"{field}.instance_uids")):
        item = f"{field}.instance_uids[{i}]"
        try:
            uids.add(uid_bytes(_text(text, item, 64)))
        except InvalidInstanceUid as exc:
            raise InvalidSelector(item, str(exc)) from None
    return Selector(match=match, expressions=expressions, instance_uids=frozenset(uids))
