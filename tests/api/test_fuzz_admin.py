"""Hypothesis against every route of the admin API's OpenAPI document, on a live node over a real
socket: hostile query parameters (unknown keys, non-ASCII digits, 5,000-digit numbers, control
characters), path parameters and JSON bodies (deep nesting, huge integers, NaN, wrong types, config
bodies with hostile fields). Nothing may answer 500; the only 5xx allowed is the documented 503 with
its JSON error, or /readyz's (issue 20, finding 11); a 400 names what is wrong. Unlike
test_openapi.py's schemathesis run, the inputs here are mostly what the schema forbids; a fixed
matrix (every parameter x every special value) backs the random search."""

from __future__ import annotations

import json
import re
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gateway.api import openapi
from tests.support.servers import Node, node_in_thread
from tests.support.ws import report

DOCUMENT = openapi.build()
ROUTES = sorted(
    (path, method.upper(), operation)
    for path, operations in DOCUMENT["paths"].items()
    for method, operation in operations.items()
)
SEEDED = str(uuid.UUID(int=1))
# About 25 routes: a few hundred requests in all, some seconds on a loaded machine.
EXAMPLES_PER_ROUTE = 25

_SPECIAL = [
    "",
    " ",
    "²",
    "١٢",
    "9" * 5000,
    "-" + "9" * 5000,
    "1e999",
    "-0",
    "nan",
    "inf",
    "0x10",
    "1_000",
    "\x00",
    "\u202e",
    "../../etc/passwd",
    "%",
    "'",
    '"',
    "\\",
    "[" * 500,
    SEEDED,
    SEEDED.upper(),
    "AAAAAAAAAAAAAAAAAAAAAA",
]
HOSTILE_TEXT = st.one_of(
    st.sampled_from(_SPECIAL),
    st.sampled_from(_SPECIAL),
    st.text(max_size=30),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats().map(str),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**60), max_value=10**60),
    st.floats(),
    HOSTILE_TEXT,
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(HOSTILE_TEXT, children, max_size=4),
    max_leaves=25,
)
# A config body with any of its fields hostile, so the parser's deeper checks run too.
CONFIG_FILE = st.fixed_dictionaries(
    {},
    optional={"content_type": JSON, "body": JSON, "body_base64": JSON, "extra": JSON},
)
CONFIG = st.fixed_dictionaries(
    {},
    optional={
        "selector": st.one_of(
            JSON,
            st.fixed_dictionaries(
                {},
                optional={
                    "match": st.dictionaries(HOSTILE_TEXT, JSON, max_size=3),
                    "expressions": st.lists(
                        st.fixed_dictionaries({}, optional={"key": JSON, "operator": JSON, "values": JSON}),
                        max_size=3,
                    ),
                    "instance_uids": JSON,
                },
            ),
        ),
        "priority": JSON,
        "version": JSON,
        "files": st.one_of(JSON, st.dictionaries(HOSTILE_TEXT, st.one_of(CONFIG_FILE, JSON), max_size=3)),
        "name": JSON,
    },
)
RAW = [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"priority": ' + b"9" * 5000 + b"}",
    b"\xff\xfe",
    b'"\\ud800"',
    b"NaN",
    b"",
]
RAW_BODIES = st.sampled_from(RAW)
BODIES = st.one_of(
    st.none(),
    CONFIG.map(lambda body: json.dumps(body).encode()),
    JSON.map(lambda body: json.dumps(body).encode()),
    RAW_BODIES,
)


def _param_names(operation: dict[str, Any], where: str) -> list[str]:
    return [p["name"] for p in operation.get("parameters", []) if p["in"] == where]


