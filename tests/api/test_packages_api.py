"""The packages admin API over real sockets on one in-process node: the round trip (and that its
answers conform to the OpenAPI document), bad bodies refused by field name, the https:// rule and
--allow-insecure-package-urls, revisions, HTTP agents' statuses shown and filtered, the counts in a
package's GET, a staged package rollout halting on InstallFailed, and a failing store."""

from __future__ import annotations

import copy
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import schemathesis

from gateway.api import openapi
from gateway.fleet.packages import Package, PackageRequest
from gateway.fleet.waves import in_wave
from gateway.proto import anyvalue_pb2 as av, opamp_pb2 as pb
from gateway.store.base import StoreUnavailable
from tests.support.memory_store import MemoryStore
from tests.support.packages import SERVICE, body, content_hash
from tests.support.servers import Node, run_node
from tests.support.waiting import uid

pytestmark = pytest.mark.anyio

SCHEMA = schemathesis.openapi.from_dict(openapi.build())
PATH = "/api/v1/packages/otelcol"
ACCEPTS = (
    pb.AgentCapabilities_ReportsStatus
    | pb.AgentCapabilities_AcceptsPackages
    | pb.AgentCapabilities_ReportsPackageStatuses
    | pb.AgentCapabilities_ReportsHealth
)
AGENTS = [uid(n) for n in range(1, 21)]


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    # The rollout controllers' timers never fire: the tests tick them.
    async with run_node(tmp_path, offline_after=60.0, rollout_interval=3600.0) as running:
        yield running


@pytest.fixture
async def admin(node: Node) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=node.admin_url) as c:
        yield c


def conforms(response: httpx2.Response, path: str, method: str) -> Any:
    SCHEMA[path][method].validate_response(response)
    return response.json() if response.content else None


async def test_round_trip(admin: httpx2.AsyncClient) -> None:
    created = await admin.put(PATH, json=body(priority=5))
    assert created.status_code == 201
    package = conforms(created, "/api/v1/packages/{name}", "PUT")
    assert (package["name"], package["version"], package["revision"], package["type"]) == (
        "otelcol",
        "0.121.0",
        1,
        "top_level",
    )
    assert package["file"]["content_hash"] == content_hash("0.121.0") and package["package_name"] == "otelcol"
    got = conforms(await admin.get(PATH), "/api/v1/packages/{name}", "GET")
    assert got["rollout"] == {
        "strategy": "all",
        **dict.fromkeys(
            ("matched", "installed", "installing", "failed", "pending", "unsupported", "none"), 0
        ),
        "offline": 0,
        "disconnected": 0,
    }
    # GET -> PUT changes nothing (the counts and the server's fields are ignored).
    same = await admin.put(PATH, json=got)
    assert same.status_code == 200 and same.json()["revision"] == 1
    newer = await admin.put(PATH, json=body("0.122.0", revision=1))
    assert newer.status_code == 200 and newer.json()["revision"] == 2
    stale = await admin.put(PATH, json=body("0.123.0", revision=1))
    assert stale.status_code == 409 and "at revision 2, not 1" in stale.json()["error"]["message"]
    listed = conforms(await admin.get("/api/v1/packages"), "/api/v1/packages", "GET")
    assert [p["revision"] for p in listed["packages"]] == [2]
    versions = conforms(await admin.get(f"{PATH}/versions"), "/api/v1/packages/{name}/versions", "GET")
    assert [(v["revision"], v["version"]) for v in versions["versions"]] == [(2, "0.122.0"), (1, "0.121.0")]
    assert (await admin.delete(f"{PATH}?revision=1")).status_code == 409
    deleted = await admin.delete(f"{PATH}?revision=2")
    assert deleted.status_code == 204
    for response in (await admin.get(PATH), await admin.delete(PATH), await admin.get(f"{PATH}/versions")):
        assert response.status_code == 404
    assert (await admin.delete("/api/v1/packages/Bad")).status_code == 400


