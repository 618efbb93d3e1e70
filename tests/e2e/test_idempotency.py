"""Idempotency-Key over HTTP: two workers on one Redis, the openai provider on a loopback stub."""

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import Service, ServiceLauncher, openai_config
from tests.support.provider_stub import (
    ProviderStub,
    error_reply,
    json_reply,
    openai_body,
    running_stub,
    slow,
)
from tests.support.redis_server import RedisServer

ALICE, BOB = "tok-alice-idem", "tok-bob-idem"
ANSWER = "the one and only answer"


@pytest.fixture(scope="module")
def stub() -> Iterator[ProviderStub]:
    with running_stub(json_reply(openai_body(ANSWER))) as stub:
        yield stub


@pytest.fixture(scope="module")
def service(
    module_launch: ServiceLauncher, module_redis: RedisServer, stub: ProviderStub
) -> Service:
    return module_launch(
        {
            "auth": {"tokens": f"{ALICE},{BOB}"},
            "redis": {"url": module_redis.url, "key_prefix": "idem"},
            "llm": openai_config(stub, timeout_seconds="5"),
        },
        workers=2,
    )


@pytest.fixture(autouse=True)
def fresh_stub(stub: ProviderStub) -> None:
    stub.reset()


def post(
    http: httpx.AsyncClient, session_id: str, message: str, key: str
) -> "asyncio.Future[httpx.Response]":
    body = {"session_id": session_id, "message": message}
    return asyncio.ensure_future(http.post("/chat/", json=body, headers={"Idempotency-Key": key}))


async def history(service: Service, http: httpx.AsyncClient, session_id: str) -> list[str]:
    shown = service.expect(await http.get(f"/chat/{session_id}"), 200)
    return [m["content"] for m in shown["messages"]]


@pytest.mark.slow
async def test_repeats_while_the_first_is_in_flight_get_its_reply_from_either_worker(
    service: Service, stub: ProviderStub
) -> None:
    stub.plan(slow(json_reply(openai_body(ANSWER)), 1.0))
    async with service.async_client(ALICE) as http:
        first = post(http, "pay", "pay invoice 7", "invoice-7")
        await asyncio.sleep(0.3)  # the first is now waiting on the provider
        repeats = [post(http, "pay", "pay invoice 7", "invoice-7") for _ in range(8)]
        responses = await asyncio.gather(first, *repeats)
        later = await post(http, "pay", "pay invoice 7", "invoice-7")

        bodies = [service.expect(r, 200) for r in [*responses, later]]
        assert bodies == [bodies[0]] * len(bodies)
        assert (bodies[0]["session_id"], bodies[0]["response"]) == ("pay", ANSWER)
        assert len(stub.requests) == 1
        assert await history(service, http, "pay") == ["pay invoice 7", ANSWER]


async def test_the_same_key_for_another_request_is_a_409_that_changes_nothing(
    service: Service, stub: ProviderStub
) -> None:
    async with service.async_client(ALICE) as http:
        service.expect(await post(http, "s-409", "first", "k-409"), 200)
        conflict = await post(http, "s-409", "second", "k-409")
        elsewhere = await post(http, "s-409-other", "first", "k-409")

        for response in (conflict, elsewhere):
            detail = service.expect(response, 409)["detail"]
            assert "Idempotency-Key" in detail
            assert "different request" in detail
        assert len(stub.requests) == 1
        assert await history(service, http, "s-409") == ["first", ANSWER]
        service.expect(await http.get("/chat/s-409-other"), 404)


async def test_a_new_session_started_with_a_key_is_named_again_by_its_repeat(
    service: Service, stub: ProviderStub
) -> None:
    async with service.async_client(ALICE) as http:
        body = {"message": "start something"}
        headers = {"Idempotency-Key": "start-1"}
        first = service.expect(await http.post("/chat/", json=body, headers=headers), 200)
        repeat = service.expect(await http.post("/chat/", json=body, headers=headers), 200)

        assert repeat == first
        assert len(stub.requests) == 1
        assert await history(service, http, first["session_id"]) == ["start something", ANSWER]


async def test_keys_belong_to_their_token(service: Service, stub: ProviderStub) -> None:
    async with service.async_client(ALICE) as alice, service.async_client(BOB) as bob:
        service.expect(await post(alice, "mine", "hello", "shared-key"), 200)
        # Bob's identical request is his own: answered, stored in his namespace, no 409.
        service.expect(await post(bob, "mine", "hello", "shared-key"), 200)
        service.expect(await post(bob, "mine", "another", "shared-key"), 409)

        assert len(stub.requests) == 2
        assert await history(service, alice, "mine") == ["hello", ANSWER]
        assert await history(service, bob, "mine") == ["hello", ANSWER]


async def test_a_failed_request_is_not_remembered_so_its_retry_runs(
    service: Service, stub: ProviderStub
) -> None:
    stub.plan(error_reply(500))
    async with service.async_client(ALICE) as http:
        service.expect(await post(http, "flaky", "try me", "retry-1"), 502)
        service.expect(await http.get("/chat/flaky"), 404)

        reply = service.expect(await post(http, "flaky", "try me", "retry-1"), 200)

        assert reply["response"] == ANSWER
        assert len(stub.requests) == 2
        assert await history(service, http, "flaky") == ["try me", ANSWER]


async def test_a_client_that_gave_up_can_retry_with_its_key_and_is_answered_once(
    service: Service, stub: ProviderStub
) -> None:
    stub.plan(slow(json_reply(openai_body(ANSWER)), 1.5))
    async with service.async_client(ALICE, timeout=0.3) as impatient:
        with pytest.raises(httpx.TimeoutException):
            await post(impatient, "gave-up", "are you there", "patience-1")
    async with service.async_client(ALICE) as http:
        reply = service.expect(await post(http, "gave-up", "are you there", "patience-1"), 200)
        again = service.expect(await post(http, "gave-up", "are you there", "patience-1"), 200)
        await asyncio.sleep(1.5)  # past the moment the abandoned call would have answered

        assert reply == again
        assert (reply["session_id"], reply["response"]) == ("gave-up", ANSWER)
        assert await history(service, http, "gave-up") == ["are you there", ANSWER]


@pytest.mark.parametrize("key", ["", "x" * 129])
async def test_a_bad_key_is_a_400_naming_the_header(service: Service, key: str) -> None:
    async with service.async_client(ALICE) as http:
        response = await post(http, "bad-key", "hello", key)

        assert "idempotency-key" in service.expect(response, 400)["detail"].lower()
        service.expect(await http.get("/chat/bad-key"), 404)
