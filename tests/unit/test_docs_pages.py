"""What a browser gets: the chat page and the API docs, complete from the service alone.

Every script, stylesheet and image the docs pages name must come from this service (so they
render with no internet), and none of it may need the bearer token that guards the chat routes.
"""

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from entrypoints.asgi import create_app
from entrypoints.config import AuthSettings, RedisSettings, Settings

Client = AsyncTestClient[Any]

# Where a CSP may let the page's own requests go: nowhere but this service (and inline code).
_ON_SERVICE_SOURCES = {"'self'", "'unsafe-inline'", "data:", "blob:"}


class _Page(HTMLParser):
    """The URLs a browser would load or follow from a page, and its Content-Security-Policy."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.loads: list[str] = []
        self.links: list[str] = []
        self.policy = ""
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        if tag in ("script", "img") and "src" in found:
            self.loads.append(found["src"])
        elif tag == "link" and "href" in found:
            self.loads.append(found["href"])
        elif tag == "a" and "href" in found:
            self.links.append(found["href"])
        elif tag == "meta" and found.get("http-equiv", "").lower() == "content-security-policy":
            self.policy = found["content"]


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    """Auth on, as the pages must not need it; the in-memory store, as /ready must answer."""
    config = Settings(
        redis=RedisSettings(url="memory://"), auth=AuthSettings(tokens=("docs-test-token",))
    )
    async with AsyncTestClient(create_app(config)) as client:
        assert (await client.get("/chat/any")).status_code == 401  # auth really is on
        yield client


@pytest.mark.parametrize(
    ("page", "started_by"),
    [("/schema/swagger", "SwaggerUIBundle"), ("/schema/redoc", "Redoc"), ("/schema", "Redoc")],
)
async def test_docs_page_loads_everything_from_the_service(
    client: Client, page: str, started_by: str
) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = _Page(response.text)

    # Nothing off the service: no absolute or protocol-relative URL anywhere, inline
    # configuration included, and every load a same-origin path (or inline data).
    assert re.findall(r"[a-z][a-z0-9+.-]*://|(?<![:/\w])//[\w.-]", response.text) == []
    assert html.loads, "a docs page with no script is blank"
    for url in html.loads:
        assert url.startswith(("/", "data:")), url
        assert not url.startswith("//"), url

    scripts = b""
    for url in (u for u in html.loads if u.startswith("/")):
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url
        kind = asset.headers["content-type"]
        if url.endswith(".js"):
            assert kind.split(";")[0] in ("text/javascript", "application/javascript"), url
            scripts += asset.content
        elif url.endswith(".css"):
            assert kind.startswith("text/css"), url
    assert started_by.encode() in scripts  # the served bundle is what the page calls

    # What the bundles reach for themselves (ReDoc's logo on a CDN, Swagger's validator) is
    # held back by the browser: the policy names no host but this one.
    assert "default-src 'self'" in html.policy
    for directive in filter(None, (d.strip() for d in html.policy.split(";"))):
        _, *sources = directive.split()
        assert set(sources) <= _ON_SERVICE_SOURCES, directive


async def test_chat_page_comes_whole_from_the_service_without_a_token(client: Client) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-cache"  # never old scripts after an update
    assert "<title>Chat service</title>" in response.text
    assert re.findall(r"[a-z][a-z0-9+.-]*://|(?<![:/\w])//[\w.-]", response.text) == []
    page = _Page(response.text)

    # Its scripts, its stylesheet and every module they import: from here, no token needed.
    pending = [url for url in page.loads if url.startswith("/")]
    fetched: set[str] = set()
    while pending:
        url = pending.pop()
        if url in fetched:
            continue
        fetched.add(url)
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["cache-control"] == "no-cache", url
        kind = asset.headers["content-type"].split(";")[0]
        if url.endswith(".js"):
            assert kind == "text/javascript", url  # a module script needs a JavaScript type
            folder = url.rsplit("/", 1)[0]
            imports = re.findall(r'^import .* from "\./([\w-]+\.js)";$', asset.text, re.M)
            pending += [f"{folder}/{name}" for name in imports]
        else:
            assert kind == "text/css", url
    assert {"/page/app.js", "/page/api.js", "/page/markdown.js", "/page/style.css"} <= fetched

    # No inline script may run: whatever a message smuggles in, the browser refuses to run it.
    assert "default-src 'self'" in page.policy
    assert "script-src 'self';" in page.policy
    assert "unsafe" not in page.policy

    # The API docs stay one click away.
    for expected in (
        "/schema/swagger",
        "/schema/redoc",
        "/schema/openapi.json",
        "/health",
        "/ready",
    ):
        assert expected in page.links
    for link in page.links:
        assert (await client.get(link)).status_code == 200, link


async def test_pages_and_assets_are_not_api_operations(client: Client) -> None:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.oai.openapi+json"
    paths = set(response.json()["paths"])
    assert "/" not in paths
    assert not [p for p in paths if p.startswith(("/static", "/schema", "/page"))]
    assert {"/chat", "/chat/{session_id}", "/health", "/ready"} <= paths
