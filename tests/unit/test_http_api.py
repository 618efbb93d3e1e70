"""The HTTP contract in-process: Litestar's test client, in-memory store, scripted model."""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
from dependency_injector import providers
from litestar.testing import AsyncTestClient

from adapters.memory_history import MemoryHistory
from application.errors import HistoryUnavailable, ModelTimeout
from application.model_routing import ModelRoute
from domain.message import Message
from domain.session import SessionInfo, SessionKey
from entrypoints.asgi import create_app
from entrypoints.config import (
    AuthSettings,
    HistorySettings,
    RateLimit,
    RedisSettings,
    ServerSettings,
    Settings,
)
from entrypoints.container import Container
from tests.unit.fakes import ScriptedModel, unavailable

Client = AsyncTestClient[Any]


class DownHistory(MemoryHistory):
    """A store that has stopped answering, as RedisHistory reports it."""

    def __init__(self) -> None:
        super().__init__(max_messages=10, ttl_seconds=0)

    async def load(self, key: SessionKey) -> list[Message]:
        raise HistoryUnavailable("the history store is unavailable")

    async def append_exchange(
        self, key: SessionKey, question: Message, answer: Message, receipt: object = None
    ) -> None:
        raise HistoryUnavailable("the history store is unavailable")

    async def open(self, key: SessionKey, info: SessionInfo) -> None:
        raise HistoryUnavailable("the history store is unavailable")

    async def info(self, key: SessionKey) -> SessionInfo | None:
        raise HistoryUnavailable("the history store is unavailable")

    async def ping(self) -> None:
        raise HistoryUnavailable("redis did not answer")


def settings(**sections: Any) -> Settings:
    base = Settings(
        redis=RedisSettings(url="memory://"), history=HistorySettings(max_message_chars=50)
    )
    return msgspec.structs.replace(base, **sections)


@asynccontextmanager
async def serve(
    config: Settings, model: ScriptedModel, history: MemoryHistory | None = None
) -> AsyncIterator[Client]:
    container = Container(settings=config)
    container.model_routes.override(providers.Object([ModelRoute("primary", model)]))
    if history is not None:
        container.history.override(providers.Object(history))
    async with AsyncTestClient(create_app(config, container)) as client:
        yield client


@pytest.fixture
def model() -> ScriptedModel:
    return ScriptedModel()


@pytest.fixture
async def client(model: ScriptedModel) -> AsyncIterator[Client]:
    async with serve(settings(), model) as client:
        yield client


async def test_chat_round_trip_and_history(client: Client) -> None:
    first = await client.post("/chat/", json={"session_id": "", "message": "Hello"})
    assert first.status_code == 200
    session_id = first.json()["session_id"]
    assert first.json()["response"] == "reply-1: Hello"

    second = await client.post("/chat", json={"session_id": f" {session_id}", "message": "More"})
    assert second.json() == {
        "session_id": session_id,
        "response": "reply-2: More",
        "usage": {"input_tokens": 7, "output_tokens": 4, "source": "estimate"},
        "model": "primary",
    }

    shown = await client.get(f"/chat/{session_id}")
    assert shown.status_code == 200
    messages = shown.json()["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "Hello"),
        ("assistant", "reply-1: Hello"),
        ("user", "More"),
        ("assistant", "reply-2: More"),
    ]
    assert messages[0]["created_at"].endswith("Z")
    assert [m.get("model") for m in messages] == [None, "primary", None, "primary"]

    assert (await client.delete(f"/chat/{session_id}")).status_code == 204
    assert (await client.delete(f"/chat/{session_id}")).status_code == 204
    gone = await client.get(f"/chat/{session_id}")
    assert gone.status_code == 404
    assert "no session" in gone.json()["detail"]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"session_id": "a b", "message": "x"}, "session_id must be 1-128 characters"),
        ({"session_id": "x" * 129, "message": "x"}, "session_id must be 1-128 characters"),
        ({"message": "   "}, "message must not be empty"),
        ({"message": "x" * 51}, "the limit is 50"),
        ({"message": 5}, "Expected `str`, got `int`"),
        ({"session_id": 7, "message": "x"}, "Expected `str | null`, got `int`"),
        ({}, "missing required field `message`"),
        ([1, 2], "Expected `object`, got `array`"),
        ({"message": "x", "model": "gpt-4o"}, "unknown field `model`"),
        ({"message": "x", "stream": True}, "unknown field `stream`"),
    ],
)
async def test_bad_input_is_a_400_that_says_why(
    client: Client, model: ScriptedModel, body: object, detail: str
) -> None:
    response = await client.post("/chat/", json=body)
    assert response.status_code == 400
    assert detail in response.json()["detail"]
    assert model.seen == []


