"""Agent keys and admin tokens: file format, reload, and both guards over real sockets."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from starlette.datastructures import Headers
from websockets.exceptions import InvalidStatus

from gateway.auth import CredentialError, Credentials, parse_credentials, parse_inline, presented_key
from gateway.proto import opamp_pb2 as pb
from tests.support.servers import Node, run_node
from tests.support.waiting import eventually, uid
from tests.support.ws import agent_socket, exchange, report

KEY = "agent-key-0123456789"
OTHER_KEY = "second-key-abcdef"
TOKEN = "admin-token-9876543210"
PROTOBUF = {"Content-Type": "application/x-protobuf"}


def _sha(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


# -- the file format ------------------------------------------------------------------------------


def test_plain_and_hashed_keys_comments_and_blank_lines() -> None:
    text = (
        f"# agents of team A\n\n  {KEY}  \nsha256:{hashlib.sha256(OTHER_KEY.encode()).hexdigest().upper()}\n"
    )
    assert set(parse_credentials(text, "keys.txt")) == {_sha(KEY), _sha(OTHER_KEY)}


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("good-key\nsha256:abc\n", "line 2"),
        ("good-key\n\n# fine\ntwo words\n", "line 4"),
        ("caf\u00e9-key\n", "line 1"),
    ],
)
def test_a_bad_line_is_named_and_never_echoed(text: str, line: str) -> None:
    with pytest.raises(CredentialError, match=f"keys.txt, {line}:") as caught:
        parse_credentials(text, "keys.txt")
    assert "good-key" not in str(caught.value)
    bad = text.splitlines()[int(line.split()[1]) - 1]
    assert bad not in str(caught.value)


def test_a_file_without_keys_is_an_error() -> None:
    with pytest.raises(CredentialError, match="holds no key"):
        parse_credentials("# nothing yet\n\n", "keys.txt")


def test_inline_keys_are_comma_separated() -> None:
    assert set(parse_inline(f" {KEY}, ,{OTHER_KEY} ", "env")) == {_sha(KEY), _sha(OTHER_KEY)}
    with pytest.raises(CredentialError, match="env: key 2"):
        parse_inline(f"{KEY},a b", "env")


@pytest.mark.parametrize(
    ("header", "schemes", "expected"),
    [
        (f"Bearer {KEY}", ("bearer", "apikey"), KEY),
        (f"ApiKey {KEY}", ("bearer", "apikey"), KEY),
        (f"bearer   {KEY} ", ("bearer", "apikey"), KEY),
        (f"ApiKey {KEY}", ("bearer",), None),
        (f"Basic {KEY}", ("bearer", "apikey"), None),
        ("Bearer", ("bearer",), None),
        ("Bearer ", ("bearer",), None),
        (KEY, ("bearer",), None),
    ],
)
def test_presented_key(header: str, schemes: tuple[str, ...], expected: str | None) -> None:
    assert presented_key(Headers({"authorization": header}), schemes) == expected


def test_check_accepts_only_known_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{KEY}\n")
    creds = Credentials("agent keys", str(path), inline=OTHER_KEY, inline_source="env")
    creds.load()
    assert creds.enabled and creds.count == 2
    assert creds.check(KEY) and creds.check(OTHER_KEY)
    assert not creds.check(KEY + "x") and not creds.check("") and not creds.check(None)
    assert not Credentials("admin tokens").enabled


def _rewrite(path: Path, text: str) -> None:
    """Replace the file the way a Kubernetes Secret update does: a new inode, never a partial write."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_reload_picks_up_changes_and_keeps_keys_when_the_file_breaks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{KEY}\n")
    creds = Credentials("agent keys", str(path))
    creds.load()
    assert creds.reload_if_changed() is False  # unchanged: nothing re-read

    _rewrite(path, f"{OTHER_KEY}\n")
    assert creds.reload_if_changed() is True
    assert creds.check(OTHER_KEY) and not creds.check(KEY)

    caplog.set_level(logging.ERROR, logger="gateway.auth")
    _rewrite(path, f"{KEY}\nnot a key\n")
    assert creds.reload_if_changed() is False
    assert creds.check(OTHER_KEY) and not creds.check(KEY)
    assert [r.getMessage() for r in caplog.records] == [
        f"keeping the previous agent keys: {path}, line 2: a key must be one word of printable ASCII "
        "(no spaces)"
    ]
    # The same broken file is not reported again on every check.
    assert creds.reload_if_changed() is False and len(caplog.records) == 1

    path.unlink()
    assert creds.reload_if_changed() is False and creds.check(OTHER_KEY)
    assert "keeping the previous agent keys" in caplog.records[-1].getMessage()

    _rewrite(path, f"{KEY}\n")
    assert creds.reload_if_changed() is True and creds.check(KEY)
    assert all(KEY not in r.getMessage() and OTHER_KEY not in r.getMessage() for r in caplog.records)


def test_unreadable_file_at_startup_names_it(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="cannot read the admin tokens file"):
        Credentials("admin tokens", str(tmp_path / "missing")).load()


# -- the guards, over real sockets ----------------------------------------------------------------


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "agent-keys"
    path.write_text(f"# rotated monthly\n{KEY}\n")
    return path


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin-token"
    path.write_text(f"{TOKEN}\n")
    return path


@pytest.fixture
async def node(tmp_path: Path, key_file: Path, token_file: Path) -> AsyncIterator[Node]:
    async with run_node(
        tmp_path,
        agent_keys_file=str(key_file),
        agent_keys=OTHER_KEY,
        admin_token_file=str(token_file),
        auth_reload_interval=0.05,
    ) as running:
        yield running


