"""The admin port is browser-safe (issue 20, finding 3): no cross-site or form posts, no DNS
rebinding, no CORS, over real sockets on a node without an admin token (the loopback default)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from starlette.types import Message, Receive, Scope, Send

from gateway.api.browser_guard import BrowserGuard, allowed_hosts, host_name
from gateway.settings import Settings, SettingsError
from tests.support.servers import Node, run_node

pytestmark = pytest.mark.anyio
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with run_node(tmp_path, admin_allowed_hosts="gateway-admin.example, ops.example") as running:
        yield running


async def _request(node: Node, method: str, path: str, **kwargs: object) -> httpx2.Response:
    async with httpx2.AsyncClient(base_url=node.admin_url) as client:
        return await client.request(method, path, **kwargs)  # type: ignore[arg-type]


def _config_body() -> bytes:
    return b'{"selector": {}, "files": {"otel.yaml": {"body": "receivers: {}\\n"}}}'


@pytest.mark.parametrize(
    ("method", "path", "headers", "content"),
    [
        ("POST", "/api/v1/drain", {"Content-Type": "text/plain"}, b"{}"),
        ("POST", "/api/v1/drain", {"Content-Type": "text/plain"}, b""),
        ("POST", "/api/v1/agents/x/restart", {"Content-Type": "application/x-www-form-urlencoded"}, b"a=1"),
        ("POST", "/api/v1/rebalance", {"Content-Type": "multipart/form-data; boundary=x"}, b"--x--"),
        ("PUT", "/api/v1/configs/base", {"Content-Type": "text/plain"}, _config_body()),
        ("PUT", "/api/v1/configs/base", {"Content-Type": "application/xml"}, b"<config/>"),
        ("PUT", "/api/v1/configs/base", {}, _config_body()),
        ("DELETE", "/api/v1/configs/base", {"Content-Type": "text/plain"}, b""),
    ],
)
async def test_state_changing_requests_accept_only_json(
    node: Node, method: str, path: str, headers: dict[str, str], content: bytes
) -> None:
    response = await _request(node, method, path, headers=headers, content=content)
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert not node.services.drain.draining
    assert (await _request(node, "GET", "/api/v1/configs/base")).status_code == 404


async def test_json_and_bodiless_posts_are_served(node: Node) -> None:
    response = await _request(node, "PUT", "/api/v1/configs/base", headers=JSON, content=_config_body())
    assert response.status_code in (200, 201), response.text
    assert (await _request(node, "POST", "/api/v1/rebalance")).status_code == 202
    assert (
        await _request(
            node, "POST", "/api/v1/drain", headers={"Content-Type": "application/json; charset=utf-8"}
        )
    ).status_code == 202


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:4321", "localhost.attacker.example"])
async def test_a_foreign_host_gets_421(node: Node, host: str) -> None:
    for method, path in (("GET", "/api/v1/agents"), ("GET", "/"), ("POST", "/api/v1/drain")):
        response = await _request(node, method, path, headers={**JSON, "Host": host})
        assert response.status_code == 421, (method, path)
        assert response.json()["error"]["code"] == "misdirected_request"
    assert not node.services.drain.draining


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST:4321", "127.0.0.1:9", "[::1]:4321", "10.1.2.3:4321", "ops.example:80"]
)
async def test_ip_addresses_loopback_names_and_allowed_hosts_are_served(node: Node, host: str) -> None:
    response = await _request(node, "GET", "/api/v1/agents", headers={"Host": host})
    assert response.status_code == 200


@pytest.mark.parametrize("origin", ["http://attacker.example", "null", "https://127.0.0.1:{port}"])
async def test_a_cross_site_origin_gets_403(node: Node, origin: str) -> None:
    port = node.admin_url.rsplit(":", 1)[1]
    headers = {**JSON, "Origin": origin.format(port=port)}
    response = await _request(node, "POST", "/api/v1/drain", headers=headers, content=b"{}")
    assert response.status_code == 403
    assert not node.services.drain.draining
    assert (await _request(node, "GET", "/api/v1/agents", headers=headers)).status_code == 403


async def test_the_same_origin_is_served_and_no_cors_headers_are_sent(node: Node) -> None:
    response = await _request(
        node,
        "GET",
        "/api/v1/agents",
        headers={"Origin": node.admin_url, "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 200
    assert not [name for name in response.headers if name.lower().startswith("access-control-")]
    preflight = await _request(
        node, "OPTIONS", "/api/v1/drain", headers={"Origin": "http://attacker.example"}
    )
    assert preflight.status_code == 403
    assert not [name for name in preflight.headers if name.lower().startswith("access-control-")]


def test_host_names_and_allowed_hosts() -> None:
    assert host_name("[::1]:80") == "::1" and host_name("Example.COM:8") == "example.com"
    assert host_name("::1") == "::1"
    assert allowed_hosts("0.0.0.0", []) == {"localhost", "localhost.", "127.0.0.1", "::1"}
    assert "admin.internal" in allowed_hosts("admin.internal", ["", " a.example "])
    assert "a.example" in allowed_hosts("::", [" a.example "])


def test_admin_allowed_hosts_must_be_host_names() -> None:
    assert Settings(admin_allowed_hosts=" a.example,b ").allowed_admin_hosts == ("a.example", "b")
    with pytest.raises(SettingsError, match="--admin-allowed-hosts: 'http://x' is not a host name"):
        Settings(admin_allowed_hosts="http://x")


async def test_a_chunked_body_without_a_content_type_gets_415(node: Node) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"{}"

    response = await _request(node, "POST", "/api/v1/drain", content=chunks())
    assert response.status_code == 415
    assert not node.services.drain.draining


async def test_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def receive() -> Message:
        raise AssertionError("not read")

    async def send(message: Message) -> None:
        raise AssertionError("nothing sent")

    guard = BrowserGuard(app, allowed_hosts("127.0.0.1", []))
    await guard({"type": "lifespan"}, receive, send)
    assert seen == ["lifespan"]
