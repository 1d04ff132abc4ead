"""The real page in a real headless Chromium, against the real server on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tiny_model import build_tiny_model, demo_photo, running_server

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; Playwright's own browser download is not used
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; .ci/run installs it (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium)")
    return CHROMIUM


def test_upload_through_the_page(chromium: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    model, _ = build_tiny_model(tmp_path / "model")  # species 0, a venomous cobra, wins at ~82%
    photo = demo_photo(tmp_path / "snake.jpg")
    requests: list[str] = []
    # --low-confidence 0.9 makes the real response carry both warnings, so the page shows both.
    with running_server(model, tmp_path, "--low-confidence", "0.9") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 412, "height": 915})  # a phone
            page.on("request", lambda r: requests.append(r.url))
            page.goto(f"{url}/")
            expect(page.locator("#species-count")).to_have_text("4")
            expect(page.locator("#species-list li")).to_have_count(4)

            page.set_input_files("#file", str(photo))
            results = page.locator("#results li")
            expect(results).to_have_count(3)
            expect(results.first).to_contain_text("Monocled Cobra")
            expect(results.first).to_contain_text("Naja kaouthia")
            expect(results.first.locator(".badge.venomous")).to_have_text("VENOMOUS")
            expect(page.locator('.alert[data-kind="danger"]')).to_contain_text("Possibly venomous")
            expect(page.locator('.alert[data-kind="warn"]')).to_contain_text("treat it as venomous")
            expect(page.locator("#preview")).to_be_visible()
            expect(page.locator("#model-info")).to_contain_text("sha256")
            page.screenshot(path=tmp_path / "page-mobile.png", full_page=True)
            page.set_viewport_size({"width": 1280, "height": 900})
            page.locator("#species summary").click()
            expect(page.locator("#species-list")).to_contain_text("Banded Krait")
            page.screenshot(path=tmp_path / "page-desktop.png", full_page=True)

            # A server-side refusal is shown, not swallowed.
            (tmp_path / "notes.jpg").write_text("not a photo")
            page.set_input_files("#file", str(tmp_path / "notes.jpg"))
            expect(page.locator("#status.error")).to_contain_text("not a recognised image")
        finally:
            browser.close()
    # Self-contained: the page fetched nothing but its own origin.
    assert requests and all(r.startswith(url) or r.startswith("blob:") for r in requests), requests
    print(f"screenshots: {tmp_path / 'page-mobile.png'} {tmp_path / 'page-desktop.png'}")
