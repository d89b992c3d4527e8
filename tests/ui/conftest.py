"""The browser and a fresh page per test, for every module in tests/ui. Each module has its own
`gateway` and `fleet` fixtures (one gateway process per module, so one module's agents and settings
do not change what another counts); the browser starts once the module's fleet is connected."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.support.process import Gateway
from tests.ui.browser import CHROMIUM, WAIT_MS


@pytest.fixture(scope="module")
def browser(fleet: object) -> Iterator[Browser]:
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], timeout=WAIT_MS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, gateway: Gateway) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(WAIT_MS)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    # Chromium logs every 4xx as "Failed to load resource"; the page handles those (sign-in, field
    # errors). Anything else on the console, and every uncaught exception, fails the test.
    opened.on(
        "console",
        lambda msg: (
            errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("Failed to load resource")
            else None
        ),
    )
    try:
        yield opened
    finally:
        context.close()
    assert not errors, f"the page reported errors: {errors}"
