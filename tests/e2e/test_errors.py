"""Every error status over HTTP, each a JSON "detail", and no failure changes stored history."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Service, ServiceLauncher, openai_config
from tests.support.provider_stub import (
    ProviderStub,
    error_reply,
    json_reply,
    openai_body,
)
from tests.support.redis_server import RedisServer

ALICE, BOB = "tok-alice-e2e", "tok-bob-e2e"
MAX_MESSAGE_CHARS = 2000
TIMEOUT_SECONDS = 1.0
MAX_RETRIES = 1
ONE_MIB = 1024 * 1024
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def service(
    module_launch: ServiceLauncher, module_stub: ProviderStub, module_redis: RedisServer
) -> Service:
    return module_launch(
        {
            "auth": {"tokens": f"{ALICE}, {BOB}"},
            "redis": {"url": module_redis.url},
            "history": {"max_message_chars": str(MAX_MESSAGE_CHARS)},
            "llm": openai_config(
                module_stub,
                timeout_seconds=str(TIMEOUT_SECONDS),
                max_retries=str(MAX_RETRIES),
            ),
        }
    )


@pytest.fixture
def alice(service: Service) -> Iterator[httpx.Client]:
    with service.client(ALICE) as client:
        yield client


def _history(service: Service, http: httpx.Client, session_id: str) -> Any:
    return service.expect(http.get(f"/chat/{session_id}"), 200)


def _session(service: Service, http: httpx.Client, session_id: str) -> Any:
    """A session with one stored exchange; returns its history."""
    body = {"session_id": session_id, "message": f"first words in {session_id}"}
    service.expect(http.post("/chat/", json=body), 200)
    return _history(service, http, session_id)


def _detail(service: Service, response: httpx.Response, status: int) -> str:
    body = service.expect(response, status)
    assert set(body) >= {"detail"}, body
    detail = body["detail"]
    assert isinstance(detail, str)
    assert detail.strip()
    return detail


# --- 400 -----------------------------------------------------------------------------------

SID = "bad-requests"  # the session every bad request names, or could touch


@pytest.fixture(scope="module")
def bad_requests_history(service: Service) -> Any:
    with service.client(ALICE) as http:
        return _session(service, http, SID)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        pytest.param({"session_id": "a/b", "message": "hi"}, ["session_id"], id="id-with-slash"),
        pytest.param(
            {"session_id": "x" * 129, "message": "hi"}, ["session_id", "128"], id="id-129"
        ),
        pytest.param({"session_id": "é", "message": "hi"}, ["session_id"], id="id-non-ascii"),
        pytest.param({"session_id": 5, "message": "hi"}, ["session_id"], id="id-not-string"),
        pytest.param({"session_id": SID, "message": ""}, ["message", "empty"], id="message-empty"),
        pytest.param(
            {"session_id": SID, "message": " \n\t"}, ["message", "empty"], id="message-blank"
        ),
        pytest.param({"session_id": SID, "message": 42}, ["message", "str"], id="message-int"),
        pytest.param({"session_id": SID, "message": None}, ["message"], id="message-null"),
        pytest.param({"session_id": SID, "message": ["hi"]}, ["message"], id="message-list"),
        pytest.param({"session_id": SID}, ["message", "missing"], id="message-missing"),
        pytest.param(
            {"session_id": SID, "message": "x" * (MAX_MESSAGE_CHARS + 1)},
            ["message", str(MAX_MESSAGE_CHARS)],
            id="message-too-long",
        ),
        pytest.param(
            b'{"session_id": "bad-requests", "message": "hi"', ["json"], id="truncated-json"
        ),
        pytest.param(b"message=hi", ["json"], id="not-json"),
        pytest.param(b'["hi"]', ["object"], id="array-body"),
    ],
)
def test_a_bad_request_gets_400_saying_what_is_wrong_and_changes_nothing(
    service: Service, alice: httpx.Client, bad_requests_history: Any, body: object, words: list[str]
) -> None:
    if isinstance(body, bytes):
        response = alice.post("/chat/", content=body, headers=JSON)
    else:
        response = alice.post("/chat/", json=body)

    detail = _detail(service, response, 400).lower()
    assert all(word.lower() in detail for word in words), detail
    assert _history(service, alice, SID) == bad_requests_history


def test_an_empty_body_gets_400_saying_the_body_is_missing(
    service: Service, alice: httpx.Client
) -> None:
    response = alice.post("/chat/", content=b"", headers=JSON)
    detail = _detail(service, response, 400).lower()
    assert any(word in detail for word in ("empty", "missing", "required")), detail


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"session_id": "bad-requests", "message": "caf\xe9"}', id="not-utf-8"),
        pytest.param(
            b'{"session_id": "bad-requests", "message": "hi", "x": '
            + b"[" * 100_000
            + b"]" * 100_000
            + b"}",
            id="nested-100000-deep",
        ),
    ],
)
def test_a_body_the_json_decoder_cannot_read_gets_400(
    service: Service, alice: httpx.Client, bad_requests_history: Any, body: bytes
) -> None:
    response = alice.post("/chat/", content=body, headers=JSON)
    assert "json" in _detail(service, response, 400).lower()
    assert _history(service, alice, SID) == bad_requests_history


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize("session_id", ["bad%20id%21", "%C3%A9", "x" * 129, "%20"])
def test_a_bad_session_id_in_the_path_gets_400(
    service: Service, alice: httpx.Client, method: str, session_id: str
) -> None:
    detail = _detail(service, alice.request(method, f"/chat/{session_id}"), 400)
    assert "session_id" in detail


# --- 401 and token isolation ---------------------------------------------------------------

NO_TOKEN: dict[str, str] = {}


@pytest.fixture(scope="module")
def guarded_history(service: Service) -> Any:
    with service.client(ALICE) as http:
        return _session(service, http, "guarded")


REQUESTS = [
    ("POST", "/chat/", {"session_id": "guarded", "message": "hi"}),
    ("POST", "/chat", {"message": "hi"}),
    ("GET", "/chat/guarded", None),
    ("DELETE", "/chat/guarded", None),
]


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer nope", f"Bearer {ALICE}x", f"Basic {ALICE}", "Bearer", ALICE],
    ids=["absent", "wrong", "prefix-of-valid", "basic-scheme", "empty-bearer", "no-scheme"],
)
@pytest.mark.parametrize(("method", "path", "body"), REQUESTS, ids=lambda v: str(v)[:12])
def test_chat_routes_need_a_valid_bearer_token(
    service: Service,
    alice: httpx.Client,
    authorization: str | None,
    method: str,
    path: str,
    body: dict[str, str] | None,
    guarded_history: Any,
) -> None:
    headers = {"authorization": authorization} if authorization else NO_TOKEN
    with service.client() as anonymous:
        response = anonymous.request(method, path, json=body, headers=headers)
    detail = _detail(service, response, 401)
    assert response.headers["www-authenticate"].split()[0].lower() == "bearer"
    assert "token" in detail.lower()
    assert _history(service, alice, "guarded") == guarded_history


def test_a_bad_token_with_an_oversized_or_malformed_body_still_gets_401(
    service: Service,
) -> None:
    with service.client("nope") as http:
        oversized = http.post("/chat/", content=b"x" * (ONE_MIB + 10))
        malformed = http.post("/chat/", content=b"{", headers=JSON)
    assert oversized.status_code == 401
    assert malformed.status_code == 401


@pytest.mark.parametrize("path", ["/health", "/ready", "/schema/openapi.json"])
def test_operations_routes_need_no_token(service: Service, path: str) -> None:
    with service.client() as anonymous:
        body = service.expect(anonymous.get(path), 200)
    if path != "/schema/openapi.json":
        assert body["status"] == "ok"


def test_a_token_cannot_see_change_or_extend_another_tokens_session(
    service: Service, module_stub: ProviderStub, alice: httpx.Client
) -> None:
    alices = _session(service, alice, "shared-name")
    with service.client(BOB) as bob:
        hidden = _detail(service, bob.get("/chat/shared-name"), 404)
        assert ALICE not in hidden
        assert bob.delete("/chat/shared-name").status_code == 204
        assert _history(service, alice, "shared-name") == alices

        module_stub.plan(json_reply(openai_body("hello Bob")))
        seen = len(module_stub.requests)
        body = {"session_id": "shared-name", "message": "Bob here"}
        assert service.expect(bob.post("/chat/", json=body), 200)["response"] == "hello Bob"
        # Bob's model call carries none of Alice's history.
        [request] = module_stub.requests[seen:]
        assert request.json["messages"] == [{"role": "user", "content": "Bob here"}]
        bobs = _history(service, bob, "shared-name")
        assert [m["content"] for m in bobs["messages"]] == ["Bob here", "hello Bob"]

    assert _history(service, alice, "shared-name") == alices
    assert alice.delete("/chat/shared-name").status_code == 204
    with service.client(BOB) as bob:
        assert _history(service, bob, "shared-name") == bobs


# --- 404, 413 --------------------------------------------------------------------------------


def test_an_unknown_session_is_404(service: Service, alice: httpx.Client) -> None:
    detail = _detail(service, alice.get("/chat/never-written"), 404)
    assert "never-written" in detail


def _body_of(size: int, session_id: str) -> bytes:
    """A valid chat request of exactly `size` bytes."""
    head, tail = b'{"session_id": "%s", "message": "' % session_id.encode(), b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_one_mib_is_413_and_changes_nothing(
    service: Service, module_stub: ProviderStub, alice: httpx.Client, chunked: bool
) -> None:
    before = _session(service, alice, "too-big")
    seen = len(module_stub.requests)
    body = _body_of(ONE_MIB + 1, "too-big")
    # A generator makes httpx send it chunked: no Content-Length to refuse it by.
    content = (body[i : i + 65536] for i in range(0, len(body), 65536)) if chunked else body
    detail = _detail(service, alice.post("/chat/", content=content, headers=JSON), 413)
    assert "1 MiB" in detail or "large" in detail
    assert len(module_stub.requests) == seen
    assert _history(service, alice, "too-big") == before


def test_a_body_of_exactly_one_mib_is_read(service: Service, alice: httpx.Client) -> None:
    """The 413 limit is on the body: a message over max_message_chars in a body of 1 MiB
    is read and refused as a 400."""
    response = alice.post("/chat/", content=_body_of(ONE_MIB, "big-ok"), headers=JSON)
    assert str(MAX_MESSAGE_CHARS) in _detail(service, response, 400)


def test_a_message_of_exactly_max_message_chars_is_accepted(
    service: Service, alice: httpx.Client
) -> None:
    body = {"session_id": "longest", "message": "y" * MAX_MESSAGE_CHARS}
    service.expect(alice.post("/chat/", json=body), 200)
    stored = _history(service, alice, "longest")["messages"][0]["content"]
    assert stored == body["message"]


# --- 502, 504: the provider fails -------------------------------------------------------------
# One case here, for the status; every provider fault (timeouts for 504, resets, refusals,
# unusable answers, retries into a 200) is proven in test_provider_faults.py and, below the
# HTTP edge, in tests/integration/test_llm_*.py.


def test_provider_500s_after_retries_are_502_and_change_nothing(
    service: Service, module_stub: ProviderStub, alice: httpx.Client
) -> None:
    before = _session(service, alice, "upstream-500")
    module_stub.plan(*[error_reply(500)] * (MAX_RETRIES + 1))
    seen = len(module_stub.requests)

    body = {"session_id": "upstream-500", "message": "will fail"}
    detail = _detail(service, alice.post("/chat/", json=body), 502)

    assert len(module_stub.requests) - seen == MAX_RETRIES + 1
    assert "500" in detail
    assert _history(service, alice, "upstream-500") == before


# --- 429: a dedicated service with a small rate limit ----------------------------------------


def test_over_the_rate_limit_is_429_with_an_honest_retry_after(
    launch: ServiceLauncher, module_redis: RedisServer
) -> None:
    limit = 3
    service = launch(
        {
            "auth": {"tokens": f"{ALICE},{BOB}", "rate_limit": f"{limit}/second"},
            "redis": {"url": module_redis.url, "key_prefix": "ratelimited"},
        }
    )
    statuses: list[int] = []
    with service.client(ALICE) as alice, service.client(BOB) as bob:
        # Fixed one-second windows: quick requests overflow one of them soon enough.
        for n in range(20):
            response = alice.post("/chat/", json={"session_id": "limited", "message": f"m{n}"})
            statuses.append(response.status_code)
            if response.status_code != 200:
                break
        assert statuses[-1] == 429, (statuses, service.output())
        assert statuses.count(200) >= limit, statuses  # the window that overflowed held `limit`
        assert "rate" in _detail(service, response, 429).lower()
        retry_after = int(response.headers["retry-after"])
        assert 1 <= retry_after <= 2, retry_after  # what is left of a one-second window

        service.expect(bob.get("/chat/never"), 404)  # another token has its own count
        with service.client() as anonymous:
            service.expect(anonymous.get("/health"), 200)

        time.sleep(retry_after)
        history = _history(service, alice, "limited")
    stored = [m["content"] for m in history["messages"] if m["role"] == "user"]
    assert stored == [f"m{n}" for n in range(statuses.count(200))]


# --- 503: Redis goes away and comes back -----------------------------------------------------


def test_redis_down_is_503_within_seconds_and_the_same_service_recovers(
    launch: ServiceLauncher, tmp_path: Path
) -> None:
    with RedisServer(tmp_path / "redis", persistent=True) as redis:
        service = launch({"redis": {"url": redis.url}})
        with service.client() as http:
            before = _session(service, http, "outage")

            redis.stop()
            for method, path, body in [
                ("POST", "/chat/", {"session_id": "outage", "message": "lost?"}),
                ("POST", "/chat/", {"message": "a new session"}),
                ("GET", "/chat/outage", None),
                ("DELETE", "/chat/outage", None),
            ]:
                started = time.monotonic()
                response = http.request(method, path, json=body)
                elapsed = time.monotonic() - started
                detail = _detail(service, response, 503)
                assert elapsed < 5, (method, path, elapsed)
                assert "store" in detail.lower() or "redis" in detail.lower(), detail

            started = time.monotonic()
            ready = http.get("/ready")
            assert time.monotonic() - started < 5
            detail = _detail(service, ready, 503)
            assert f"redis at 127.0.0.1:{redis.port} did not answer" in detail, detail
            service.expect(http.get("/health"), 200)

            redis.start()  # same port, same append-only file
            ready = service.expect(http.get("/ready"), 200)
            assert ready == {
                "status": "ok",
                "store": f"redis at 127.0.0.1:{redis.port}",
                "models": [{"name": "primary", "state": "up"}],
            }
            assert _history(service, http, "outage") == before
            after = {"session_id": "outage", "message": "back again"}
            service.expect(http.post("/chat/", json=after), 200)
            contents = [m["content"] for m in _history(service, http, "outage")["messages"]]
        assert contents[:2] == [m["content"] for m in before["messages"]]
        assert contents[2] == "back again"
        assert len(contents) == 4
