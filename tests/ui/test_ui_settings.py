"""The connection settings pages (docs/ui.md) in a real browser against a real gateway process: a
gateway of their own, so the settings made here and the agents that answer them change nothing the
fleet tests in test_ui.py count."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from playwright.sync_api import Page, expect

from gateway.proto import opamp_pb2 as pb
from harness.agent import CAPABILITIES
from tests.support.process import Gateway, start_gateway
from tests.ui.browser import CHROMIUM, TOKEN, WAIT_MS, shot, shot_of, sign_in
from tests.ui.fleet import Fleet, UiAgent

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make test-deps)")

SETTINGS = "/api/v1/connection-settings"
AGENT_ERROR = "otlphttp exporter: certificate signed by unknown authority"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    node = start_gateway(
        tmp_path_factory.mktemp("ui-settings"), "uis", {"log_level": "info"}, admin_token=TOKEN
    )
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def fleet(gateway: Gateway) -> Iterator[dict[str, UiAgent]]:
    agents = Fleet(gateway.opamp_url, gateway.agent_headers)
    reports = (
        CAPABILITIES
        | pb.AgentCapabilities_ReportsOwnMetrics
        | pb.AgentCapabilities_ReportsConnectionSettingsStatus
    )
    try:
        yield {
            # Fails to apply what it is offered, and says why.
            "reporter": agents.connect(UiAgent(0, capabilities=reports, settings_error=AGENT_ERROR)),
            "silent": agents.connect(UiAgent(1)),
        }
    finally:
        agents.close()


@pytest.fixture
def api(gateway: Gateway) -> Iterator[httpx2.Client]:
    with httpx2.Client(
        base_url=gateway.admin_url, trust_env=False, timeout=10, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as client:
        yield client


def _put(api: httpx2.Client, name: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.put(f"{SETTINGS}/{name}", json=body)
    assert response.status_code in (200, 201), response.text
    stored: dict[str, Any] = response.json()
    return stored


def _get(api: httpx2.Client, name: str) -> dict[str, Any]:
    response = api.get(f"{SETTINGS}/{name}")
    assert response.status_code == 200, response.text
    stored: dict[str, Any] = response.json()
    return stored


def _uid(agent: UiAgent) -> str:
    return str(uuid.UUID(bytes=agent.uid))


def test_settings_made_in_the_form_are_stored_and_listed(
    page: Page, gateway: Gateway, api: httpx2.Client
) -> None:
    # Straight to the new form without a token: sign-in comes first, then the form.
    sign_in(page, gateway, "#/connection-settings/new")
    expect(page.get_by_role("heading", name="New connection settings")).to_be_visible()
    page.get_by_label("Name", exact=True).fill("windows-telemetry")
    page.get_by_label("Priority").fill("7")
    page.get_by_label("Match (one key=value per line)").fill("os.type=windows")
    metrics = page.get_by_role("group", name="Own metrics")
    metrics.get_by_label("Destination endpoint").fill("https://otlp.example.com/v1/metrics")
    metrics.get_by_role("button", name="Add header").click()
    metrics.get_by_label("Header", exact=True).fill("Authorization")
    metrics.get_by_label("Value", exact=True).fill("Bearer abc")
    metrics.get_by_text("TLS", exact=True).click()
    metrics.get_by_label("Minimum TLS version").fill("1.3")
    metrics.get_by_label("Also trust the system's CA certificates").check()
    page.get_by_role("button", name="Add other connection").click()
    other = page.get_by_role("group", name="Other connection 1")
    other.get_by_label("Connection name").fill("backup")
    other.get_by_label("Destination endpoint").fill("https://backup.example.com:4318")
    other.get_by_role("button", name="Add setting").click()
    other.get_by_label("Setting", exact=True).fill("compression")
    other.get_by_label("Value", exact=True).fill("zstd")
    page.get_by_role("button", name="Create connection settings").click()
    expect(page.get_by_role("heading", name="Connection settings windows-telemetry")).to_be_visible()

    stored = _get(api, "windows-telemetry")
    assert {k: stored[k] for k in ("selector", "priority", "own_metrics", "other_connections")} == {
        "selector": {"match": {"os.type": "windows"}},
        "priority": 7,
        "own_metrics": {
            "destination_endpoint": "https://otlp.example.com/v1/metrics",
            "headers": {"Authorization": "Bearer abc"},
            "tls": {
                "ca_pem_contents": "",
                "include_system_ca_certs_pool": True,
                "insecure_skip_verify": False,
                "min_version": "1.3",
                "max_version": "",
            },
        },
        "other_connections": {
            "backup": {
                "destination_endpoint": "https://backup.example.com:4318",
                "other_settings": {"compression": "zstd"},
            }
        },
    }
    assert "own_traces" not in stored and "own_logs" not in stored
    expect(page.locator("#settings-version")).to_contain_text(stored["hash"])
    shot(page, "connection-setting")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Connection settings").click()
    row = page.locator('tr[data-settings="windows-telemetry"]')
    expect(row).to_contain_text("os.type=windows")
    expect(row.locator('[data-part="own_metrics"]')).to_have_text(
        "Own metrics: https://otlp.example.com/v1/metrics"
    )
    expect(row.locator('[data-part="other_connections"]')).to_have_text("Other connections: backup")
    expect(row.locator("code[title]")).to_have_attribute("title", stored["hash"])
    shot(page, "connection-settings")

    # A second "new" one of the same name is refused before it could replace the first.
    page.goto(f"{gateway.admin_url}/ui/#/connection-settings/new")
    page.get_by_label("Name", exact=True).fill("windows-telemetry")
    page.get_by_role("group", name="Own logs").get_by_label("Destination endpoint").fill(
        "https://x.example.com"
    )
    page.get_by_role("button", name="Create connection settings").click()
    expect(page.locator("#name-error")).to_contain_text("exist already")
    assert _get(api, "windows-telemetry")["version"] == 1


def test_the_apis_errors_are_shown_at_their_fields(page: Page, gateway: Gateway, api: httpx2.Client) -> None:
    sign_in(page, gateway, "#/connection-settings/new")
    page.get_by_label("Name", exact=True).fill("bad-endpoint")
    page.get_by_role("button", name="Create connection settings").click()
    expect(page.locator("#form-error")).to_contain_text("give at least one of own_metrics")

    traces = page.get_by_role("group", name="Own traces").get_by_label("Destination endpoint")
    traces.fill("ftp://collector.example.com")
    page.get_by_role("button", name="Create connection settings").click()
    expect(traces).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#own_traces-endpoint-error")).to_contain_text("must be an https:// (or http://) URL")
    expect(traces).to_be_focused()
    expect(page.locator("#form-error")).to_have_text("")

    traces.fill("https://collector.example.com/v1/traces")
    metrics = page.get_by_role("group", name="Own metrics")
    metrics.get_by_label("Destination endpoint").fill("https://collector.example.com/v1/metrics")
    metrics.get_by_role("button", name="Add header").click()
    metrics.get_by_label("Header", exact=True).fill("Bad:Header")
    metrics.get_by_label("Value", exact=True).fill("x")
    page.get_by_role("button", name="Create connection settings").click()
    header = metrics.get_by_label("Header", exact=True)
    expect(header).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#own_metrics-header-0-key-error")).to_contain_text("is not an HTTP header name")
    expect(traces).not_to_have_attribute("aria-invalid", "true")
    assert api.get(f"{SETTINGS}/bad-endpoint").status_code == 404

    header.fill("X-Tenant")
    # A name with a dot: the error's path "other_connections.backup.eu.tls..." still finds its row.
    page.get_by_role("button", name="Add other connection").click()
    other = page.get_by_role("group", name="Other connection 1")
    other.get_by_label("Connection name").fill("backup.eu")
    other.get_by_label("Destination endpoint").fill("https://backup.example.eu")
    other.get_by_text("TLS", exact=True).click()
    ca = other.get_by_label("CA certificates (PEM)")
    ca.fill("not a certificate")
    page.get_by_role("button", name="Create connection settings").click()
    expect(ca).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#other-0-tls-ca-error")).to_contain_text("must be PEM certificates")
    ca.fill("")
    page.get_by_role("button", name="Create connection settings").click()
    expect(page.get_by_role("heading", name="Connection settings bad-endpoint")).to_be_visible()
    stored = _get(api, "bad-endpoint")
    assert stored["own_metrics"]["headers"] == {"X-Tenant": "x"}
    assert stored["other_connections"] == {"backup.eu": {"destination_endpoint": "https://backup.example.eu"}}


def test_settings_are_edited_then_deleted_after_confirmation(
    page: Page, gateway: Gateway, api: httpx2.Client
) -> None:
    _put(
        api,
        "edit-me",
        {
            "selector": {"expressions": [{"key": "os.type", "operator": "In", "values": ["darwin"]}]},
            "own_logs": {"destination_endpoint": "https://logs.example.com/v1/logs", "tls": {}},
            "other_connections": {"spare": {"destination_endpoint": "https://spare.example.com"}},
        },
    )
    sign_in(page, gateway, "#/connection-settings/edit-me")
    logs = page.get_by_role("group", name="Own logs").get_by_label("Destination endpoint")
    expect(logs).to_have_value("https://logs.example.com/v1/logs")
    expect(page.get_by_label("Values (comma-separated)")).to_have_value("darwin")
    expect(
        page.get_by_role("group", name="Other connection 1").get_by_label("Connection name")
    ).to_have_value("spare")
    page.get_by_label("Priority").fill("5")
    logs.fill("https://logs2.example.com/v1/logs")
    page.get_by_role("group", name="Other connection 1").get_by_role(
        "button", name="Remove connection"
    ).click()
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("#settings-version")).to_contain_text("Version 2")
    stored = _get(api, "edit-me")
    assert stored["priority"] == 5
    # The TLS part it had (all defaults) is kept: an offer with TLS is not one without.
    assert stored["own_logs"] == {
        "destination_endpoint": "https://logs2.example.com/v1/logs",
        "tls": {
            "ca_pem_contents": "",
            "include_system_ca_certs_pool": False,
            "insecure_skip_verify": False,
            "min_version": "",
            "max_version": "",
        },
    }
    assert "other_connections" not in stored
    assert stored["selector"]["expressions"] == [{"key": "os.type", "operator": "In", "values": ["darwin"]}]

    page.get_by_role("button", name="Delete…").click()
    expect(page.get_by_role("dialog")).to_contain_text("Delete connection settings edit-me?")
    page.get_by_role("button", name="Cancel").click()
    assert _get(api, "edit-me")["version"] == 2
    page.get_by_role("button", name="Delete…").click()
    page.locator("#confirm-delete").click()
    expect(page.get_by_role("heading", name="Connection settings", exact=True)).to_be_visible()
    expect(page.locator('tr[data-settings="edit-me"]')).to_have_count(0)
    assert api.get(f"{SETTINGS}/edit-me").status_code == 404


def test_an_agents_settings_status_is_on_its_page(
    page: Page, gateway: Gateway, api: httpx2.Client, fleet: dict[str, UiAgent]
) -> None:
    reporter = fleet["reporter"]
    _put(
        api,
        "for-reporter",
        {
            "selector": {"instance_uids": [_uid(reporter)]},
            "own_metrics": {"destination_endpoint": "https://metrics.example.com/v1/metrics"},
        },
    )
    assert reporter.offered.wait(WAIT_MS / 1000), "the settings were not offered to the agent"
    offered = reporter.offers[-1].hash.hex()
    assert reporter.offers[-1].own_metrics.destination_endpoint == "https://metrics.example.com/v1/metrics"
    sign_in(page, gateway, f"#/agents/{_uid(reporter)}")
    state = page.locator("#settings-state")
    # The page refreshes every 5 s: the agent's FAILED report arrives within one refresh.
    expect(state).to_contain_text("FAILED", timeout=2 * WAIT_MS)
    expect(state).to_contain_text(AGENT_ERROR)
    expect(state.locator("dd").nth(1)).to_have_text(offered)
    expect(state.locator("dd").nth(2)).to_have_text(offered)
    expect(state).to_contain_text("yes: the agent reports the offer it last got")
    sources = page.locator("#settings-sources")
    expect(sources).to_contain_text("Own metrics")
    expect(sources.get_by_role("link", name="for-reporter")).to_be_visible()
    shot_of(page.locator('section[aria-labelledby="h-settings"]'), "agent-settings")

    page.goto(f"{gateway.admin_url}/ui/#/agents/{_uid(fleet['silent'])}")
    expect(page.locator("#settings-state")).to_contain_text(
        "does not report its connection settings status (no ReportsConnectionSettingsStatus capability)"
    )
    # The source links to the settings' own page.
    page.goto(f"{gateway.admin_url}/ui/#/agents/{_uid(reporter)}")
    page.locator("#settings-sources").get_by_role("link", name="for-reporter").click()
    expect(page.get_by_role("heading", name="Connection settings for-reporter")).to_be_visible()


def test_the_settings_form_needs_no_sideways_scrolling_in_a_narrow_window(
    page: Page, gateway: Gateway
) -> None:
    page.set_viewport_size({"width": 390, "height": 800})
    sign_in(page, gateway, "#/connection-settings/new")
    page.get_by_role("button", name="Add other connection").click()
    expect(page.get_by_role("group", name="Other connection 1")).to_be_visible()
    widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], widths


def test_without_an_admin_token_the_pages_open_without_sign_in(page: Page, tmp_path: Path) -> None:
    open_node = start_gateway(tmp_path, "open", {"log_level": "info"})
    try:
        page.goto(f"{open_node.admin_url}/ui/#/connection-settings")
        expect(page.get_by_role("heading", name="Connection settings", exact=True)).to_be_visible()
        expect(page.get_by_text("No connection settings yet.")).to_be_visible()
        expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
        page.get_by_role("link", name="New connection settings").click()
        page.get_by_label("Name", exact=True).fill("open")
        page.get_by_role("group", name="Own logs").get_by_label("Destination endpoint").fill(
            "http://127.0.0.1:4318/v1/logs"
        )
        page.get_by_role("button", name="Create connection settings").click()
        expect(page.get_by_role("heading", name="Connection settings open")).to_be_visible()
        assert open_node.admin.get_json(f"{SETTINGS}/open")["own_logs"] == {
            "destination_endpoint": "http://127.0.0.1:4318/v1/logs"
        }
    finally:
        open_node.stop()
