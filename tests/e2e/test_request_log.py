"""The request id and the request line, on the service as a process: a client's X-Request-ID
followed from its request through the service's log lines to the provider's received headers;
a made id otherwise; refusals and unknown paths logged too; the JSON format, line by line; a
stream's line written at its end."""

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Service, ServiceLauncher, openai_config, wait_until
from tests.support.provider_stub import (
    ProviderStub,
    error_reply,
    json_reply,
    openai_body,
    openai_stream,
    streamed,
)

ALICE = "tok-log-alice-5e1"
LIMITED = "tok-log-limited-0c7"
RATE = 5  # a minute, per token: LIMITED goes over it
MADE = re.compile(r"[0-9a-f]{32}")
RETRY_NOW = "0"  # the provider's Retry-After: the retry is not waited for


def _config(stub: ProviderStub, **log: str) -> dict[str, dict[str, str]]:
    return {
        "auth": {"tokens": f"{ALICE},{LIMITED}", "rate_limit": f"{RATE}/minute"},
        "redis": {"url": "memory://"},
        "llm": openai_config(stub, max_retries="1"),
        "log": log,
    }


@pytest.fixture(scope="module")
def text_service(module_launch: ServiceLauncher, module_stub: ProviderStub) -> Service:
    return module_launch(_config(module_stub))  # the format as shipped


@pytest.fixture(scope="module")
def json_service(module_launch: ServiceLauncher, module_stub: ProviderStub) -> Service:
    return module_launch(_config(module_stub, format="json"))


@pytest.fixture
def stub(module_stub: ProviderStub) -> Iterator[ProviderStub]:
    module_stub.reset()
    yield module_stub
    module_stub.reset()


def _lines_of(service: Service, request_id: str) -> list[str]:
    return [line for line in service.stderr().splitlines() if f" [{request_id}]: " in line]


def _request_line(service: Service, request_id: str) -> str:
    """The request's line, once written (after the client has its response)."""

    def line() -> list[str]:
        return [x for x in _lines_of(service, request_id) if x.startswith("INFO chat.request ")]

    wait_until(lambda: bool(line()), 5.0, f"the request line of {request_id}")
    [written] = line()
    return written


def test_a_client_request_id_goes_to_the_provider_and_into_every_line_about_the_request(
    text_service: Service, stub: ProviderStub
) -> None:
    stub.plan(
        error_reply(500, retry_after=RETRY_NOW),
        json_reply(openai_body("fine", usage=(7, 3))),
    )
    with text_service.client(ALICE) as alice:
        response = alice.post(
            "/chat/",
            json={"session_id": "followed", "message": "hello"},
            headers={"X-Request-ID": "trace-me:1"},
        )
    text_service.expect(response, 200)

    assert response.headers["x-request-id"] == "trace-me:1"
    assert [r.headers.get("x-request-id") for r in stub.requests] == ["trace-me:1"] * 2
    line = _request_line(text_service, "trace-me:1")
    assert re.fullmatch(
        r"INFO chat\.request \[trace-me:1\]: POST /chat 200 ok [\d.]+ms "
        r"session=followed model=primary tokens=7/3",
        line,
    ), line
    [retry] = [x for x in _lines_of(text_service, "trace-me:1") if "retry 1 of 1" in x]
    assert retry.startswith("WARNING adapters.llm.http_call [trace-me:1]: "), retry
    assert "hello" not in "\n".join(_lines_of(text_service, "trace-me:1"))  # no chat text


@pytest.mark.parametrize(
    "sent",
    [None, "two words", "x" * 129, 'quote"d', "caf\u00e9"],
    ids=["none", "space", "too-long", "quote", "not-ascii"],
)
def test_without_a_sane_id_the_service_makes_one(text_service: Service, sent: str | None) -> None:
    headers = {} if sent is None else {"X-Request-ID": sent.encode()}
    with text_service.client(ALICE) as alice:
        response = alice.get("/health", headers=headers)
    text_service.expect(response, 200)

    made = response.headers["x-request-id"]
    assert MADE.fullmatch(made), made
    assert " GET /health 200 ok " in _request_line(text_service, made)
    if sent is not None:
        assert sent not in text_service.stderr()  # neither echoed nor logged


