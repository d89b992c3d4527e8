from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gateway.proto import opamp_pb2 as pb
from tests.support.messages import agent_to_server
from tests.support.servers import node_in_thread

PROTOBUF = {"Content-Type": "application/x-protobuf"}
_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx2.Client]:
    path: Path = tmp_path_factory.mktemp("fuzz")
    with node_in_thread(path, max_message_bytes=4096) as node, httpx2.Client(base_url=node.opamp_url) as c:
        yield c


def _check(response: httpx2.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code == 200:
        reply = pb.ServerToAgent.FromString(response.content)
        assert reply.capabilities or reply.HasField("error_response")


@_SETTINGS
@given(body=st.binary(max_size=300))
def test_arbitrary_bytes_never_5xx(client: httpx2.Client, body: bytes) -> None:
    _check(client.post("/v1/opamp", content=body, headers=PROTOBUF))


@_SETTINGS
@given(body=st.binary(max_size=300))
def test_arbitrary_gzip_bytes_never_5xx(client: httpx2.Client, body: bytes) -> None:
    _check(client.post("/v1/opamp", content=body, headers={**PROTOBUF, "Content-Encoding": "gzip"}))


@_SETTINGS
@given(msg=agent_to_server(), compress=st.booleans())
def test_well_formed_messages_never_5xx(client: httpx2.Client, msg: pb.AgentToServer, compress: bool) -> None:
    body = msg.SerializeToString()
    headers = dict(PROTOBUF)
    if compress:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    response = client.post("/v1/opamp", content=body, headers=headers)
    _check(response)
    if response.status_code == 200:
        assert pb.ServerToAgent.FromString(response.content).instance_uid == msg.instance_uid


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx2.Client]:
    path: Path = tmp_path_factory.mktemp("fuzz-auth")
    with node_in_thread(path, agent_keys="the-only-key") as node, httpx2.Client(base_url=node.opamp_url) as c:
        yield c


_HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


@_SETTINGS
@given(scheme=st.sampled_from(["Bearer", "ApiKey", "bearer", "Basic", ""]), credential=_HEADER_TEXT)
def test_arbitrary_authorization_headers_get_401(
    guarded: httpx2.Client, scheme: str, credential: str
) -> None:
    header = f"{scheme} {credential}".strip()
    response = guarded.post("/v1/opamp", content=b"", headers={**PROTOBUF, "Authorization": header})
    if scheme.lower() in ("bearer", "apikey") and credential.strip() == "the-only-key":
        assert response.status_code == 200
    else:
        assert response.status_code == 401, header
