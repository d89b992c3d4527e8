"""TLS on both ports and mutual TLS on the OpAMP port, with certificates from a throw-away CA (trustme)."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trustme
from websockets.asyncio.client import connect

from gateway import settings as settings_mod, tls
from gateway.proto import opamp_pb2 as pb
from harness.gateway import TLSFiles
from tests.support.process import GatewayFactory
from tests.support.servers import Node, run_node
from tests.support.waiting import uid
from tests.support.ws import exchange, report

PROTOBUF = {"Content-Type": "application/x-protobuf"}


@dataclass
class Pki:
    ca: trustme.CA
    cert: Path
    key: Path
    ca_file: Path
    # A CA the gateway does not trust, and a client certificate it issued.
    rogue: trustme.CA


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt"
    server.cert_chain_pems[0].write_to_path(str(cert))
    for extra in server.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    server.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return Pki(ca=ca, cert=cert, key=key, ca_file=ca_file, rogue=trustme.CA())


def client_context(pki: Pki, issuer: trustme.CA | None = None) -> ssl.SSLContext:
    """Trusts the gateway's CA; presents a client certificate from `issuer` if given."""
    context = ssl.create_default_context()
    pki.ca.configure_trust(context)
    if issuer is not None:
        issuer.issue_cert("agent-1.fleet.example").configure_cert(context)
    return context


def https(url: str) -> str:
    return url.replace("http://", "https://", 1)


pytestmark = pytest.mark.anyio


@pytest.fixture
async def tls_node(tmp_path: Path, pki: Pki) -> AsyncIterator[Node]:
    async with run_node(tmp_path, tls_cert=str(pki.cert), tls_key=str(pki.key)) as node:
        yield node


async def test_both_ports_serve_tls(tls_node: Node, pki: Pki) -> None:
    async with httpx2.AsyncClient(verify=client_context(pki)) as client:
        response = await client.post(
            https(tls_node.opamp_url) + "/v1/opamp",
            content=report(uid(1)).SerializeToString(),
            headers=PROTOBUF,
        )
        assert response.status_code == 200
        assert pb.ServerToAgent.FromString(response.content).instance_uid == uid(1)
        assert (await client.get(https(tls_node.admin_url) + "/api/v1/agents")).status_code == 200
        assert (await client.get(https(tls_node.admin_url) + "/metrics")).status_code == 200
    wss = https(tls_node.opamp_url).replace("https://", "wss://") + "/v1/opamp"
    async with connect(wss, ssl=client_context(pki), compression=None) as ws:
        assert (await exchange(ws, report(uid(2)))).instance_uid == uid(2)


async def test_plain_http_and_untrusted_clients_get_nothing(tls_node: Node, pki: Pki) -> None:
    async with httpx2.AsyncClient() as plain:
        with pytest.raises(httpx2.TransportError):
            await plain.get(tls_node.admin_url + "/healthz")
    async with httpx2.AsyncClient(verify=ssl.create_default_context()) as untrusting:
        with pytest.raises(httpx2.ConnectError):
            await untrusting.get(https(tls_node.opamp_url) + "/healthz")


@pytest.fixture
async def mtls_node(tmp_path: Path, pki: Pki) -> AsyncIterator[Node]:
    async with run_node(
        tmp_path, tls_cert=str(pki.cert), tls_key=str(pki.key), tls_client_ca=str(pki.ca_file)
    ) as node:
        yield node


async def test_mutual_tls_needs_a_client_certificate_on_the_opamp_port(mtls_node: Node, pki: Pki) -> None:
    url = https(mtls_node.opamp_url) + "/v1/opamp"
    body = report(uid(1)).SerializeToString()
    for issuer in (None, pki.rogue):
        async with httpx2.AsyncClient(verify=client_context(pki, issuer)) as client:
            with pytest.raises(httpx2.TransportError):
                await client.post(url, content=body, headers=PROTOBUF)
    assert await mtls_node.services.writer.get(uid(1)) is None
    async with httpx2.AsyncClient(verify=client_context(pki, pki.ca)) as client:
        response = await client.post(url, content=body, headers=PROTOBUF)
        assert response.status_code == 200
    # The admin port authenticates with its token; Prometheus and probes need no client certificate.
    async with httpx2.AsyncClient(verify=client_context(pki)) as client:
        assert (await client.get(https(mtls_node.admin_url) + "/readyz")).status_code == 200


def test_settings_need_cert_and_key_together(pki: Pki) -> None:
    with pytest.raises(settings_mod.SettingsError, match="--tls-cert and --tls-key"):
        settings_mod.load(["--tls-cert", str(pki.cert)], {})
    with pytest.raises(settings_mod.SettingsError, match="--tls-client-ca: needs --tls-cert"):
        settings_mod.load(["--tls-client-ca", str(pki.ca_file)], {})


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("missing-cert", "no such file"),
        ("garbage-key", "not a PEM certificate chain and its private key"),
        ("missing-ca", "--tls-client-ca .*: no such file"),
        ("garbage-ca", "--tls-client-ca .*: not a PEM CA certificate"),
    ],
)
def test_unusable_files_are_named_before_listening(
    tmp_path: Path, pki: Pki, which: str, message: str
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN NOTHING-----\n")
    files: dict[str, Any] = {
        "tls_cert": str(pki.cert),
        "tls_key": str(pki.key),
        "tls_client_ca": str(pki.ca_file),
    }
    if which == "missing-cert":
        files["tls_cert"] = str(tmp_path / "nope.crt")
    elif which == "garbage-key":
        files["tls_key"] = str(garbage)
    elif which == "missing-ca":
        files["tls_client_ca"] = str(tmp_path / "nope-ca.crt")
    else:
        files["tls_client_ca"] = str(garbage)
    with pytest.raises(tls.TLSConfigError, match=message):
        tls.check(settings_mod.Settings(**files))


def test_uvicorn_options() -> None:
    assert tls.uvicorn_options(settings_mod.Settings(), client_certs=True) == {}
    s = settings_mod.Settings(tls_cert="c.pem", tls_key="k.pem", tls_client_ca="ca.pem")
    assert tls.uvicorn_options(s, client_certs=True) == {
        "ssl_certfile": "c.pem",
        "ssl_keyfile": "k.pem",
        "ssl_ca_certs": "ca.pem",
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
    }
    assert tls.uvicorn_options(s, client_certs=False) == {"ssl_certfile": "c.pem", "ssl_keyfile": "k.pem"}


def test_a_fully_secured_process(gateway_factory: GatewayFactory, pki: Pki, tmp_path: Path) -> None:
    """`opamp-gateway serve` with mutual TLS, agent keys and an admin token, all at once."""
    files = TLSFiles(cert=pki.cert, key=pki.key, ca=pki.ca_file, client_ca=pki.ca_file)
    gateway = gateway_factory(tls=files, agent_key="tls-agent-key-42", admin_token="tls-admin-token-42")
    assert gateway.opamp_url.startswith("https://")
    context = client_context(pki, pki.ca)
    body = report(uid(9)).SerializeToString()
    with httpx2.Client(verify=context) as client:
        assert client.post(gateway.opamp_url, content=body, headers=PROTOBUF).status_code == 401
        ok = client.post(gateway.opamp_url, content=body, headers={**PROTOBUF, **gateway.agent_headers})
        assert ok.status_code == 200
    assert gateway.admin.agent(str(uuid.UUID(bytes=uid(9)))) is not None
    assert "client certificates: required" in gateway.log_text()