def test_refusals_and_unknown_paths_have_their_lines_and_ids(text_service: Service) -> None:
    def ask(http: httpx.Client, path: str, request_id: str) -> httpx.Response:
        response = http.get(path, headers={"X-Request-ID": request_id})
        assert response.headers["x-request-id"] == request_id, response.headers
        return response

    with text_service.client() as anyone, text_service.client(LIMITED) as limited:
        assert ask(anyone, "/chat/s", "no-token").status_code == 401
        assert ask(anyone, "/no/such/path", "nowhere").status_code == 404
        statuses = [
            ask(limited, "/chat/never", f"limited-{n}").status_code for n in range(RATE + 1)
        ]
    assert statuses == [404] * RATE + [429]

    expected = {
        "no-token": "GET /chat/{session_id} 401 unauthorized ",
        "nowhere": "GET - 404 not_found ",
        "limited-0": "GET /chat/{session_id} 404 not_found ",
        f"limited-{RATE}": "GET /chat/{session_id} 429 rate_limited ",
    }
    for request_id, said in expected.items():
        assert f"[{request_id}]: {said}" in _request_line(text_service, request_id)


def _json_lines(service: Service) -> list[dict[str, Any]]:
    return [json.loads(line) for line in service.stderr().splitlines()]


def test_json_lines_and_a_streamed_request_logged_at_its_end(
    json_service: Service, stub: ProviderStub
) -> None:
    first = openai_stream("Once", end=False)
    then = openai_stream(" upon", " a time", start=False, usage=(11, 3))
    stub.plan(error_reply(503, retry_after=RETRY_NOW), streamed([first, then], pause=0.5))
    body = {"session_id": "streamed", "message": "a story"}

    def mine() -> list[dict[str, Any]]:
        return [x for x in _json_lines(json_service) if x["request_id"] == "stream-1"]

    with (
        json_service.client(ALICE) as alice,
        alice.stream(
            "POST", "/chat/stream", json=body, headers={"X-Request-ID": "stream-1"}
        ) as response,
    ):
        assert response.headers["x-request-id"] == "stream-1"
        events = response.iter_lines()
        assert next(line for line in events if line.startswith("event: delta"))
        assert not [x for x in mine() if x["logger"] == "chat.request"]  # not yet
        assert "event: done" in list(events)

    wait_until(lambda: any(x["logger"] == "chat.request" for x in mine()), 5.0, "its line")
    [line] = [x for x in mine() if x["logger"] == "chat.request"]
    assert {k: line[k] for k in line if k not in ("time", "message", "duration_ms")} == {
        "level": "info",
        "logger": "chat.request",
        "request_id": "stream-1",
        "method": "POST",
        "route": "/chat/stream",
        "status": 200,
        "session_id": "streamed",
        "model": "primary",
        "tokens_in": 11,
        "tokens_out": 3,
        "outcome": "ok",
    }
    assert line["duration_ms"] >= 500  # the pause inside the stream
    # The provider was called from the reply's own task: its retry and headers carry the id.
    assert [r.headers.get("x-request-id") for r in stub.requests] == ["stream-1"] * 2
    [retry] = [x for x in mine() if x["level"] == "warning"]
    assert retry["logger"] == "adapters.llm.http_call"
    assert "retry 1 of 1" in retry["message"]
    # Every line is one JSON object with the same keys, inside a request or not.
    for entry in _json_lines(json_service):
        assert entry.keys() >= {"time", "level", "logger", "message", "request_id"}, entry
    assert "a story" not in json_service.stderr()