@st.composite
def requests(
    draw: st.DrawFn, path: str, method: str, operation: dict[str, Any]
) -> tuple[str, dict[str, str], bytes | None]:
    for name in _param_names(operation, "path"):
        value = draw(st.one_of(st.just(SEEDED), st.just("collector"), HOSTILE_TEXT))
        path = path.replace("{" + name + "}", urllib.parse.quote(value, safe=""))
    known = _param_names(operation, "query") + ["attr.service.name", "attr."]
    keys = draw(st.lists(st.one_of(st.sampled_from(known), st.sampled_from(known), HOSTILE_TEXT), max_size=4))
    query = {key: draw(HOSTILE_TEXT) for key in keys}
    body = draw(BODIES) if method in ("PUT", "POST") else None
    return path, query, body


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    path: Path = tmp_path_factory.mktemp("fuzz")
    with node_in_thread(path, max_config_bytes=64 * 1024) as node:
        with httpx2.Client(base_url=node.opamp_url) as client:
            response = client.post(
                "/v1/opamp",
                content=report(uuid.UUID(SEEDED).bytes).SerializeToString(),
                headers={"Content-Type": "application/x-protobuf"},
            )
            assert response.status_code == 200
        yield node


@pytest.fixture(scope="module")
def client(live: Node) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=live.admin_url, timeout=10) as c:
        yield c


def test_every_route_is_fuzzed() -> None:
    assert len(ROUTES) == sum(len(ops) for ops in DOCUMENT["paths"].values()) and len(ROUTES) > 10


@pytest.mark.parametrize(("route", "method", "operation"), ROUTES, ids=[f"{m} {p}" for p, m, _ in ROUTES])
def test_no_input_makes_the_admin_api_fail(
    client: httpx2.Client, route: str, method: str, operation: dict[str, Any]
) -> None:
    @given(request=requests(route, method, operation))
    @settings(
        max_examples=EXAMPLES_PER_ROUTE, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    def fuzz(request: tuple[str, dict[str, str], bytes | None]) -> None:
        _check(client, method, *request)

    fuzz()


def _matrix() -> list[tuple[str, str, str, dict[str, str], bytes | None]]:
    """Every query parameter of every route with every special value, and every config field with
    every special JSON value: the cases a random search may take long to reach."""
    cases: list[tuple[str, str, str, dict[str, str], bytes | None]] = []
    for route, method, operation in ROUTES:
        path = route.replace("{instance_uid}", SEEDED).replace("{name}", "collector")
        for name in _param_names(operation, "query"):
            cases.extend((f"{method} {route} ?{name}", method, path, {name: v}, None) for v in _SPECIAL)
    numbers = ["9" * 5000, "-" + "9" * 5000, "1e999", "1" * 40, "NaN", "-Infinity", "[" * 5000 + "]" * 5000]
    for field in ("priority", "version", "selector", "files"):
        for value in numbers:
            body = '{"selector": {}, "files": {"a.yaml": {"body": "x"}}, "%s": %s}' % (field, value)  # noqa: UP031
            cases.append(
                (f"PUT config {field}={value[:8]}", "PUT", "/api/v1/configs/collector", {}, body.encode())
            )
    cases.extend((f"PUT raw {i}", "PUT", "/api/v1/configs/collector", {}, raw) for i, raw in enumerate(RAW))
    return cases


MATRIX = _matrix()


def test_every_parameter_with_every_special_value(client: httpx2.Client) -> None:
    assert len(MATRIX) > 100
    for _label, method, path, query, body in MATRIX:
        _check(client, method, path, query, body)


def _check(client: httpx2.Client, method: str, path: str, query: dict[str, str], body: bytes | None) -> None:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    response = client.request(method, path, params=query, content=body, headers=headers)
    where = f"{method} {path} {query!r} {body[:200]!r}" if body else f"{method} {path} {query!r}"
    assert response.status_code != 500, (where, response.text[:500])
    if response.status_code >= 500:
        assert response.status_code == 503, (where, response.text[:500])
        answer = response.json()
        # The store or bus is out (a JSON error), or /readyz after a fuzzed drain.
        assert "error" in answer or answer["status"] == "unavailable", where
    if response.status_code == 400 and path.startswith("/api/"):
        message = response.json()["error"]["message"]
        # A 400 names what is wrong: a parameter, a field path or the body.
        named = ":" in message or message.startswith("unknown query parameter")
        assert re.match(r"^[^\s:]", message) and named, (where, message)
