"""The real page in a real headless Chromium, against the real server on loopback.

Every request to a host other than this machine is aborted and recorded, and each test ends by
asserting there were none: the page and the API docs must work with no network at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from snakeid.deploy.predict import SYNTHETIC_WARNING
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


LOCAL_HOSTS = ("127.0.0.1", "localhost")


def block_non_local(context: Any) -> list[str]:
    """Abort every request that leaves this machine; return the list they are recorded in."""
    blocked: list[str] = []

    def handle(route: Any) -> None:
        url = route.request.url
        parts = urlsplit(url)
        local = parts.scheme in ("http", "https", "ws", "wss") and parts.hostname in LOCAL_HOSTS
        if local or parts.scheme in ("data", "blob"):  # data:/blob: are in-page, not network
            route.continue_()
        else:
            blocked.append(url)
            route.abort("internetdisconnected")

    context.route("**/*", handle)
    return blocked


def test_upload_through_the_page(chromium: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    # Species 0, a venomous cobra, wins at ~82%; the meta says the photos were synthetic.
    model, _ = build_tiny_model(tmp_path / "model", data_source="demo-synthetic", region="Testland")
    photo = demo_photo(tmp_path / "snake.jpg")
    requests: list[str] = []
    # --low-confidence 0.9: the venomous answer is also unsure, and the reason says both.
    with running_server(model, tmp_path, "--low-confidence", "0.9") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 412, "height": 915})  # a phone
            blocked = block_non_local(context)
            page = context.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(f"{url}/")
            banner = page.locator("#synthetic-banner")
            expect(banner).to_be_visible()
            expect(banner).to_have_text(f"Warning: {SYNTHETIC_WARNING}.")
            expect(banner).to_be_in_viewport()  # at the top, seen without scrolling
            expect(page.locator("#model-info")).to_contain_text("trained on demo-synthetic")
            expect(page.locator("#species-count")).to_have_text("4")
            expect(page.locator("#species-list li")).to_have_count(4)
            expect(page.locator("#scope")).to_have_text(
                "This model knows 4 snake species of Testland; a snake from elsewhere may be "
                "one it does not know."
            )

            page.set_input_files("#file", str(photo))
            results = page.locator("#results li")
            expect(results).to_have_count(3)
            expect(results.first).to_contain_text("Monocled Cobra")
            expect(results.first).to_contain_text("Naja kaouthia")
            expect(results.first.locator(".badge.venomous")).to_have_text("VENOMOUS")
            verdict = page.locator(".alert")
            expect(verdict).to_have_count(1)  # one verdict, one box
            expect(verdict).to_have_attribute("data-verdict", "venomous")
            expect(verdict.locator("h2")).to_have_text("Venomous — keep away")
            expect(verdict).to_contain_text("Most likely the Monocled Cobra (")
            expect(verdict).to_contain_text(
                "a venomous species, but the model is not sure of the species."
            )
            expect(verdict).to_contain_text("seek medical help immediately")
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
    assert blocked == []
    assert requests and all(r.startswith(url) or r.startswith("blob:") for r in requests), requests
    print(f"screenshots: {tmp_path / 'page-mobile.png'} {tmp_path / 'page-desktop.png'}")


def test_page_says_not_one_of_the_species_it_knows(chromium: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    # A harmless species wins, but the threshold is under every score: the photo is unknown.
    model, _ = build_tiny_model(tmp_path / "model", favour=1, decision={"unknown_threshold": -1e9})
    photo = demo_photo(tmp_path / "snake.jpg")
    with running_server(model, tmp_path) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 412, "height": 915}).new_page()
            page.goto(f"{url}/")
            page.set_input_files("#file", str(photo))
            alert = page.locator('.alert[data-verdict="possibly_venomous"]')
            expect(alert.locator("h2")).to_have_text("Possibly venomous — treat it as venomous")
            expect(alert).to_contain_text("Looks like none of the 4 species this model knows.")
            expect(alert).to_contain_text("Not one of the 4 species this model knows")
            expect(alert).to_contain_text("Treat it as venomous")
            expect(page.locator('.alert[data-verdict="harmless"]')).to_have_count(0)
            # no region in this model's metadata: the page says so rather than guess
            scope = page.locator("#scope")
            expect(scope).to_contain_text("the region they come from is not stated")
            results = page.locator("#results li")  # the closest species are still listed
            expect(results).to_have_count(3)
            expect(results.first).to_contain_text("Indo-Chinese Rat Snake")
            page.screenshot(path=tmp_path / "page-unknown.png", full_page=True)
        finally:
            browser.close()


def test_docs_render_offline(chromium: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    # A harmless rat snake wins, confidently: the one verdict with no warning.
    model, _ = build_tiny_model(tmp_path / "model", data_source="folder", favour=1)
    photo = demo_photo(tmp_path / "snake.jpg")
    with running_server(model, tmp_path) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            blocked = block_non_local(context)
            page = context.new_page()

            page.goto(f"{url}/")  # a model of real photos: the page has no synthetic banner
            expect(page.locator("#species-count")).to_have_text("4")
            expect(page.locator("#synthetic-banner")).to_have_count(0)
            expect(page.locator("#model-info")).to_contain_text("trained on folder")
            page.set_input_files("#file", str(photo))
            verdict = page.locator('.alert[data-verdict="harmless"]')
            expect(verdict.locator("h2")).to_have_text("Harmless — still, do not handle it")
            expect(verdict).to_contain_text("Most likely the Indo-Chinese Rat Snake (")
            expect(verdict).to_contain_text("a harmless species.")
            expect(verdict).to_contain_text("Identifications from photos can be wrong")

            # Swagger UI: its script ran, fetched /openapi.json and listed the operations.
            page.goto(f"{url}/docs")
            operation = page.locator(".opblock-post .opblock-summary-path", has_text="/predict")
            expect(operation).to_be_visible()
            expect(page.locator(".opblock-get .opblock-summary-path")).to_have_text(
                ["/health", "/species"]  # in the order the app declares them
            )
            operation.click()  # expanding it shows the upload field the endpoint takes
            expect(page.locator(".opblock-post .opblock-section-request-body")).to_contain_text(
                "multipart/form-data"
            )
            page.screenshot(path=tmp_path / "docs-swagger.png", full_page=True)

        finally:
            browser.close()
    assert blocked == []
    print(f"screenshot: {tmp_path / 'docs-swagger.png'}")