def _broken(**changes: Any) -> dict[str, Any]:
    raw = body()
    for path, value in changes.items():
        target = raw
        *parents, leaf = path.split("__")
        for part in parents:
            target = target[part]
        if value is None:
            del target[leaf]
        else:
            target[leaf] = value
    return raw


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ([], "body"),
        (_broken(extra=1), "extra"),
        (_broken(type="binary"), "type"),
        (_broken(type=["addon"]), "type"),
        (_broken(version=None), "version"),
        (_broken(version=""), "version"),
        (_broken(version=121), "version"),
        (_broken(file=None), "file"),
        (_broken(file="https://x"), "file"),
        (_broken(file__download_url=None), "file.download_url"),
        (_broken(file__download_url="ftp://x/y"), "file.download_url"),
        (_broken(file__download_url="https://a b"), "file.download_url"),
        (_broken(file__content_hash=None), "file.content_hash"),
        (_broken(file__content_hash="ab" * 31), "file.content_hash"),
        (_broken(file__content_hash="zz" * 32), "file.content_hash"),
        (_broken(file__signature="not base64!"), "file.signature"),
        (_broken(file__headers={"Bad Header": "x"}), "file.headers."),
        (_broken(file__headers={"X": "a\nb"}), "file.headers.X"),
        (_broken(file__size=3), "file.size"),
        (_broken(selector=None), "selector"),
        (_broken(selector={"match": "x"}), "selector.match"),
        (_broken(priority=2_000_000), "priority"),
        (_broken(package_name="Bad Name"), "package_name"),
        (_broken(revision=-1), "revision"),
        (_broken(rollout={"strategy": "staged", "waves": [50, 10]}), "rollout.waves[1]"),
    ],
)
async def test_a_bad_body_is_400_naming_the_field(admin: httpx2.AsyncClient, raw: Any, field: str) -> None:
    response = await admin.put(PATH, json=raw)
    assert response.status_code == 400, response.text
    message = conforms(response, "/api/v1/packages/{name}", "PUT")["error"]["message"]
    assert message.startswith(field), message
    assert (await admin.get("/api/v1/packages")).json() == {"packages": []}


async def test_only_https_urls_unless_allowed(admin: httpx2.AsyncClient, tmp_path: Path) -> None:
    plain = _broken(file__download_url="http://artifacts.internal/otelcol.tar.gz")
    refused = await admin.put(PATH, json=plain)
    assert refused.status_code == 400
    assert "--allow-insecure-package-urls" in refused.json()["error"]["message"]
    (tmp_path / "insecure").mkdir()
    async with (
        run_node(tmp_path / "insecure", allow_insecure_package_urls=True) as insecure,
        httpx2.AsyncClient(base_url=insecure.admin_url) as other,
    ):
        accepted = await other.put(PATH, json=plain)
        assert accepted.status_code == 201
        conforms(accepted, "/api/v1/packages/{name}", "PUT")
        assert accepted.json()["file"]["download_url"].startswith("http://")


async def test_bad_names_and_bodies(admin: httpx2.AsyncClient) -> None:
    bad = await admin.put("/api/v1/packages/Bad", json=body())
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith(
        "name: 'Bad' is not a valid package"
    )
    for content, message in ((b"{", "body: not valid JSON"), (b"[" * 100_000 + b"]" * 100_000, "body:")):
        response = await admin.put(PATH, content=content, headers={"Content-Type": "application/json"})
        assert response.status_code == 400 and response.json()["error"]["message"].startswith(message)


