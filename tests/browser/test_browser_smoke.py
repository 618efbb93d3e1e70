"""The browser harness itself works: Chromium starts, reaches the service, renders and
screenshots, with no script or console error (the `page` fixture fails the test on one)."""

from pathlib import Path

import pytest
from playwright.sync_api import Page

from tests.browser.conftest import PHONE
from tests.e2e.conftest import Service


def test_the_browser_reaches_the_service_and_renders_its_home_page(
    page: Page, service: Service, tmp_path: Path
) -> None:
    health = page.request.get(f"{service.url}/health")
    assert health.ok, health.text()

    response = page.goto(service.url)
    assert response is not None
    assert response.status == 200
    assert "text/html" in response.headers["content-type"]
    page.wait_for_load_state("networkidle")
    assert page.evaluate("document.body.innerText.trim().length") > 0

    shot = page.screenshot(path=tmp_path / "home.png", full_page=True)
    assert shot.startswith(b"\x89PNG")


@pytest.mark.parametrize("viewport", [PHONE], indirect=True)
@pytest.mark.parametrize("color_scheme", ["dark"], indirect=True)
def test_viewport_and_color_scheme_reach_the_page(page: Page) -> None:
    page.set_content("<p>x</p>")
    assert page.evaluate("innerWidth") == PHONE["width"]
    assert page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches") is True