def _failures(node: Node, port: str, reason: str) -> float:
    value = node.services.metrics.registry.get_sample_value(
        "opamp_gateway_auth_failures_total", {"port": port, "reason": reason}
    )
    assert value is not None
    return value


pytestmark = pytest.mark.anyio


async def _post(node: Node, headers: dict[str, str], n: int = 1) -> httpx2.Response:
    body = report(uid(n)).SerializeToString()
    async with httpx2.AsyncClient(base_url=node.opamp_url) as client:
        return await client.post("/v1/opamp", content=body, headers={**PROTOBUF, **headers})


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing"),
        ({"Authorization": "Bearer wrong-key"}, "invalid"),
        ({"Authorization": f"Basic {KEY}"}, "missing"),
        ({"Authorization": f"Bearer {TOKEN}"}, "invalid"),  # an admin token is not an agent key
    ],
)
async def test_http_agent_without_a_valid_key_gets_401(
    node: Node, headers: dict[str, str], reason: str
) -> None:
    before = _failures(node, "opamp", reason)
    response = await _post(node, headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert _failures(node, "opamp", reason) == before + 1
    assert node.services.store is not None and await node.services.writer.get(uid(1)) is None


@pytest.mark.parametrize("header", [f"Bearer {KEY}", f"ApiKey {KEY}", f"Bearer {OTHER_KEY}"])
async def test_http_agent_with_a_key_is_served(node: Node, header: str) -> None:
    response = await _post(node, {"Authorization": header})
    assert response.status_code == 200
    reply = pb.ServerToAgent.FromString(response.content)
    assert reply.instance_uid == uid(1) and not reply.HasField("error_response")


async def test_websocket_upgrade_is_refused_with_401_before_accept(node: Node) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}):
        with pytest.raises(InvalidStatus) as refused:
            async with agent_socket(node.opamp_url, additional_headers=headers):
                pass
        assert refused.value.response.status_code == 401
        assert "Bearer" in refused.value.response.headers["WWW-Authenticate"]
    assert node.services.registry.socket_count == 0
    async with agent_socket(node.opamp_url, additional_headers={"Authorization": f"ApiKey {KEY}"}) as ws:
        reply = await exchange(ws, report(uid(2)))
        assert reply.instance_uid == uid(2) and not reply.HasField("error_response")


async def test_health_endpoints_stay_open(node: Node) -> None:
    async with httpx2.AsyncClient() as client:
        for base in (node.opamp_url, node.admin_url):
            assert (await client.get(f"{base}/healthz")).status_code == 200
            assert (await client.get(f"{base}/readyz")).status_code == 200
        assert (await client.get(f"{node.admin_url}/metrics")).status_code == 200


async def test_key_file_changes_apply_without_a_restart(
    node: Node, key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="gateway.auth")
    new_key = "rotated-key-" + uuid.uuid4().hex
    _rewrite(key_file, f"{new_key}\n")

    async def rotated() -> bool:
        return (await _post(node, {"Authorization": f"Bearer {new_key}"})).status_code == 200

    for _ in range(200):
        if await rotated():
            break
    else:
        raise AssertionError("the new key was never accepted")
    assert (await _post(node, {"Authorization": f"Bearer {KEY}"})).status_code == 401
    # Keys from the environment are not part of the file: they stay (for an agent of their own: uid 1
    # is bound to the rotated key).
    assert (await _post(node, {"Authorization": f"Bearer {OTHER_KEY}"}, n=2)).status_code == 200

    reloads = node.services.auth.agents.reloads
    _rewrite(key_file, "sha256:not-hex\n")
    await eventually(lambda: any("line 1" in r.getMessage() for r in caplog.records))
    assert node.services.auth.agents.reloads == reloads
    assert (await _post(node, {"Authorization": f"Bearer {new_key}"})).status_code == 200


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing"),
        ({"Authorization": "Bearer wrong"}, "invalid"),
        ({"Authorization": f"ApiKey {TOKEN}"}, "missing"),
    ],
)
async def test_admin_api_needs_the_token(node: Node, headers: dict[str, str], reason: str) -> None:
    before = _failures(node, "admin", reason)
    async with httpx2.AsyncClient(base_url=node.admin_url, headers=headers) as client:
        for method, path in [
            ("GET", "/api/v1/agents"),
            ("GET", f"/api/v1/agents/{uuid.UUID(int=1)}"),
            ("POST", f"/api/v1/agents/{uuid.UUID(int=1)}/restart"),
            ("POST", "/api/v1/drain"),
            ("GET", "/api/v1/openapi.json"),
            ("GET", "/api/v1/no-such-route"),
        ]:
            response = await client.request(method, path)
            assert response.status_code == 401, (method, path)
            assert response.json()["error"]["code"] == "unauthorized"
            assert response.headers["www-authenticate"].startswith("Bearer")
    assert _failures(node, "admin", reason) == before + 6
    assert not node.services.drain.draining


async def test_admin_api_with_the_token(node: Node) -> None:
    async with httpx2.AsyncClient(
        base_url=node.admin_url, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as client:
        assert (await client.get("/api/v1/agents")).json() == {"agents": [], "next_cursor": None}
        assert (await client.get("/api/v1/fleet/summary")).status_code == 200


async def test_without_credentials_everything_is_open(tmp_path: Path) -> None:
    async with run_node(tmp_path) as node, httpx2.AsyncClient() as client:
        assert (await _post(node, {})).status_code == 200
        assert (await client.get(f"{node.admin_url}/api/v1/agents")).status_code == 200
