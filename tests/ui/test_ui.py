"""The fleet web UI in a real browser (Debian's chromium through Playwright) against a real gateway
process with real WebSocket agents. Every wait has a timeout; screenshots go to docs/images/ui-*.png."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import httpx2
import pytest
from playwright.sync_api import Page, expect

from harness.agent import COLLECTOR_CAPABILITIES
from tests.support.packages import body as package_body
from tests.support.process import Gateway, start_gateway
from tests.ui.browser import CHROMIUM, ROLLOUT_MS, TOKEN, WAIT_MS, shot, sign_in
from tests.ui.fleet import Fleet, PackageAgent, UiAgent

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make test-deps)")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    node = start_gateway(tmp_path_factory.mktemp("ui"), "ui", {"log_level": "info"}, admin_token=TOKEN)
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def fleet(gateway: Gateway) -> Iterator[dict[str, UiAgent]]:
    agents = Fleet(gateway.opamp_url, gateway.agent_headers)
    try:
        made = {
            "linux": agents.connect(UiAgent(0)),
            "linux2": agents.connect(UiAgent(1, version="0.121.0")),
            "windows": agents.connect(UiAgent(2, os_type="windows")),
            "sick": agents.connect(UiAgent(3, healthy=False)),
            # A collector without a supervisor: it cannot be restarted.
            "norestart": agents.connect(UiAgent(4, capabilities=COLLECTOR_CAPABILITIES)),
        }
        bye = UiAgent(5)
        agents.say_goodbye(bye)
        made["bye"] = bye
        yield made
    finally:
        agents.close()


def test_files_are_served_with_strict_headers_and_no_token(gateway: Gateway) -> None:
    with httpx2.Client(base_url=gateway.admin_url, trust_env=False, timeout=10) as client:
        root = client.get("/")
        assert root.status_code == 302 and root.headers["location"] == "/ui/"
        index = client.get("/ui/")
        assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in index.headers["content-security-policy"]
        assert "unsafe-inline" not in index.headers["content-security-policy"]
        assert index.headers["x-content-type-options"] == "nosniff"
        assert index.headers["cache-control"] == "no-cache"
        again = client.get("/ui/", headers={"If-None-Match": index.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        script = client.get("/ui/app.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert client.get("/ui/nothing.js").status_code == 404
        assert client.get("/ui/../app.py").status_code == 404
        assert client.get("/api/v1/fleet/summary").status_code == 401


def test_sign_in_refuses_a_wrong_token_and_keeps_the_right_one_for_the_session(
    page: Page, gateway: Gateway
) -> None:
    page.goto(f"{gateway.admin_url}/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Admin token").fill("not-the-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text(re.compile("not accepted"))
    shot(page, "sign-in")
    page.get_by_label("Admin token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    assert TOKEN not in page.url
    stored = page.evaluate("() => [sessionStorage.length, localStorage.length, document.cookie]")
    assert stored == [1, 0, ""]
    page.reload()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def test_overview_numbers_equal_the_api_summary(page: Page, gateway: Gateway) -> None:
    sign_in(page, gateway)
    summary = gateway.admin.summary()
    assert summary["total"] == 6
    tiles = page.locator(".tiles")
    expect(tiles.locator('[data-status="total"] .big')).to_have_text(str(summary["total"]))
    for status in ("online", "offline", "disconnected", "unhealthy"):
        expect(tiles.locator(f'[data-status="{status}"] .big')).to_have_text(
            str(summary["by_status"].get(status, 0))
        )
    for os_type, count in summary["by_os"].items():
        row = page.get_by_role("table", name="Agents by operating system").locator(
            f'tr[data-key="{os_type}"]'
        )
        expect(row.locator("td.num")).to_have_text(str(count))
    shot(page, "overview")


def test_agents_filter_by_status_and_by_attribute(
    page: Page, gateway: Gateway, fleet: dict[str, UiAgent]
) -> None:
    sign_in(page, gateway, "#/agents")
    rows = page.locator("table.agents tbody tr")
    expect(rows).to_have_count(6)
    shot(page, "agents")
    page.get_by_label("Status", exact=True).select_option("unhealthy")
    page.get_by_role("button", name="Apply").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-uid", _uid(fleet["sick"]))
    page.get_by_label("Status", exact=True).select_option("")
    page.get_by_label("Attributes").fill("os.type=windows")
    page.get_by_role("button", name="Apply").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-uid", _uid(fleet["windows"]))
    assert "attr=os.type%3Dwindows" in page.url
    page.get_by_label("Attributes").fill("no-equals-sign")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("alert")).to_contain_text("key=value")


def test_cursor_paging(page: Page, gateway: Gateway) -> None:
    sign_in(page, gateway, "#/agents?limit=25")
    page.goto(f"{gateway.admin_url}/ui/#/agents?limit=25")
    page.evaluate("() => { location.hash = '#/agents?limit=4' }")
    rows = page.locator("table.agents tbody tr")
    expect(rows).to_have_count(4)
    first_page = rows.evaluate_all("rows => rows.map(r => r.dataset.uid)")
    page.get_by_role("link", name="Next page").click()
    expect(rows).to_have_count(2)
    second_page = rows.evaluate_all("rows => rows.map(r => r.dataset.uid)")
    assert not set(first_page) & set(second_page)
    page.get_by_role("link", name="Previous page").click()
    expect(rows).to_have_count(4)


def test_agent_page_shows_the_effective_config_and_restart_reaches_the_agent(
    page: Page, gateway: Gateway, fleet: dict[str, UiAgent]
) -> None:
    agent = fleet["linux"]
    sign_in(page, gateway, f"#/agents/{_uid(agent)}")
    config_text = agent.effective[""].decode()
    expect(page.locator('details.file[data-file=""] pre')).to_have_text(config_text)
    expect(page.locator(".tree")).to_contain_text("healthy")
    # This gateway has no agent keys: the agent is bound to none.
    expect(page.get_by_text("Agent key", exact=True)).to_be_visible()
    expect(page.locator("#agent-key-id")).to_have_count(0)
    expect(page.get_by_role("table", name="Identifying attributes", exact=True)).to_contain_text(
        "otelcol-contrib"
    )
    shot(page, "agent")
    page.get_by_role("button", name="Restart").click()
    expect(page.locator("#restart-result")).to_contain_text("Restart sent")
    assert agent.restarted.wait(WAIT_MS / 1000), "the restart command did not reach the agent"

    page.goto(f"{gateway.admin_url}/ui/#/agents/{_uid(fleet['norestart'])}")
    button = page.get_by_role("button", name="Restart")
    expect(button).to_be_disabled()
    expect(page.locator("#restart-reason")).to_contain_text("AcceptsRestartCommand")


def test_a_config_made_in_the_form_rolls_out_to_the_connected_agents(
    page: Page, gateway: Gateway, fleet: dict[str, UiAgent]
) -> None:
    sign_in(page, gateway, "#/configs/new")
    page.get_by_label("Name", exact=True).fill("windows-fleet")
    page.get_by_label("Match (one key=value per line)").fill("os.type=windows")
    page.get_by_label("Body", exact=True).fill("receivers:\n  hostmetrics: {}\n")
    page.get_by_role("button", name="Create config").click()
    expect(page.get_by_role("heading", name="Config windows-fleet")).to_be_visible()
    applied = page.locator('#rollout td[data-state="applied"]')
    expect(applied).to_have_text("1", timeout=ROLLOUT_MS)
    assert fleet["windows"].effective == {"collector.yaml": b"receivers:\n  hostmetrics: {}\n"}
    shot(page, "config")
    page.goto(f"{gateway.admin_url}/ui/#/configs")
    expect(page.locator('tr[data-config="windows-fleet"] td[data-state="applied"]')).to_have_text("1")
    shot(page, "configs")


def test_a_validation_error_is_shown_at_its_field(page: Page, gateway: Gateway) -> None:
    sign_in(page, gateway, "#/configs/new")
    page.get_by_label("Name", exact=True).fill("bad-type")
    page.get_by_label("Content type").fill("not a media type")
    page.get_by_label("Body", exact=True).fill("x: 1\n")
    page.get_by_role("button", name="Create config").click()
    content_type = page.get_by_label("Content type")
    expect(content_type).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#file-0-type-error")).to_contain_text("must be a media type")
    expect(content_type).to_be_focused()
    page.get_by_label("Name", exact=True).fill("Not A Name")
    page.get_by_label("Content type").fill("text/yaml")
    page.get_by_role("button", name="Create config").click()
    expect(page.locator("#name-error")).to_contain_text("not a valid config name")


def test_saving_a_staged_config_in_the_form_keeps_its_strategy(page: Page, gateway: Gateway) -> None:
    staged = {"strategy": "staged", "waves": [10, 100], "min_wave_seconds": 5, "max_failure_ratio": 0.1}
    gateway.admin.put_config(
        "staged",
        {
            "selector": {},
            "files": {"a.yaml": {"content_type": "text/yaml", "body": "a: 1"}},
            "rollout": staged,
        },
    )
    sign_in(page, gateway, "#/configs/staged")
    page.get_by_label("Body", exact=True).fill("a: 2\n")
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_text("Version 2, updated")).to_be_visible()
    rollout = gateway.admin.config("staged")["rollout"]
    assert {k: rollout[k] for k in staged} == staged


def test_a_config_is_deleted_after_confirmation(page: Page, gateway: Gateway) -> None:
    gateway.admin.put_config(
        "short-lived", {"selector": {}, "files": {"a.yaml": {"content_type": "text/yaml", "body": "a: 1"}}}
    )
    sign_in(page, gateway, "#/configs/short-lived")
    page.get_by_role("button", name="Delete…").click()
    page.get_by_role("button", name="Cancel").click()
    assert gateway.admin.config("short-lived")["version"] == 1
    page.get_by_role("button", name="Delete…").click()
    page.locator("#confirm-delete").click()
    expect(page.get_by_role("heading", name="Configs")).to_be_visible()
    gateway.admin.get_json("/api/v1/configs/short-lived", expect=404)


def test_a_package_is_deleted_after_confirmation(page: Page, gateway: Gateway) -> None:
    gateway.admin.put_json("/api/v1/packages/short-lived", package_body("0.121.0"))
    sign_in(page, gateway, "#/packages/short-lived")
    page.get_by_role("button", name="Delete…").click()
    page.get_by_role("button", name="Cancel").click()
    assert gateway.admin.get_json("/api/v1/packages/short-lived")["revision"] == 1
    page.get_by_role("button", name="Delete…").click()
    page.locator("#confirm-delete").click()
    expect(page.get_by_role("heading", name="Packages")).to_be_visible()
    gateway.admin.get_json("/api/v1/packages/short-lived", expect=404)


def test_a_narrow_window_needs_no_sideways_scrolling(page: Page, gateway: Gateway) -> None:
    page.set_viewport_size({"width": 390, "height": 800})
    sign_in(page, gateway)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], widths


def _uid(agent: UiAgent) -> str:
    return str(uuid.UUID(bytes=agent.uid))


def test_keyboard_focus_survives_a_live_refresh_and_enter_follows_the_link(
    page: Page, gateway: Gateway
) -> None:
    sign_in(page, gateway)
    online = page.locator('a.tile[data-status="online"]')
    online.focus()
    stamp = page.locator("#updated")
    before = stamp.inner_text()
    expect(stamp).not_to_have_text(before, timeout=WAIT_MS)
    expect(page.locator('a.tile[data-status="online"]')).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Agents")).to_be_visible()
    expect(page.locator("table.agents tbody tr")).to_have_count(4)


def test_a_package_made_in_the_form_is_installed_by_the_agents_that_accept_packages(
    page: Page, gateway: Gateway
) -> None:
    agents = Fleet(gateway.opamp_url, gateway.agent_headers)
    try:
        upgrader = PackageAgent(6, os_type="freebsd")
        agents.connect(upgrader)
        sign_in(page, gateway, "#/packages/new")
        page.get_by_label("Name", exact=True).fill("otelcol-freebsd")
        page.get_by_label("Version", exact=True).fill("0.121.0")
        page.get_by_label("Download URL").fill(
            "https://artifacts.example.com/otelcol-contrib_0.121.0_freebsd.tar.gz"
        )
        page.get_by_label("SHA-256 of the file").fill("not a hash")
        page.get_by_label("Match (one key=value per line)").fill("os.type=freebsd")
        page.get_by_role("button", name="Create package").click()
        content_hash = page.get_by_label("SHA-256 of the file")
        expect(content_hash).to_have_attribute("aria-invalid", "true")
        expect(page.locator("#content-hash-error")).to_contain_text("64 hex digits")
        expect(content_hash).to_be_focused()
        content_hash.fill("ab" * 32)
        page.get_by_role("button", name="Create package").click()
        expect(page.get_by_role("heading", name="Package otelcol-freebsd")).to_be_visible()
        installed = page.locator('#package-status td[data-state="installed"]')
        expect(installed).to_have_text("1", timeout=ROLLOUT_MS)
        assert [o.packages["otelcol-freebsd"].version for o in upgrader.package_offers] == ["0.121.0"]
        expect(page.locator("#rollout-state")).to_contain_text("every agent it matches is offered it at once")
        shot(page, "package")
        page.goto(f"{gateway.admin_url}/ui/#/packages")
        expect(page.locator('tr[data-package="otelcol-freebsd"] td[data-state="installed"]')).to_have_text(
            "1"
        )
        page.locator('tr[data-package="otelcol-freebsd"] td[data-state="installed"] a').click()
        expect(page.locator("table.agents tbody tr")).to_have_count(1)
        page.locator("table.agents tbody tr a.uid").click()
        row = page.locator('table.packages tr[data-package="otelcol-freebsd"]')
        expect(row).to_contain_text("INSTALLED")
        expect(row).to_contain_text("installed")
    finally:
        agents.close()
