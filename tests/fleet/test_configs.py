from __future__ import annotations

import base64
from typing import Any

import pytest

from gateway.fleet.configs import (
    ConfigFile,
    InvalidConfig,
    check_name,
    parse_request,
    spec_from_json,
    spec_json,
)

LIMIT = 1024 * 1024


def body(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "selector": {"match": {"service.name": "otelcol-contrib"}},
        "priority": 5,
        "files": {"collector.yaml": {"content_type": "text/yaml", "body": "receivers: {}\n"}},
    }
    raw.update(overrides)
    return raw


def test_a_valid_body() -> None:
    request = parse_request("base", body(), max_bytes=LIMIT)
    assert request.expected_version is None
    assert request.spec.priority == 5
    assert request.spec.files == (("collector.yaml", ConfigFile("text/yaml", b"receivers: {}\n")),)


def test_defaults_and_binary_bodies() -> None:
    raw = body(
        files={"b.bin": {"body_base64": base64.b64encode(b"\xff\x00").decode()}, "a.yaml": {"body": ""}}
    )
    del raw["priority"]
    spec = parse_request("x", raw, max_bytes=LIMIT).spec
    assert spec.priority == 0
    # Sorted by file name, content type defaulted.
    assert spec.files == (
        ("a.yaml", ConfigFile("text/yaml", b"")),
        ("b.bin", ConfigFile("text/yaml", b"\xff\x00")),
    )


def test_json_round_trip_keeps_binary_and_text_apart() -> None:
    raw = body(files={"t": {"body": "ünï ✓"}, "b": {"content_type": "application/x", "body_base64": "/wA="}})
    spec = parse_request("x", raw, max_bytes=LIMIT).spec
    rendered = spec_json(spec)
    assert rendered["files"] == {
        "b": {"content_type": "application/x", "body_base64": "/wA="},
        "t": {"content_type": "text/yaml", "body": "ünï ✓"},
    }
    assert spec_from_json(rendered) == spec


def test_read_only_fields_are_accepted_back() -> None:
    # Another config's name too: PUT of a GET result under a new name copies it.
    raw = body(name="other", hash="ab", created_at="t", updated_at="t", rollout={}, version=3)
    request = parse_request("base", raw, max_bytes=LIMIT)
    assert request.expected_version == 3


def test_digest_depends_on_content_only() -> None:
    a = parse_request("a", body(), max_bytes=LIMIT).spec
    b = parse_request("b", body(), max_bytes=LIMIT).spec
    assert a.digest() == b.digest()
    assert len(a.digest()) == 64
    assert parse_request("a", body(priority=6), max_bytes=LIMIT).spec.digest() != a.digest()
    other_selector = body(selector={"match": {"service.name": "x"}})
    assert parse_request("a", other_selector, max_bytes=LIMIT).spec.digest() != a.digest()


@pytest.mark.parametrize("name", ["a", "base", "prod.collectors-v2_x", "0", "a" * 128])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "-a", "a-", "a b", "a/b", "é", "a" * 129, "."])
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        check_name(name)
    assert caught.value.field == "name"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ([], "body"),
        ({"files": {"a": {"body": ""}}}, "selector"),
        (body(selector={"match": {"k": 1}}), "selector.match.k"),
        (body(extra=1), "extra"),
        (body(priority="1"), "priority"),
        (body(priority=True), "priority"),
        (body(priority=10**7), "priority"),
        (body(files={}), "files"),
        (body(files=[]), "files"),
        (body(files={f"f{i}": {"body": ""} for i in range(65)}), "files"),
        (body(files={"": {"body": ""}}), "files"),
        (body(files={"a\nb": {"body": ""}}), "files"),
        (body(files={"a": "text"}), "files.a"),
        (body(files={"a": {}}), "files.a"),
        (body(files={"a": {"body": "", "body_base64": ""}}), "files.a"),
        (body(files={"a": {"body": 1}}), "files.a.body"),
        (body(files={"a": {"body_base64": "!!"}}), "files.a.body_base64"),
        (body(files={"a": {"body_base64": 1}}), "files.a.body_base64"),
        (body(files={"a": {"body": "", "content_type": "yaml"}}), "files.a.content_type"),
        (body(files={"a": {"body": "", "content_type": 7}}), "files.a.content_type"),
        (body(files={"a": {"body": "", "mode": 1}}), "files.a.mode"),
        (body(files={"a": {"body": "x" * (LIMIT + 1)}}), "files"),
        (body(version=-1), "version"),
        (body(version="1"), "version"),
    ],
)
def test_errors_name_the_field(raw: object, field: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        parse_request("base", raw, max_bytes=LIMIT)
    assert caught.value.field == field, str(caught.value)
    assert str(caught.value).startswith(f"{field}: ")


def test_the_selector_counts_in_the_config_size() -> None:
    """Issue 20, finding 8: a huge selector was not counted in --max-config-bytes."""
    files = {"a": {"body": "x" * 100}}
    small = body(files=files, selector={"match": {"service.name": "otelcol-contrib"}})
    assert parse_request("base", small, max_bytes=200).spec
    huge = body(files=files, selector={"match": {f"k{i}": "v" for i in range(20)}})
    with pytest.raises(InvalidConfig) as caught:
        parse_request("base", huge, max_bytes=200)
    assert caught.value.field == "selector"
    assert "(--max-config-bytes)" in str(caught.value)
