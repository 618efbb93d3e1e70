"""Concurrent requests on one session: every exchange is stored whole, question then reply."""

import asyncio

import pytest

from tests.e2e.conftest import Service, ServiceLauncher, assert_paired, openai_config
from tests.support.provider_stub import ProviderStub, json_reply, openai_body, slow
from tests.support.redis_server import RedisServer

CONCURRENT = 20


@pytest.fixture(scope="module")
def service(module_launch: ServiceLauncher, module_redis: RedisServer) -> Service:
    # The echo provider repeats the user's text, so each reply names its question.
    return module_launch(
        {"redis": {"url": module_redis.url}, "history": {"max_messages": str(4 * CONCURRENT)}}
    )


@pytest.fixture(scope="module")
def openai_service(
    module_launch: ServiceLauncher, module_redis: RedisServer, module_stub: ProviderStub
) -> Service:
    return module_launch(
        {
            "redis": {"url": module_redis.url, "key_prefix": "slow"},
            "history": {"max_messages": str(4 * CONCURRENT)},
            "llm": openai_config(module_stub),
        }
    )


async def test_concurrent_posts_to_one_session_store_every_exchange_in_pairs(
    service: Service,
) -> None:
    questions = [f"question number {n}" for n in range(CONCURRENT)]
    async with service.async_client() as http:
        responses = await asyncio.gather(
            *(http.post("/chat/", json={"session_id": "crowd", "message": q}) for q in questions)
        )
        for question, response in zip(questions, responses, strict=True):
            reply = service.expect(response, 200)
            assert reply["session_id"] == "crowd"
            assert f"You said: {question} (" in reply["response"]
        history = service.expect(await http.get("/chat/crowd"), 200)
    assert_paired(history["messages"], questions)


async def test_concurrent_sessions_do_not_mix(service: Service) -> None:
    sessions = [f"parallel-{n}" for n in range(5)]
    async with service.async_client() as http:
        await asyncio.gather(
            *(
                http.post("/chat/", json={"session_id": s, "message": f"{s} says {turn}"})
                for s in sessions
                for turn in range(4)
            )
        )
        for session_id in sessions:
            history = service.expect(await http.get(f"/chat/{session_id}"), 200)
            assert_paired(history["messages"], [f"{session_id} says {t}" for t in range(4)])


async def test_concurrent_posts_overlapping_a_slow_provider_store_every_exchange_in_pairs(
    openai_service: Service, module_stub: ProviderStub
) -> None:
    """Every request reads the history, then waits on the provider together with the others:
    the read-model-write window of each exchange overlaps all the others."""
    module_stub.plan(
        *(slow(json_reply(openai_body(f"answer {n}")), 0.3) for n in range(CONCURRENT))
    )
    seen = len(module_stub.requests)
    questions = [f"slow question {n}" for n in range(CONCURRENT)]
    async with openai_service.async_client() as http:
        responses = await asyncio.gather(
            *(
                http.post("/chat/", json={"session_id": "slow-crowd", "message": q})
                for q in questions
            )
        )
        replies = {
            question: openai_service.expect(response, 200)["response"]
            for question, response in zip(questions, responses, strict=True)
        }
        history = openai_service.expect(await http.get("/chat/slow-crowd"), 200)

    # The stub answered its n-th request with "answer n": that fixes which reply is whose.
    asked = [r.json["messages"][-1]["content"] for r in module_stub.requests[seen:]]
    assert sorted(asked) == sorted(questions)
    assert replies == {question: f"answer {n}" for n, question in enumerate(asked)}
    messages = history["messages"]
    assert len(messages) == 2 * CONCURRENT
    pairs = list(zip(messages[::2], messages[1::2], strict=True))
    assert all(q["role"] == "user" and a["role"] == "assistant" for q, a in pairs)
    assert {q["content"]: a["content"] for q, a in pairs} == replies
