"""Hostile input on the admin API is a 400 naming the parameter, never a 500 (issue 20, findings 11
and 12)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from gateway.fleet.configs import FILE_NAME_PATTERN
from tests.support.servers import Node, run_node

pytestmark = pytest.mark.anyio

HUGE = "9" * 5000


def _config(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "selector": {"match": {"service.name": "otelcol-contrib"}},
        "files": {"collector.yaml": {"body": "receivers: {}\n"}},
    }
    raw.update(overrides)
    return raw


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with run_node(tmp_path) as running:
        yield running


@pytest.fixture
async def admin(node: Node) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=node.admin_url) as client:
        yield client


def _assert_400_naming(response: httpx2.Response, field: str) -> None:
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert message.startswith(f"{field}:"), message


@pytest.mark.parametrize("limit", ["²", "١٢", HUGE, "-1", " 5", "0"])
async def test_a_bad_limit_is_400(admin: httpx2.AsyncClient, limit: str) -> None:
    _assert_400_naming(await admin.get("/api/v1/agents", params={"limit": limit}), "limit")


@pytest.mark.parametrize("version", ["²", HUGE, "-1", "1.0"])
async def test_a_bad_version_is_400(admin: httpx2.AsyncClient, version: str) -> None:
    assert (await admin.put("/api/v1/configs/c", json=_config())).status_code == 201
    response = await admin.delete("/api/v1/configs/c", params={"version": version})
    _assert_400_naming(response, "version")


async def test_deeply_nested_json_is_400(admin: httpx2.AsyncClient) -> None:
    body = "[" * 100_000 + "]" * 100_000
    response = await admin.put(
        "/api/v1/configs/c", content=body, headers={"Content-Type": "application/json"}
    )
    _assert_400_naming(response, "body")


@pytest.mark.parametrize("field", ["priority", "version"])
@pytest.mark.parametrize("digits", [HUGE, "-" + HUGE, "1" * 40])
async def test_a_huge_integer_is_400_naming_its_field(
    admin: httpx2.AsyncClient, field: str, digits: str
) -> None:
    body = '{"selector": {}, "files": {"a.yaml": {"body": "x"}}, "%s": %s}' % (field, digits)  # noqa: UP031
    response = await admin.put(
        "/api/v1/configs/c", content=body, headers={"Content-Type": "application/json"}
    )
    _assert_400_naming(response, field)


BAD_NAMES = [
    "../../etc/passwd",
    "/etc/passwd",
    "conf/collector.yaml",
    "a\\b",
    "..",
    ".",
    "a..b",
    "x\x85y",
    "a\x00b",
    "",
    "a" * 256,
]
GOOD_NAMES = ["collector.yaml", ".env", "a-b_c.d", "ünïcode.yaml", "a" * 255]


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_a_config_file_name_must_be_plain(admin: httpx2.AsyncClient, name: str) -> None:
    response = await admin.put("/api/v1/configs/c", json=_config(files={name: {"body": "x"}}))
    _assert_400_naming(response, "files")
    assert (await admin.get("/api/v1/configs/c")).status_code == 404


@pytest.mark.parametrize("name", GOOD_NAMES)
async def test_plain_file_names_are_accepted(admin: httpx2.AsyncClient, name: str) -> None:
    response = await admin.put("/api/v1/configs/c", json=_config(files={name: {"body": "x"}}))
    assert response.status_code == 201, response.text
    assert list(response.json()["files"]) == [name]


def test_the_openapi_pattern_says_the_same() -> None:
    pattern = re.compile(FILE_NAME_PATTERN)
    assert [n for n in BAD_NAMES if len(n) <= 255 and pattern.search(n)] == []
    assert all(pattern.search(n) for n in GOOD_NAMES)


@pytest.mark.parametrize(("key", "shown"), [("", "''"), ("colour", "colour"), ("\u202e", repr("\u202e"))])
async def test_an_unknown_delete_parameter_is_named(admin: httpx2.AsyncClient, key: str, shown: str) -> None:
    response = await admin.delete("/api/v1/configs/c", params={key: "1"})
    _assert_400_naming(response, shown)


@pytest.mark.parametrize("key", ["", " x", "\x00"])
async def test_an_unknown_body_field_is_named(admin: httpx2.AsyncClient, key: str) -> None:
    response = await admin.put("/api/v1/configs/c", json=_config(**{key: 1}))
    _assert_400_naming(response, repr(key))
