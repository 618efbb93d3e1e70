"""A real browser for the page tests: Debian's Chromium driven by Playwright's sync API.

Playwright's own browser download cannot reach the network here, so it launches the `chromium`
that `scripts/install-test-tools` puts on PATH (through `executable_path`). The service is the one
tests/e2e starts (`python -m entrypoints.cli serve` on a free port), on the echo model.

Fixtures:
- `browser`: one Chromium for the tests in tests/browser (package scope, see the fixture).
- `viewport`, `color_scheme`: what `page` opens with; override either in a module, or
  parametrize them indirectly (`@pytest.mark.parametrize("viewport", [PHONE], indirect=True)`).
- `page`: a new context per test (empty localStorage, cookies, cache), failing the test on any
  script error or console error; `open_page(url, viewport=..., color_scheme=...)` for more pages
  (a second tab, a second "browser") in one test.
- `service`: the service shared by a module (echo model, a throwaway redis-server); `launch`
  and `module_launch` (from tests/e2e) start others with their own config.
"""

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, cast

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize, sync_playwright

from tests.e2e.conftest import Service, ServiceLauncher, launch, module_launch, module_redis

__all__ = ["launch", "module_launch", "module_redis"]  # fixtures the page tests use too

HERE = Path(__file__).parent

# Exactly these: without the networking flags Chromium keeps dialling Google's hosts, which this
# closed network refuses; --no-sandbox because tests run as root here and in CI.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 375, "height": 740}

ColorScheme = Literal["light", "dark"]

PageOpener = Callable[..., Page]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`-m browser` runs these alone (tests/conftest.py marks the other layers by folder).
    They are also `slow`: a real browser's minute stays out of the inner loop."""
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker("browser")
            item.add_marker("slow")


def chromium_path() -> str | None:
    found = shutil.which("chromium")
    return str(Path(found).resolve()) if found else None


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    path = chromium_path()
    if path is None:
        pytest.fail("chromium is not on PATH: scripts/install-test-tools installs Debian's")
    # One Chromium for tests/browser, stopped when the package is done: while Playwright's sync
    # API is started its event loop counts as running in this thread, and pytest-asyncio's
    # tests in later folders fail with "cannot be called from a running event loop".
    # launch() gives Chromium a fresh temporary profile of its own (it refuses --user-data-dir);
    # each test then gets a new context in this one browser, so nothing carries over.
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def viewport(request: pytest.FixtureRequest) -> ViewportSize:
    return cast(ViewportSize, getattr(request, "param", DESKTOP))


@pytest.fixture
def color_scheme(request: pytest.FixtureRequest) -> ColorScheme:
    """What `prefers-color-scheme` answers in the page: "light" or "dark"."""
    return cast(ColorScheme, getattr(request, "param", "light"))


@pytest.fixture
def open_page(
    browser: Browser, viewport: ViewportSize, color_scheme: ColorScheme
) -> Iterator[PageOpener]:
    """Open a URL in a fresh context; script and console errors fail the test at teardown."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    def open_(
        url: str | None = None,
        *,
        viewport: ViewportSize = viewport,
        color_scheme: ColorScheme = color_scheme,
    ) -> Page:
        context = browser.new_context(viewport=viewport, color_scheme=color_scheme)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(f"pageerror: {error}"))
        page.on(
            "console",
            lambda message: (
                errors.append(f"console.error: {message.text}") if message.type == "error" else None
            ),
        )
        if url is not None:
            page.goto(url)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert errors == [], errors


@pytest.fixture
def page(open_page: PageOpener) -> Page:
    """A blank page in a new context; `page.goto(service.url)` to start."""
    return open_page()


@pytest.fixture(scope="module")
def service(module_launch: ServiceLauncher) -> Service:
    """The service on its embedded defaults (the echo model, the embedded Redis), as a
    newcomer starts it, shared by a module."""
    return module_launch({})