async def test_malformed_json_and_oversized_bodies(client: Client) -> None:
    malformed = await client.post(
        "/chat/", content=b'{"message": ', headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400
    assert "not valid JSON" in malformed.json()["detail"]
    huge = await client.post("/chat/", content=b'{"message": "' + b"x" * (1024 * 1024) + b'"}')
    assert huge.status_code == 413
    assert "1 MiB" in huge.json()["detail"]


async def test_get_with_a_bad_session_id_is_a_400(client: Client) -> None:
    response = await client.get("/chat/a*b")
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("failure", "status", "detail"),
    [
        (unavailable(), 502, "HTTP 500"),
        (ModelTimeout("the test provider did not answer within 1 seconds"), 504, "did not answer"),
    ],
)
async def test_provider_failures_map_to_502_and_504_and_store_nothing(
    client: Client, model: ScriptedModel, failure: Exception, status: int, detail: str
) -> None:
    await client.post("/chat/", json={"session_id": "s", "message": "kept"})
    before = (await client.get("/chat/s")).json()
    model.failure = failure
    response = await client.post("/chat/", json={"session_id": "s", "message": "lost"})
    assert response.status_code == status
    assert detail in response.json()["detail"]
    assert (await client.get("/chat/s")).json() == before


async def test_a_bug_is_a_500_that_leaks_nothing(client: Client, model: ScriptedModel) -> None:
    model.failure = RuntimeError("internal detail sk-live-123")
    response = await client.post("/chat/", json={"message": "hi"})
    assert response.status_code == 500
    assert "sk-live-123" not in response.text
    assert response.json()["detail"]