class HttpAgents:
    """HTTP agents that accept packages and report on what they were offered: DOWNLOADING first, then
    INSTALLED, or INSTALL_FAILED for a version in `bad`."""

    def __init__(self, client: httpx2.AsyncClient, agents: list[bytes]) -> None:
        self._client = client
        self.agents = agents
        self.seq = 0
        self.offers: dict[bytes, pb.PackagesAvailable] = {}
        self.steps: dict[bytes, int] = {}

    def version(self, agent: bytes) -> str | None:
        offer = self.offers.get(agent)
        return None if offer is None or "otelcol" not in offer.packages else offer.packages["otelcol"].version

    def having(self, version: str) -> set[bytes]:
        return {a for a in self.agents if self.version(a) == version}

    def _report(self, agent: bytes, bad: set[str]) -> pb.PackageStatuses | None:
        offer = self.offers.get(agent)
        if offer is None:
            return None
        out = pb.PackageStatuses(server_provided_all_packages_hash=offer.all_packages_hash)
        for name, available in offer.packages.items():
            status = out.packages[name]
            status.name = name
            status.server_offered_version = available.version
            status.server_offered_hash = available.hash
            if self.steps.get(agent, 0) == 0:
                status.status = pb.PackageStatusEnum_Downloading
                status.download_details.download_percent = 50.0
            elif available.version in bad:
                status.status = pb.PackageStatusEnum_InstallFailed
                status.error_message = "signature check failed"
            else:
                status.status = pb.PackageStatusEnum_Installed
                status.agent_has_version = available.version
                status.agent_has_hash = available.hash
        return out

    async def round(self, bad: set[str] | None = None) -> None:
        for agent in self.agents:
            msg = pb.AgentToServer(instance_uid=agent, sequence_num=self.seq, capabilities=ACCEPTS)
            if self.seq == 0:
                msg.agent_description.identifying_attributes.add(
                    key="service.name", value=av.AnyValue(string_value=SERVICE)
                )
            report = self._report(agent, bad or set())
            if report is not None:
                msg.package_statuses.CopyFrom(report)
                self.steps[agent] = self.steps.get(agent, 0) + 1
            response = await self._client.post(
                "/v1/opamp",
                content=msg.SerializeToString(),
                headers={"Content-Type": "application/x-protobuf"},
            )
            assert response.status_code == 200, response.text
            reply = pb.ServerToAgent.FromString(response.content)
            assert reply.capabilities & pb.ServerCapabilities_OffersPackages
            if reply.HasField("packages_available"):
                self.offers[agent] = copy.deepcopy(reply.packages_available)
                self.steps[agent] = 0
        self.seq += 1


@pytest.fixture
async def agents(node: Node) -> AsyncIterator[HttpAgents]:
    async with httpx2.AsyncClient(base_url=node.opamp_url) as c:
        yield HttpAgents(c, AGENTS)


async def _listed(admin: httpx2.AsyncClient, **params: str) -> set[str]:
    response = await admin.get("/api/v1/agents", params={"limit": "1000", **params})
    return {a["instance_uid"] for a in conforms(response, "/api/v1/agents", "GET")["agents"]}


async def test_statuses_are_stored_shown_counted_and_filtered(
    admin: httpx2.AsyncClient, agents: HttpAgents
) -> None:
    await agents.round()  # enrolled, no package yet
    assert not agents.offers
    assert (await admin.put(PATH, json=body())).status_code == 201
    await agents.round()  # offered
    assert agents.having("0.121.0") == set(AGENTS)
    first = str(uuid.UUID(bytes=uid(1)))
    pending = await _listed(admin, package="otelcol", package_status="pending")
    assert first in pending and len(pending) == len(AGENTS)
    await agents.round()  # DOWNLOADING
    shown = conforms(await admin.get(f"/api/v1/agents/{first}"), "/api/v1/agents/{instance_uid}", "GET")
    status = shown["packages"]["packages"]["otelcol"]
    assert (status["status"], status["download_percent"]) == ("DOWNLOADING", 50.0)
    assert shown["package_sync"]["packages"]["otelcol"]["status"] == "installing"
    assert shown["packages"]["offered_hash"] == shown["package_sync"]["all_packages_hash"]
    assert len(await _listed(admin, package="otelcol", package_status="installing")) == len(AGENTS)
    assert await _listed(admin, package="otelcol", package_status="installed") == set()
    await agents.round()  # INSTALLED
    installed = await _listed(admin, package="otelcol", package_status="installed")
    assert first in installed and len(installed) == len(AGENTS)
    assert await _listed(admin, package="otelcol", package_status="pending") == set()
    assert len(await _listed(admin, package_status="installed")) == len(AGENTS)
    counts = (await admin.get(PATH)).json()["rollout"]
    assert (counts["matched"], counts["installed"], counts["pending"]) == (len(AGENTS), len(AGENTS), 0)
    # The agents hold the package now: nothing is offered again.
    offers = dict(agents.offers)
    await agents.round()
    assert agents.offers == offers
    missing = await admin.get("/api/v1/agents", params={"package": "nope"})
    assert missing.status_code == 404
    bad = await admin.get("/api/v1/agents", params={"package": "otelcol", "package_status": "done"})
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("package_status: ")


