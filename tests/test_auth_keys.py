"""Agent key files: key groups and key ids, BOM and CRLF (issue 20, finding 13), errors on re-read
counted and optionally strict, and revocation that closes open sockets (finding 2)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from websockets.exceptions import InvalidStatus

from gateway.auth import CredentialError, Credentials, key_id_of, parse_credentials
from tests.support.servers import Node, run_node
from tests.support.waiting import eventually, uid
from tests.support.ws import agent_socket, closed_with, exchange, report

KEY_A = "agent-key-aaaaaaaaaaaa"
KEY_B = "agent-key-bbbbbbbbbbbb"


def _sha(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _rewrite(path: Path, text: str) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_bytes(text.encode())
    os.replace(tmp, path)


# -- the file format ------------------------------------------------------------------------------


def test_groups_name_their_keys_and_other_keys_get_a_digest_prefix() -> None:
    hashed = hashlib.sha256(b"hashed-key").hexdigest()
    keys = parse_credentials(f"team-a:{KEY_A}\nteam-b: sha256:{hashed}\n{KEY_B}\n", "keys")
    assert keys == {
        _sha(KEY_A): "team-a",
        bytes.fromhex(hashed): "team-b",
        _sha(KEY_B): "sha256:" + _sha(KEY_B).hex()[:12],
    }
    assert key_id_of(_sha(KEY_B)) == keys[_sha(KEY_B)]
    # A key id never contains the key.
    assert all(KEY_A not in key_id and KEY_B not in key_id for key_id in keys.values())


def test_a_group_without_a_key_is_an_error() -> None:
    with pytest.raises(CredentialError, match="keys, line 1"):
        parse_credentials("team-a:\n", "keys")


def test_a_bom_and_crlf_line_ends_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_bytes(f"\ufeff# keys\r\n{KEY_A}\r\nteam:{KEY_B}\r\n".encode())
    creds = Credentials("agent keys", str(path))
    creds.load()
    match = creds.identify(KEY_A)
    assert match is not None and match.key_id == key_id_of(_sha(KEY_A))
    match = creds.identify(KEY_B)
    assert match is not None and match.key_id == "team"


# -- errors on re-read ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "# only a comment\n", "two words\n"])
def test_a_broken_file_is_logged_and_counted_and_strict_mode_refuses_everyone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    caplog.set_level(logging.ERROR, logger="gateway.auth")
    path = tmp_path / "keys"
    path.write_text(f"{KEY_A}\n")
    lenient = Credentials("agent keys", str(path))
    strict = Credentials("agent keys", str(path), strict=True)
    errors: list[str] = []
    changes: list[str] = []
    for creds, name in ((lenient, "lenient"), (strict, "strict")):
        creds.load()
        creds.on_error = lambda name=name: errors.append(name)  # type: ignore[misc]
        creds.on_change(lambda name=name: changes.append(name))  # type: ignore[misc]
    _rewrite(path, text)
    assert not lenient.reload_if_changed() and not strict.reload_if_changed()
    assert errors == ["lenient", "strict"] and changes == ["strict"]
    assert lenient.check(KEY_A) and not lenient.refusing_all
    assert not strict.check(KEY_A) and strict.refusing_all and not strict.holds(_sha(KEY_A))
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("keeping the previous agent keys: ")
    assert messages[1].startswith("refusing every client until the agent keys file is fixed: ")
    # Fixed: strict accepts keys again.
    _rewrite(path, f"{KEY_B}\n")
    assert strict.reload_if_changed() and strict.check(KEY_B) and not strict.refusing_all


def test_a_missing_file_is_counted_once(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{KEY_A}\n")
    creds = Credentials("agent keys", str(path), strict=True)
    creds.load()
    errors: list[int] = []
    creds.on_error = lambda: errors.append(1)
    path.unlink()
    assert not creds.reload_if_changed() and not creds.reload_if_changed()
    assert errors == [1] and not creds.check(KEY_A)


# -- revocation over real sockets -----------------------------------------------------------------

pytestmark = pytest.mark.anyio


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "agent-keys"
    path.write_text(f"{KEY_A}\nteam-b:{KEY_B}\n")
    return path


@pytest.fixture
async def node(tmp_path: Path, key_file: Path) -> AsyncIterator[Node]:
    async with run_node(tmp_path, agent_keys_file=str(key_file), auth_reload_interval=0.05) as running:
        yield running


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_removed_key_closes_its_open_sockets_and_enrolls_nothing_more(
    node: Node, key_file: Path
) -> None:
    async with (
        agent_socket(node.opamp_url, additional_headers=_bearer(KEY_A)) as kept,
        agent_socket(node.opamp_url, additional_headers=_bearer(KEY_B)) as revoked,
    ):
        assert (await exchange(kept, report(uid(1)))).instance_uid == uid(1)
        assert (await exchange(revoked, report(uid(2)))).instance_uid == uid(2)
        _rewrite(key_file, f"{KEY_A}\n")
        assert await closed_with(revoked) == (1008, "agent key revoked")
        # The other key's socket is untouched.
        assert (await exchange(kept, report(uid(1), seq=1))).instance_uid == uid(1)
    with pytest.raises(InvalidStatus) as refused:
        async with agent_socket(node.opamp_url, additional_headers=_bearer(KEY_B)):
            pass
    assert refused.value.response.status_code == 401
    closes = node.services.metrics.registry.get_sample_value(
        "opamp_gateway_websocket_closes_total", {"code": "1008"}
    )
    assert closes == 1


async def test_strict_mode_closes_every_socket_until_the_file_is_fixed(
    tmp_path: Path, key_file: Path
) -> None:
    async with run_node(
        tmp_path, agent_keys_file=str(key_file), auth_reload_interval=0.05, strict_key_file=True
    ) as node:
        async with agent_socket(node.opamp_url, additional_headers=_bearer(KEY_A)) as ws:
            await exchange(ws, report(uid(1)))
            _rewrite(key_file, "not a key file\n")
            assert await closed_with(ws) == (1008, "agent key revoked")

        def errors() -> float | None:
            return node.services.metrics.registry.get_sample_value(
                "opamp_gateway_credential_file_errors_total", {"kind": "agent"}
            )

        assert errors() == 1
        body = report(uid(3)).SerializeToString()
        headers = {"Content-Type": "application/x-protobuf", **_bearer(KEY_A)}
        async with httpx2.AsyncClient(base_url=node.opamp_url) as client:
            assert (await client.post("/v1/opamp", content=body, headers=headers)).status_code == 401
            _rewrite(key_file, f"{KEY_A}\n")

            async def served() -> bool:
                response = await client.post("/v1/opamp", content=body, headers=headers)
                return response.status_code == 200

            await eventually(served)
