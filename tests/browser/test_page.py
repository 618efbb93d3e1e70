"""The chat page (GET /) in a real Chromium, against the real service on the echo model.

The echo model repeats the message word by word (`echo_word_seconds` apart), so a long message
is a reply that takes seconds: long enough to stop it, reload in the middle of it, or switch
away and back. Every page is also checked for script errors, and for nothing having run that a
message or a reply smuggled in.
"""

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, ViewportSize

from tests.browser.conftest import DESKTOP, PHONE
from tests.e2e.conftest import REPO_ROOT, Service, ServiceLauncher, openai_config
from tests.support.provider_stub import (
    ProviderStub,
    error_reply,
    openai_answering,
    openai_stream,
    openai_stream_error,
    running_stub,
    slow,
    streamed,
)
from tests.support.redis_server import RedisServer

SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
TOKEN = "page-test-token"
LONG = " ".join(f"word{n}" for n in range(120))  # about 6 s of reply at the default 0.05 s a word


def echo(message: str, earlier: int = 0) -> str:
    """What the echo model answers to message, `earlier` messages into a session."""
    return (
        "[echo: offline test model, no LLM provider configured] You said: "
        f"{message} ({earlier} earlier messages in this session)"
    )


def echo_config(**sections: dict[str, str]) -> dict[str, dict[str, str]]:
    config: dict[str, dict[str, str]] = {"redis": {"url": "memory://"}}
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config


Opener = Callable[..., Page]


