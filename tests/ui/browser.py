"""What the browser tests share besides fixtures (tests/ui/conftest.py): the chromium they drive,
the admin token, their timeouts, sign-in and screenshots."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from playwright.sync_api import Locator, Page, expect

from tests.support.process import Gateway

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "ui-test-admin-token-0123456789"
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
WAIT_MS = 10_000
ROLLOUT_MS = 20_000


def sign_in(page: Page, gateway: Gateway, hash_: str = "#/overview") -> None:
    page.goto(f"{gateway.admin_url}/ui/{hash_}")
    page.get_by_label("Admin token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def shot(page: Page, name: str) -> None:
    page.evaluate("() => window.scrollTo(0, 0)")
    path = IMAGES / f"ui-{name}.png"
    page.screenshot(path=str(path))
    _keep_small(path)


def shot_of(part: Locator, name: str) -> None:
    """A screenshot of one part of the page."""
    path = IMAGES / f"ui-{name}.png"
    part.screenshot(path=str(path))
    _keep_small(path)


def _keep_small(path: Path) -> None:
    """The screenshots are committed (docs/ui.md): a 256-colour palette, which UI text and flat colours
    survive, keeps each at a fraction of its size."""
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256)
    small.save(path, optimize=True)