@pytest.mark.parametrize(
    "bug",
    [
        RecursionError("maximum recursion depth exceeded"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    ],
    ids=["RecursionError", "UnicodeDecodeError"],
)
async def test_a_bug_that_looks_like_a_bad_body_is_still_a_500(
    client: Client, model: ScriptedModel, bug: Exception
) -> None:
    """RecursionError and UnicodeDecodeError are the client's fault only while its body is
    decoded; raised by the service's own code, they are its bug."""
    model.failure = bug
    response = await client.post("/chat/", json={"message": "hi"})
    assert response.status_code == 500
    assert response.json()["detail"] == "internal error; it has been logged"


async def test_store_down_is_a_503_and_ready_names_it(model: ScriptedModel) -> None:
    async with serve(settings(), model, DownHistory()) as client:
        response = await client.post("/chat/", json={"message": "hi"})
        assert response.status_code == 503
        assert "history store" in response.json()["detail"]
        assert (await client.get("/chat/s")).status_code == 503
        assert (await client.get("/health")).json() == {"status": "ok"}
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["detail"] == (
            "history store not ready: the in-memory store did not answer"
        )


async def test_ready_says_where_it_looked(client: Client) -> None:
    ready = await client.get("/ready")
    assert ready.json() == {
        "status": "ok",
        "store": "the in-memory store",
        "models": [{"name": "primary", "state": "up"}],
    }


async def test_cors_lets_the_configured_origins_call_the_api(model: ScriptedModel) -> None:
    config = settings(
        server=ServerSettings(cors_origins=("http://front.example",)),
        auth=AuthSettings(tokens=("t0ken",)),
    )
    async with serve(config, model) as client:
        preflight = await client.options(
            "/chat/",
            headers={
                "Origin": "http://front.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "http://front.example"
        assert "idempotency-key" in preflight.headers["access-control-allow-headers"]
        sent = await client.post(
            "/chat/",
            json={"message": "hi"},
            headers={"Origin": "http://front.example", "Authorization": "Bearer t0ken"},
        )
        assert sent.headers["access-control-allow-origin"] == "http://front.example"
        assert "Retry-After" in sent.headers["access-control-expose-headers"]
        other = await client.post(
            "/chat/",
            json={"message": "hi"},
            headers={"Origin": "http://evil.example", "Authorization": "Bearer t0ken"},
        )
        assert "access-control-allow-origin" not in other.headers


async def test_tokens_guard_chat_but_not_health(model: ScriptedModel) -> None:
    config = settings(auth=AuthSettings(tokens=("alpha-token", "beta-token")))
    async with serve(config, model) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "alpha-token"}):
            denied = await client.post("/chat/", json={"message": "hi"}, headers=headers)
            assert denied.status_code == 401
            assert denied.headers["www-authenticate"] == "Bearer"
            assert "bearer token" in denied.json()["detail"]
        # 401 comes before the body is even looked at.
        assert (await client.post("/chat/", content=b"{")).status_code == 401
        assert model.seen == []
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/ready")).status_code == 200
        assert (await client.get("/schema/openapi.json")).status_code == 200

        alpha = {"Authorization": "Bearer alpha-token"}
        beta = {"Authorization": "bearer beta-token"}
        body = {"session_id": "shared", "message": "alpha's secret"}
        assert (await client.post("/chat/", json=body, headers=alpha)).status_code == 200
        # Beta sees nothing of alpha's session, and its writes land in its own.
        assert (await client.get("/chat/shared", headers=beta)).status_code == 404
        assert (await client.delete("/chat/shared", headers=beta)).status_code == 204
        await client.post("/chat/", json={"session_id": "shared", "message": "b"}, headers=beta)
        alpha_view = (await client.get("/chat/shared", headers=alpha)).json()["messages"]
        assert [m["content"] for m in alpha_view] == ["alpha's secret", "reply-1: alpha's secret"]


async def test_rate_limit_is_per_token_with_retry_after(model: ScriptedModel) -> None:
    config = settings(
        auth=AuthSettings(tokens=("t1", "t2"), rate_limit=RateLimit(limit=2, window_seconds=60))
    )
    async with serve(config, model) as client:
        send: Callable[[str], Any] = lambda token: client.post(  # noqa: E731
            "/chat/", json={"message": "hi"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert [(await send("t1")).status_code for _ in range(2)] == [200, 200]
        limited = await send("t1")
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert "rate limit" in limited.json()["detail"]
        assert (await send("t2")).status_code == 200


async def test_openapi_documents_the_contract(client: Client) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    post = document["paths"]["/chat"]["post"]
    assert {"200", "400", "409", "413", "502", "503", "504"} <= set(post["responses"])
    headers = {p["name"]: p for p in post["parameters"] if p["in"] == "header"}
    assert headers["Idempotency-Key"]["required"] is False
    assert "24 h" in headers["Idempotency-Key"]["description"]
    schemas = document["components"]["schemas"]
    assert {"message", "session_id"} <= set(schemas["ChatRequest"]["properties"])
    assert "/chat/{session_id}" in document["paths"]


async def test_without_tokens_the_rate_limit_counts_per_client_address(
    model: ScriptedModel,
) -> None:
    config = settings(auth=AuthSettings(rate_limit=RateLimit(limit=2, window_seconds=60)))
    async with serve(config, model) as client:
        statuses = [(await client.post("/chat/", json={"message": "hi"})).status_code]
        statuses.append((await client.get("/chat/nobody")).status_code)
        statuses.append((await client.post("/chat/", json={"message": "hi"})).status_code)
        assert statuses == [200, 404, 429]
        assert (await client.get("/health")).status_code == 200  # not rate limited


async def test_an_idempotency_key_makes_a_repeat_return_the_first_reply(
    client: Client, model: ScriptedModel
) -> None:
    body = {"session_id": "once", "message": "charge my card"}
    headers = {"Idempotency-Key": "order-17"}

    first = await client.post("/chat/", json=body, headers=headers)
    repeat = await client.post("/chat/", json=body, headers=headers)
    other = await client.post("/chat/", json={**body, "message": "twice"}, headers=headers)

    assert first.status_code == repeat.status_code == 200
    assert repeat.json() == first.json()
    assert other.status_code == 409
    assert "different request" in other.json()["detail"]
    assert len(model.seen) == 1
    history = (await client.get("/chat/once")).json()["messages"]
    assert [m["content"] for m in history] == ["charge my card", "reply-1: charge my card"]


@pytest.mark.parametrize("key", ["", "k" * 129, "café", "tab\there"])
async def test_a_bad_idempotency_key_is_a_400_that_says_so(
    client: Client, model: ScriptedModel, key: str
) -> None:
    response = await client.post(
        "/chat/",
        json={"message": "hi"},
        headers={"Idempotency-Key": key.encode()},
    )

    assert response.status_code == 400
    assert response.json()["detail"] == ("Idempotency-Key must be 1-128 printable ASCII characters")
    assert model.seen == []