@pytest.fixture
def open_chat(browser: Browser) -> Iterator[Opener]:
    """The chat page of a service in a fresh context (empty localStorage), once its script has
    shown what it keeps. Like the `open_page` fixture, any script error or console error fails
    the test, but for Chromium's own "Failed to load resource" line: it logs one for every
    answer of 4xx or 5xx, and answering those in words is what this page is for."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    def note(message: ConsoleMessage) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(f"console.error: {message.text}")

    def open_(service: Service, *, viewport: ViewportSize = DESKTOP, dark: bool = False) -> Page:
        context = browser.new_context(viewport=viewport, color_scheme="dark" if dark else "light")
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(f"pageerror: {error}"))
        page.on("console", note)
        page.goto(service.url)
        page.wait_for_selector("body[data-ready=true]")
        return page

    yield open_
    for context in contexts:
        context.close()
    assert errors == [], errors


def send(page: Page, message: str) -> None:
    page.fill("#message", message)
    page.press("#message", "Enter")


def replies(page: Page) -> Any:
    return page.locator("#messages article[data-role=assistant] .content")


def wait_for_reply(page: Page, count: int = 1, timeout: float = 20_000) -> str:
    """The text of the count-th reply once it has ended."""
    page.wait_for_function(
        """count => {
            const shown = document.querySelectorAll('#messages article[data-role=assistant]');
            return shown.length === count && shown[count - 1].dataset.streaming !== 'true'
                && document.body.dataset.streaming === 'false';
        }""",
        arg=count,
        timeout=timeout,
    )
    return str(replies(page).nth(count - 1).inner_text())


def wait_for_words(page: Page, words: int) -> None:
    """Until the reply streaming in shows at least `words` words."""
    page.wait_for_function(
        """words => {
            const reply = document.querySelector('article[data-streaming=true] .content');
            return reply && reply.textContent.split(' ').length >= words;
        }""",
        arg=words,
    )


def current_session(page: Page) -> str:
    return str(page.evaluate("localStorage.getItem('chat.current')"))


def stored(service: Service, session_id: str, token: str | None = None) -> list[tuple[str, str]]:
    with service.client(token) as http:
        body = service.expect(http.get(f"/chat/{session_id}"), 200)
    return [(m["role"], m["content"]) for m in body["messages"]]


def test_a_reply_streams_in_and_is_shown_with_its_model(
    service: Service, open_chat: Opener
) -> None:
    page = open_chat(service)
    page.fill("#message", "first line")
    page.press("#message", "Shift+Enter")
    page.type("#message", "second line")
    assert page.input_value("#message") == "first line\nsecond line"  # Shift+Enter: a new line
    page.press("#message", "Enter")

    wait_for_words(page, 5)
    assert page.is_visible("#stop")
    assert page.is_hidden("#send")
    assert page.evaluate("document.activeElement.id") == "message"
    text = wait_for_reply(page)
    assert text == echo("first line\nsecond line")
    assert page.input_value("#message") == ""
    assert page.evaluate("document.activeElement.id") == "message"
    meta = page.inner_text("#messages article[data-role=assistant] .meta")
    assert re.fullmatch(r"primary · \d+ in, \d+ out tokens \(estimated\)", meta), meta
    page.wait_for_function(
        "() => document.getElementById('announcer').textContent.startsWith('Reply:')"
    )

    session_id = current_session(page)
    assert stored(service, session_id) == [
        ("user", "first line\nsecond line"),
        ("assistant", echo("first line\nsecond line")),
    ]
    listed = page.locator("#conversations li")
    assert listed.count() == 1
    assert listed.first.get_attribute("data-session-id") == session_id
    assert listed.first.inner_text().startswith("first line second line")


def test_stop_ends_the_reply_with_what_was_shown(service: Service, open_chat: Opener) -> None:
    page = open_chat(service)
    send(page, LONG)
    wait_for_words(page, 20)
    page.click("#stop")
    text = wait_for_reply(page)
    article = page.locator("#messages article[data-role=assistant]")
    assert article.get_attribute("data-stopped") == "true"
    assert "stopped" in article.locator(".meta").inner_text()
    assert len(text) < len(echo(LONG))
    # What was shown is what was stored (the text shown, trailing space trimmed by the browser).
    [(_, question), (_, answer)] = stored(service, current_session(page))
    assert (question, answer.rstrip()) == (LONG, text)
    assert page.is_visible("#send")
    assert page.is_hidden("#stop")


def test_a_reload_mid_reply_goes_on_where_it_was_and_shows_it_once(
    service: Service, open_chat: Opener
) -> None:
    page = open_chat(service)
    send(page, LONG)
    wait_for_words(page, 30)
    session_id = current_session(page)
    reattached: list[dict[str, str]] = []
    page.on(
        "request",
        lambda request: (
            reattached.append(request.headers)
            if request.url.endswith(f"/chat/{session_id}/stream")
            else None
        ),
    )
    page.reload()
    page.wait_for_selector("body[data-ready=true]")

    # Straight after the reload the part already seen is back, and the rest follows.
    assert len(replies(page).first.inner_text()) > 100
    text = wait_for_reply(page)
    assert text == echo(LONG)
    assert page.locator("#messages article").count() == 2
    assert len(reattached) == 1
    assert reattached[0].get("last-event-id"), reattached
    assert stored(service, session_id) == [("user", LONG), ("assistant", echo(LONG))]

    # And once it is stored, a reload shows the stored history, once.
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator("#messages article").count() == 2
    assert replies(page).first.inner_text() == echo(LONG)


def test_conversations_are_listed_switched_started_and_deleted(
    service: Service, open_chat: Opener
) -> None:
    page = open_chat(service)
    send(page, "the first conversation")
    wait_for_reply(page)
    first = current_session(page)

    page.click("#new")
    assert page.locator("#messages article").count() == 0
    send(page, LONG)
    wait_for_words(page, 10)
    second = current_session(page)
    assert second != first

    # Away mid-reply and back: the reply went on in the service, and is shown whole, once.
    page.click(f"#conversations li[data-session-id='{first}'] .open")
    assert wait_for_reply(page) == echo("the first conversation")
    page.click(f"#conversations li[data-session-id='{second}'] .open")
    assert wait_for_reply(page) == echo(LONG)
    assert page.locator("#messages article").count() == 2
    assert stored(service, second) == [("user", LONG), ("assistant", echo(LONG))]

    titles = page.locator("#conversations li .open").all_inner_texts()
    assert [t.split(" ")[0] for t in titles] == ["word0", "the"]  # the newest first

    page.click(f"#conversations li[data-session-id='{second}'] .delete")
    page.wait_for_function("() => document.querySelectorAll('#conversations li').length === 1")
    assert page.locator("#messages article").count() == 0  # back to a new conversation
    with service.client() as http:
        assert http.get(f"/chat/{second}").status_code == 404
        assert http.get(f"/chat/{first}").status_code == 200
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator("#conversations li").count() == 1


def test_a_conversation_deleted_mid_reply_stays_deleted(
    service: Service, open_chat: Opener
) -> None:
    page = open_chat(service)
    send(page, LONG)
    wait_for_words(page, 10)
    session_id = current_session(page)
    page.click(f"#conversations li[data-session-id='{session_id}'] .delete")
    page.wait_for_function("() => document.querySelectorAll('#conversations li').length === 0")
    assert page.locator("#messages article").count() == 0
    with service.client() as http:
        # Whatever of the reply is still running (or kept) is read to its end, when it would
        # be stored: the page stopped it and waited for that before deleting.
        http.get(f"/chat/{session_id}/stream")
        assert http.get(f"/chat/{session_id}").status_code == 404


def test_a_conversation_the_service_no_longer_has_is_shown_as_expired(
    service: Service, open_chat: Opener
) -> None:
    page = open_chat(service)
    send(page, "soon gone")
    wait_for_reply(page)
    session_id = current_session(page)
    with service.client() as http:
        assert http.delete(f"/chat/{session_id}").status_code == 204

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_selector("#notice:not([hidden])")
    assert "expired" in page.inner_text("#notice")
    assert page.get_attribute(f"li[data-session-id='{session_id}']", "data-expired") == "true"
    assert page.is_hidden("#error")


def test_the_page_asks_for_the_token_and_again_when_it_is_refused(
    module_launch: ServiceLauncher, open_chat: Opener
) -> None:
    service = module_launch(echo_config(auth={"tokens": TOKEN}))
    page = open_chat(service)
    send(page, "hello with a token")
    page.wait_for_selector("#auth[open]")
    assert "needs a token" in page.inner_text("#auth-reason")
    page.fill("#token", "wrong")
    page.press("#token", "Enter")
    page.wait_for_function(
        "() => document.getElementById('auth-reason').textContent.includes('refused')"
    )
    assert page.is_visible("#auth")
    page.fill("#token", TOKEN)
    page.click("#auth-submit")
    assert wait_for_reply(page) == echo("hello with a token")
    assert page.evaluate("localStorage.getItem('chat.token')") == TOKEN

    # Kept: a reload reads the history with it, without asking.
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert replies(page).first.inner_text() == echo("hello with a token")
    assert not page.is_visible("#auth")
    assert stored(service, current_session(page), TOKEN)[0] == ("user", "hello with a token")


def error_shown(page: Page, status: str) -> str:
    page.wait_for_selector(f"#error[data-status='{status}']")
    assert page.locator("#messages article").count() == 0  # nothing of it was stored
    return str(page.inner_text("#error-text"))


def test_too_many_requests_says_how_long_to_wait(
    module_launch: ServiceLauncher, open_chat: Opener
) -> None:
    service = module_launch(echo_config(auth={"rate_limit": "1/minute"}))
    page = open_chat(service)
    send(page, "the one allowed")
    wait_for_reply(page)
    page.click("#new")
    send(page, "one too many")
    text = error_shown(page, "429")
    assert re.fullmatch(r"Too many requests: try again in \d+ s\.", text), text
    assert page.is_hidden("#retry")
    assert page.input_value("#message") == "one too many"  # given back, to send later


@pytest.fixture(scope="module")
def stub() -> Iterator[ProviderStub]:
    with running_stub(openai_answering("here I am")) as provider:
        yield provider


@pytest.mark.parametrize(
    ("failure", "status", "words", "answered"),
    [
        (error_reply(500), "502", "The model failed to answer.", 502),
        (slow(error_reply(500), 5), "504", "The model timed out.", 504),
        # Failing after its first words: the error event ends the reply, and what was shown
        # of it goes, as nothing of it is stored.
        (
            streamed(
                [openai_stream("half ", "a reply ", end=False), openai_stream_error("broke")],
                pause=0.5,
            ),
            "502",
            "The model failed to answer.",
            200,
        ),
    ],
    ids=["failed", "timed-out", "failed-mid-reply"],
)
def test_a_model_that_fails_or_times_out_is_said_so_with_a_retry(
    module_launch: ServiceLauncher,
    stub: ProviderStub,
    open_chat: Opener,
    failure: Any,
    status: str,
    words: str,
    answered: int,
) -> None:
    llm = openai_config(stub, timeout_seconds="1")
    service = module_launch({"redis": {"url": "memory://"}, "llm": llm})
    stub.reset()
    stub.plan(failure)
    page = open_chat(service)
    posted: list[int] = []
    page.on("response", lambda r: posted.append(r.status) if r.url.endswith("/stream") else None)
    send(page, "are you there?")
    assert error_shown(page, status) == words
    assert posted == [answered]
    assert page.is_visible("#retry")

    page.click("#retry")  # the stand-in's default answer from here on
    assert wait_for_reply(page) == "here I am"
    assert page.is_hidden("#error")


def test_storage_unavailable_is_said_so(
    module_launch: ServiceLauncher, open_chat: Opener, tmp_path: Path
) -> None:
    with RedisServer(tmp_path / "redis") as redis:
        service = module_launch(echo_config(redis={"url": redis.url}))
        page = open_chat(service)
        redis.stop()
        send(page, "anyone storing?")
        assert error_shown(page, "503") == (
            "The service's storage is unavailable; try again in a moment."
        )


def test_a_service_that_is_gone_is_unreachable(
    module_launch: ServiceLauncher, open_chat: Opener
) -> None:
    service = module_launch(echo_config())
    page = open_chat(service)
    service.stop()
    send(page, "hello?")
    assert error_shown(page, "unreachable") == "The service is unreachable. Is it running?"


HOSTILE = (
    "<img src=x onerror=window.__pwned=1> <script>window.__pwned=2</script> "
    '<a href="javascript:window.__pwned=3">a</a> [click](javascript:window.__pwned=4) '
    "**<b onmouseover=window.__pwned=5>bold</b>** `<svg onload=window.__pwned=6>` "
    "[ok](https://example.org/?q=<i>)"
)


def test_html_in_a_message_or_a_reply_is_shown_never_run(
    service: Service, open_chat: Opener
) -> None:
    page = open_chat(service)
    send(page, HOSTILE + "\n\n```\n</code></pre><script>window.__pwned=7</script>\n```")
    wait_for_reply(page)

    def nothing_ran() -> None:
        assert page.evaluate("window.__pwned") is None
        # Not in the messages, nor in the list that titles the conversation by it.
        assert page.locator("body img, body script, body svg, body b, body iframe").count() == 0
        assert page.locator("script").count() == 1  # the page's own module
        hrefs = page.locator("#messages a").evaluate_all("links => links.map(a => a.href)")
        assert hrefs == ["https://example.org/?q=%3Ci%3E"], hrefs  # only the http(s) link
        assert "<img src=x onerror=window.__pwned=1>" in page.inner_text("#messages")
        page.locator("#messages").hover()

    nothing_ran()
    # Loaded back from the history, the same text is just as inert.
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator("#messages article").count() == 2
    nothing_ran()
    assert page.locator("#messages pre code").inner_text() == (
        "</code></pre><script>window.__pwned=7</script>"
    )


MARKDOWN = (
    "Markdown, **bold** and *italic*, `inline code` and a [link](https://example.org):\n\n"
    "1. a numbered list\n2. of two items\n\n"
    "```python\nprint('a code block')\n```"
)


def test_markdown_in_a_reply_is_rendered(service: Service, open_chat: Opener) -> None:
    page = open_chat(service)
    send(page, MARKDOWN)
    wait_for_reply(page)
    reply = replies(page).first
    assert reply.locator("strong").inner_text() == "bold"
    assert reply.locator("em").inner_text() == "italic"
    assert reply.locator("p code").inner_text() == "inline code"
    assert reply.locator("a").get_attribute("href") == "https://example.org/"
    assert reply.locator("ol li").all_inner_texts() == ["a numbered list", "of two items"]
    assert reply.locator("pre code").inner_text() == "print('a code block')"


def test_a_phone_width_page_has_no_sideways_scroll(service: Service, open_chat: Opener) -> None:
    page = open_chat(service, viewport=PHONE)
    send(page, "a " + "x" * 300 + "\n\n```\n" + "y" * 300 + "\n```")
    wait_for_reply(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.is_hidden("#sidebar")
    page.click("#menu")
    assert page.is_visible("#sidebar")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.click("#conversations li .open")  # choosing one closes the list
    assert page.is_hidden("#sidebar")


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_screenshots_for_the_readme(service: Service, open_chat: Opener, dark: bool) -> None:
    """docs/screenshots/chat-{light,dark}-{desktop,phone}.png, as shown in the README."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    scheme = "dark" if dark else "light"
    for device, viewport in {"desktop": {"width": 1100, "height": 720}, "phone": PHONE}.items():
        page = open_chat(service, viewport=viewport, dark=dark)
        send(page, "What can you do?")
        wait_for_reply(page)
        send(page, MARKDOWN)
        wait_for_reply(page, 2)
        page.evaluate("document.getElementById('message').blur()")
        page.screenshot(path=str(SCREENSHOTS / f"chat-{scheme}-{device}.png"))