async def test_a_staged_package_rollout_halts_on_failures(
    node: Node, admin: httpx2.AsyncClient, agents: HttpAgents
) -> None:
    assert (await admin.put(PATH, json=body("0.121.0"))).status_code == 201
    for _ in range(3):
        await agents.round()
    assert agents.having("0.121.0") == set(AGENTS)
    staged = {"strategy": "staged", "waves": [25, 60], "min_wave_seconds": 0, "max_failure_ratio": 0.1}
    assert (await admin.put(PATH, json=body("0.122.0", rollout=staged))).status_code == 200
    rollout = conforms(await admin.get(f"{PATH}/rollout"), "/api/v1/packages/{name}/rollout", "GET")
    assert (rollout["revision"], rollout["previous_revision"], rollout["state"]) == (2, 1, "progressing")
    assert rollout["events"][0]["reason"].startswith("revision 2 started")
    await agents.round()  # the first wave is offered 0.122.0
    first = {a for a in AGENTS if in_wave(a, 2, 0.25)}
    assert agents.having("0.122.0") == first and first
    await agents.round(bad={"0.122.0"})  # DOWNLOADING
    await agents.round(bad={"0.122.0"})  # INSTALL_FAILED
    failing = (await admin.get(f"{PATH}/rollout")).json()
    assert failing["failed"] == len(first)
    failed = await _listed(admin, package="otelcol", package_status="failed")
    assert failed == {str(uuid.UUID(bytes=a)) for a in first}
    assert await node.services.package_rollouts.tick() == 1
    halted = conforms(await admin.get(f"{PATH}/rollout"), "/api/v1/packages/{name}/rollout", "GET")
    assert halted["state"] == "halted" and "rolled back to revision 1" in halted["events"][-1]["reason"]
    # Every agent is offered 0.121.0 again; the later waves never saw 0.122.0.
    await agents.round()
    assert agents.having("0.121.0") == set(AGENTS)
    text = (await admin.get("/metrics")).text
    assert 'opamp_gateway_package_rollout_changes_total{state="halted"} 1.0' in text
    again = await admin.post(f"{PATH}/rollout/rollback", json={"revision": 1})
    assert again.status_code == 409 and "revision 1 already" in again.json()["error"]["message"]
    bad = await admin.post(f"{PATH}/rollout/rollback", json={"version": 1})
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("version: unknown field")


async def test_pause_and_resume_a_package_rollout(node: Node, admin: httpx2.AsyncClient) -> None:
    await admin.put(PATH, json=body("0.121.0"))
    await admin.put(PATH, json=body("0.122.0", rollout={"strategy": "staged", "min_wave_seconds": 0}))
    paused = await admin.post(f"{PATH}/rollout/pause")
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    conforms(paused, "/api/v1/packages/{name}/rollout/pause", "POST")
    assert (await admin.post(f"{PATH}/rollout/pause")).status_code == 409
    resumed = await admin.post(f"{PATH}/rollout/resume")
    assert resumed.status_code == 200 and resumed.json()["state"] == "progressing"
    back = await admin.post(f"{PATH}/rollout/rollback")
    assert back.status_code == 200 and back.json()["state"] == "rolled_back"
    missing = await admin.get("/api/v1/packages/nope/rollout")
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "no package 'nope'"


class _DownStore(MemoryStore):
    async def list_packages(self) -> list[Package]:
        raise StoreUnavailable("packages unreadable")

    async def get_package(self, name: str) -> Package | None:
        raise StoreUnavailable("packages unreadable")

    async def put_package(self, name: str, request: PackageRequest, now: float) -> tuple[Package, bool]:
        raise StoreUnavailable("packages unwritable")

    async def delete_package(self, name: str, expected_version: int | None = None) -> bool:
        raise StoreUnavailable("packages unwritable")


async def test_a_store_failure_is_503(tmp_path: Path) -> None:
    async with (
        run_node(tmp_path, store=_DownStore()) as node,
        httpx2.AsyncClient(base_url=node.admin_url) as admin,
    ):
        for response in (
            await admin.get("/api/v1/packages"),
            await admin.get(PATH),
            await admin.put(PATH, json=body()),
            await admin.delete(PATH),
        ):
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "store_unavailable"
