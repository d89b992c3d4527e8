from __future__ import annotations

import uuid

import pytest

from gateway.fleet.selector import Expression, InvalidSelector, Selector, parse

UID = uuid.UUID("0190c3a4-0000-7000-8000-000000000001")
OTHER = uuid.UUID("0190c3a4-0000-7000-8000-000000000002")
COLLECTOR = {"service.name": "otelcol-contrib", "deployment.environment": "prod", "os.type": "linux"}


def matches(raw: object, attributes: dict[str, str] = COLLECTOR, uid: uuid.UUID = UID) -> bool:
    return parse(raw).matches(uid.bytes, attributes)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"match": {"service.name": "otelcol-contrib"}}, True),
        ({"match": {"service.name": "otelcol-contrib", "os.type": "windows"}}, False),
        ({"match": {"missing": ""}}, False),
        (
            {"expressions": [{"key": "deployment.environment", "operator": "In", "values": ["prod", "x"]}]},
            True,
        ),
        ({"expressions": [{"key": "deployment.environment", "operator": "In", "values": ["dev"]}]}, False),
        ({"expressions": [{"key": "missing", "operator": "In", "values": ["dev"]}]}, False),
        ({"expressions": [{"key": "deployment.environment", "operator": "NotIn", "values": ["dev"]}]}, True),
        (
            {"expressions": [{"key": "deployment.environment", "operator": "NotIn", "values": ["prod"]}]},
            False,
        ),
        # Kubernetes semantics: NotIn holds for an agent without the attribute.
        ({"expressions": [{"key": "missing", "operator": "NotIn", "values": ["prod"]}]}, True),
        ({"expressions": [{"key": "os.type", "operator": "Exists"}]}, True),
        ({"expressions": [{"key": "missing", "operator": "Exists"}]}, False),
        ({"expressions": [{"key": "missing", "operator": "DoesNotExist"}]}, True),
        ({"expressions": [{"key": "os.type", "operator": "DoesNotExist"}]}, False),
        # match and expressions are ANDed.
        (
            {
                "match": {"service.name": "otelcol-contrib"},
                "expressions": [{"key": "os.type", "operator": "In", "values": ["windows"]}],
            },
            False,
        ),
        ({"instance_uids": [str(UID)]}, True),
        ({"instance_uids": [str(OTHER)]}, False),
        # A listed uid matches whatever its attributes.
        ({"instance_uids": [str(UID)], "match": {"service.name": "nope"}}, True),
        ({"instance_uids": [str(OTHER)], "match": {"service.name": "otelcol-contrib"}}, True),
    ],
)
def test_semantics(raw: dict[str, object], expected: bool) -> None:
    assert matches(raw) is expected


def test_empty_selector_matches_nothing() -> None:
    selector = parse({})
    assert selector.empty
    assert not selector.matches(UID.bytes, COLLECTOR)
    assert not selector.matches(UID.bytes, {})
    assert not Selector().matches(UID.bytes, COLLECTOR)


def test_round_trip_is_canonical() -> None:
    raw = {
        "match": {"b": "2", "a": "1"},
        "expressions": [
            {"key": "env", "operator": "In", "values": ["z", "a", "a"]},
            {"key": "canary", "operator": "DoesNotExist"},
        ],
        "instance_uids": [str(OTHER), str(UID)],
    }
    selector = parse(raw)
    assert selector.to_json() == {
        "match": {"a": "1", "b": "2"},
        "expressions": [
            {"key": "env", "operator": "In", "values": ["a", "z"]},
            {"key": "canary", "operator": "DoesNotExist"},
        ],
        "instance_uids": [str(UID), str(OTHER)],
    }
    assert parse(selector.to_json()) == selector
    assert selector.expressions[0] == Expression("env", "In", ("a", "z"))


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ([], "selector"),
        ({"labels": {}}, "selector.labels"),
        ({"match": []}, "selector.match"),
        ({"match": {"": "x"}}, "selector.match"),
        ({"match": {"k": 1}}, "selector.match.k"),
        ({"expressions": {}}, "selector.expressions"),
        ({"expressions": ["x"]}, "selector.expressions[0]"),
        (
            {"expressions": [{"key": "k", "operator": "Equals", "values": ["a"]}]},
            "selector.expressions[0].operator",
        ),
        ({"expressions": [{"key": "k", "operator": "In"}]}, "selector.expressions[0].values"),
        ({"expressions": [{"key": "k", "operator": "In", "values": []}]}, "selector.expressions[0].values"),
        (
            {"expressions": [{"key": "k", "operator": "In", "values": [3]}]},
            "selector.expressions[0].values[0]",
        ),
        (
            {"expressions": [{"key": "k", "operator": "Exists", "values": ["a"]}]},
            "selector.expressions[0].values",
        ),
        ({"expressions": [{"operator": "Exists"}]}, "selector.expressions[0].key"),
        ({"expressions": [{"key": "k", "operator": "Exists", "x": 1}]}, "selector.expressions[0].x"),
        ({"instance_uids": ["not-a-uuid"]}, "selector.instance_uids[0]"),
        ({"instance_uids": "x"}, "selector.instance_uids"),
        ({"match": {"k": "v" * 2000}}, "selector.match.k"),
        ({"match": {f"k{i}": "v" for i in range(300)}}, "selector.match"),
    ],
)
def test_errors_name_the_field(raw: object, field: str) -> None:
    with pytest.raises(InvalidSelector) as caught:
        parse(raw)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
