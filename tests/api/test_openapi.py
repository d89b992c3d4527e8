"""The admin port's OpenAPI document: it lists exactly the app's routes, it is served, real responses
conform to it, and schemathesis finds no 5xx, no unhandled error and no undocumented answer when it
fuzzes a live node (with its admin token) over a real socket."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CheckFunction
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance
from starlette.routing import Route

from gateway.api import openapi
from gateway.app import admin_app
from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb
from tests.support.servers import Node, node_in_thread
from tests.support.ws import report

TOKEN = "openapi-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SEEDED = [uuid.UUID(int=n) for n in range(1, 4)]

DOCUMENT = openapi.build()
# Draining changes the node for every later case; it gets its own test below.
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT).exclude(path="/api/v1/drain")


def _seed(client: httpx2.Client) -> None:
    for n, uid in enumerate(SEEDED):
        msg = report(
            uid.bytes, capabilities=caps.REPORTS_STATUS | caps.REPORTS_HEALTH | caps.ACCEPTS_RESTART_COMMAND
        )
        msg.health.last_error = "" if n else "exporter failing"
        msg.health.component_health_map["pipeline:traces"].healthy = bool(n)
        msg.effective_config.config_map.config_map["collector.yaml"].body = (
            b"receivers: {}\n" if n else b"\xff\x00"
        )
        msg.remote_config_status.status = pb.RemoteConfigStatuses_APPLIED
        msg.remote_config_status.last_remote_config_hash = b"\x01\x02"
        response = client.post(
            "/v1/opamp", content=msg.SerializeToString(), headers={"Content-Type": "application/x-protobuf"}
        )
        assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    path: Path = tmp_path_factory.mktemp("openapi")
    token = path / "admin-token"
    token.write_text(f"{TOKEN}\n")
    with node_in_thread(path, admin_token_file=str(token)) as node:
        with httpx2.Client(base_url=node.opamp_url) as client:
            _seed(client)
        yield node


def _app_routes(node: Node) -> set[tuple[str, str]]:
    found = set()
    for route in admin_app(node.services).routes:
        assert isinstance(route, Route), route
        for method in route.methods or ():
            if method != "HEAD":  # Starlette adds HEAD to every GET
                found.add((route.path, method.lower()))
    return found


def test_the_document_lists_exactly_the_app_routes(live: Node) -> None:
    documented = {(path, method) for path, operations in DOCUMENT["paths"].items() for method in operations}
    assert _app_routes(live) == documented


def test_the_document_is_served_and_needs_the_token(live: Node) -> None:
    with httpx2.Client(base_url=live.admin_url) as client:
        assert client.get(openapi.PATH).status_code == 401
        served = client.get(openapi.PATH, headers=AUTH)
    assert served.status_code == 200 and served.json() == DOCUMENT
    assert served.json()["openapi"] == "3.1.0"


def test_real_responses_conform(live: Node) -> None:
    uid = str(SEEDED[0])
    with httpx2.Client(base_url=live.admin_url, headers=AUTH) as client:
        checks = [
            ("/api/v1/agents", "GET", client.get("/api/v1/agents"), 200),
            ("/api/v1/agents", "GET", client.get("/api/v1/agents", params={"limit": "0"}), 400),
            ("/api/v1/agents/{instance_uid}", "GET", client.get(f"/api/v1/agents/{uid}"), 200),
            ("/api/v1/agents/{instance_uid}", "GET", client.get("/api/v1/agents/nope"), 404),
            (
                "/api/v1/agents/{instance_uid}/restart",
                "POST",
                client.post(f"/api/v1/agents/{uid}/restart"),
                202,
            ),
            ("/api/v1/fleet/summary", "GET", client.get("/api/v1/fleet/summary"), 200),
            (openapi.PATH, "GET", client.get(openapi.PATH), 200),
            ("/metrics", "GET", client.get("/metrics"), 200),
            ("/healthz", "GET", client.get("/healthz"), 200),
            ("/readyz", "GET", client.get("/readyz"), 200),
        ]
    listed = checks[0][2].json()["agents"]
    assert {a["instance_uid"] for a in listed} == {str(u) for u in SEEDED}
    assert listed[0]["health"]["components"] and listed[1]["effective_config"]["files"]
    for path, method, response, status in checks:
        assert response.status_code == status, (path, response.text)
        SCHEMA[path][method].validate_response(response)


def test_drain_conforms(tmp_path: Path) -> None:
    with node_in_thread(tmp_path) as node, httpx2.Client(base_url=node.admin_url) as client:
        drained = client.post("/api/v1/drain")
        assert drained.status_code == 202
        schemathesis.openapi.from_dict(DOCUMENT)["/api/v1/drain"]["POST"].validate_response(drained)
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503
        SCHEMA["/readyz"]["GET"].validate_response(not_ready)


@SCHEMA.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_schemathesis_finds_nothing(case: schemathesis.Case[Any], live: Node) -> None:
    # A cursor is opaque: a made-up one is rightly refused with 400, though the schema cannot say so.
    excluded: list[CheckFunction] = [positive_data_acceptance] if (case.query or {}).get("cursor") else []
    # Staged waves must each be above the one before: rightly refused with 400 otherwise, though the
    # schema cannot say so.
    rollout = case.body.get("rollout") if isinstance(case.body, dict) else None
    waves = rollout.get("waves") if isinstance(rollout, dict) else None
    if isinstance(waves, list) and len(waves) > 1:
        excluded.append(positive_data_acceptance)
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER):
        # The case dropped or garbled the Authorization header, but the token is always sent below, so
        # the request is not the negative one schemathesis made (missing tokens: test_auth.py).
        excluded.append(negative_data_rejection)
    case.call_and_validate(base_url=live.admin_url, headers=AUTH, excluded_checks=excluded, timeout=10)
