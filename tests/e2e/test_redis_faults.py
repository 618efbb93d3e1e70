"""The service over HTTP while its Redis fails: killed mid-traffic, stalled, slow, resetting.

What a client may rely on: a request the store cannot serve is a 503 within seconds, never a
500 and never a hang; the same process serves 200s again once Redis is back; every stored
question is followed at once by its own reply; every exchange acknowledged with a 200 is
stored, once; and a session's history holds only that session's messages.
"""

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Service, ServiceLauncher, openai_config, wait_until
from tests.support.provider_stub import ProviderStub, json_reply, openai_body, slow
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import ProxyThread, running_proxy

BOUND_SECONDS = 5.0  # "a 503 within seconds": one 2 s socket timeout, plus margin
MAX_MESSAGES = 1000  # no trimming in these tests: every stored exchange stays visible


@dataclass(frozen=True)
class Outcome:
    session: str
    question: str
    status: int  # 0: the client gave up first
    started: float
    finished: float

    @property
    def took(self) -> float:
        return self.finished - self.started


async def post(
    http: httpx.AsyncClient, session: str, question: str, give_up_after: float | None = None
) -> Outcome:
    started = time.monotonic()
    try:
        response = await http.post(
            "/chat/",
            json={"session_id": session, "message": question},
            timeout=give_up_after if give_up_after is not None else http.timeout,
        )
    except httpx.TimeoutException:
        return Outcome(session, question, 0, started, time.monotonic())
    if response.status_code == 200:
        reply = response.json()
        assert reply["session_id"] == session, reply
        assert f"You said: {question} (" in reply["response"], (question, reply)
    return Outcome(session, question, response.status_code, started, time.monotonic())


def paired_questions(messages: list[dict[str, Any]]) -> list[str]:
    """The stored questions, after checking each is followed at once by the echo model's
    reply to it (the echo reply repeats its question): no half exchange anywhere."""
    contents = [m["content"] for m in messages]
    assert len(messages) % 2 == 0, contents
    for question, answer in zip(messages[::2], messages[1::2], strict=True):
        assert question["role"] == "user", contents
        assert answer["role"] == "assistant", contents
        assert f"You said: {question['content']} (" in answer["content"], (question, answer)
    return [m["content"] for m in messages[::2]]


async def stored_questions(service: Service, http: httpx.AsyncClient, session: str) -> list[str]:
    response = await http.get(f"/chat/{session}")
    if response.status_code == 404:
        return []
    questions = paired_questions(service.expect(response, 200)["messages"])
    assert len(questions) == len(set(questions)), f"an exchange stored twice in {session}"
    return questions


async def assert_every_exchange_whole_and_every_200_stored(
    service: Service, http: httpx.AsyncClient, outcomes: list[Outcome]
) -> None:
    for session in {o.session for o in outcomes}:
        sent = {o.question for o in outcomes if o.session == session}
        acknowledged = {o.question for o in outcomes if o.session == session and o.status == 200}
        stored = set(await stored_questions(service, http, session))
        assert acknowledged <= stored, f"{session}: 200s not stored: {acknowledged - stored}"
        assert stored <= sent, f"{session}: stored but never sent: {stored - sent}"


def assert_no_500(
    service: Service, outcomes: list[Outcome], allowed: set[int], log_from: int = 0
) -> Counter[int]:
    """Only `allowed` statuses, and no unhandled error in the service's log since `log_from`
    (a length of its stderr; the module's services serve several tests)."""
    statuses = Counter(o.status for o in outcomes)
    assert set(statuses) <= allowed, (statuses, service.output())
    assert "unhandled error" not in service.stderr()[log_from:], service.output()
    return statuses


# --- Redis killed mid-traffic, restarted on its port -------------------------------------------

CLIENTS = 10
OUTAGE_SECONDS = 1.5


@pytest.mark.slow
async def test_redis_killed_mid_traffic_is_503s_then_200s_from_the_same_process(
    launch: ServiceLauncher, tmp_path: Path
) -> None:
    outcomes: list[Outcome] = []
    done = asyncio.Event()

    async def client(http: httpx.AsyncClient, session: str) -> None:
        for n in range(1000):
            if done.is_set():
                return
            outcome = await post(http, session, f"{session} says {n}")
            outcomes.append(outcome)
            if outcome.status != 200:
                await asyncio.sleep(0.05)  # a little patience, as a client honouring Retry-After

    def recovered(since: float) -> bool:
        return {o.session for o in outcomes if o.status == 200 and o.started > since} == sessions

    async def until(condition: Any, seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
            await asyncio.sleep(0.05)

    sessions = {f"kill-{n}" for n in range(CLIENTS)}
    # Persistent: every write is fsynced before Redis answers, so a kill loses no 200.
    with RedisServer(tmp_path / "redis", persistent=True) as redis:
        service = launch(
            {"redis": {"url": redis.url}, "history": {"max_messages": str(MAX_MESSAGES)}}
        )
        assert service.process is not None
        pid = service.process.pid
        async with service.async_client() as http:
            clients = [asyncio.create_task(client(http, s)) for s in sorted(sessions)]
            await until(lambda: recovered(0.0), BOUND_SECONDS, "every client served")

            await asyncio.to_thread(redis.stop)
            down = time.monotonic()
            await asyncio.sleep(OUTAGE_SECONDS)
            restarting = time.monotonic()
            await asyncio.to_thread(redis.start)  # same port, same append-only file
            up = time.monotonic()
            await until(lambda: recovered(up), 3 * BOUND_SECONDS, "every client served again")

            done.set()
            await asyncio.gather(*clients)
            await assert_every_exchange_whole_and_every_200_stored(service, http, outcomes)
            service.expect(await http.get("/ready"), 200)

    assert service.process.poll() is None
    assert service.process.pid == pid
    statuses = assert_no_500(service, outcomes, {200, 503})
    slowest = max(outcomes, key=lambda o: o.took)
    assert slowest.took < BOUND_SECONDS, slowest
    during = [o for o in outcomes if o.started > down and o.finished < restarting]
    assert len(during) >= CLIENTS, len(during)  # the outage was met, by every client
    assert {o.status for o in during} == {503}
    print(f"\nkill: {statuses}, {len(during)} requests during the outage")


# --- through a proxy: Redis stalled, slow, resetting -------------------------------------------


@pytest.fixture(scope="module")
def module_proxy(module_redis: RedisServer) -> Iterator[ProxyThread]:
    with running_proxy(module_redis.port) as proxy:
        yield proxy


@pytest.fixture
def proxy(module_proxy: ProxyThread) -> Iterator[ProxyThread]:
    """The module's proxy, back to passing everything through after each test."""
    module_proxy.pass_through()
    yield module_proxy
    module_proxy.pass_through()


@pytest.fixture(scope="module")
def service(module_launch: ServiceLauncher, module_proxy: ProxyThread) -> Service:
    """An echo-model service whose Redis is behind the proxy."""
    return module_launch(
        {
            "redis": {"url": module_proxy.redis_url, "key_prefix": "faults"},
            "history": {"max_messages": str(MAX_MESSAGES)},
        }
    )


STALLED = [f"stall-{n}" for n in range(6)]


@pytest.mark.slow
async def test_a_stalled_redis_is_503_within_seconds_and_each_session_keeps_its_own(
    service: Service, proxy: ProxyThread
) -> None:
    async with service.async_client() as http:
        seeded = await asyncio.gather(
            *(post(http, s, f"{s} says {n}") for s in STALLED for n in range(2))
        )
        assert {o.status for o in seeded} == {200}
        before = {s: await stored_questions(service, http, s) for s in STALLED}

        proxy.stall()
        started = time.monotonic()
        during = await asyncio.gather(
            *(http.get(f"/chat/{s}") for s in STALLED),
            *(http.post("/chat/", json={"session_id": s, "message": "lost"}) for s in STALLED),
            http.post("/chat/", json={"message": "a new session"}),
            http.delete(f"/chat/{STALLED[0]}"),
            http.get("/ready"),
        )
        took = time.monotonic() - started
        for response in during:
            assert "store" in service.expect(response, 503)["detail"]
        assert took < BOUND_SECONDS, took
        service.expect(await http.get("/health"), 200)  # alive, only not ready

        proxy.release()  # the stale requests reach Redis; their replies meet closed connections
        for _ in range(3):  # concurrently, so that every pooled connection serves one
            after = await asyncio.gather(*(stored_questions(service, http, s) for s in STALLED))
            # The DELETE may have gone through late; what is left is still only its own.
            assert after[0] in (before[STALLED[0]], [])
            assert after[1:] == [before[s] for s in STALLED[1:]]

        replies = await asyncio.gather(*(post(http, s, f"{s} is back") for s in STALLED[1:]))
        assert {o.status for o in replies} == {200}
        for session in STALLED[1:]:
            assert await stored_questions(service, http, session) == [
                *before[session],
                f"{session} is back",
            ]


@pytest.mark.slow
async def test_clients_giving_up_on_a_slow_redis_leave_each_session_its_own_messages(
    service: Service, proxy: ProxyThread
) -> None:
    """The service cancels the handler of a client that hung up, here often in the middle of
    a Redis command: the next commands on its pool must still get their own replies."""
    sessions = [f"slow-{n}" for n in range(6)]
    log_from = len(service.stderr())
    proxy.delay(0.02)
    outcomes: list[Outcome] = []
    async with service.async_client() as http:
        for turn in range(3):
            outcomes += await asyncio.gather(
                *(post(http, s, f"{s} says {turn}") for s in sessions),
                *(
                    post(http, s, f"{s} gives up {turn}", give_up_after=0.02 + 0.03 * n)
                    for n, s in enumerate(sessions)
                ),
            )
            for session in sessions:
                stored = await stored_questions(service, http, session)
                assert all(q.startswith(f"{session} ") for q in stored), (session, stored)
        proxy.pass_through()
        await assert_every_exchange_whole_and_every_200_stored(service, http, outcomes)
    statuses = assert_no_500(service, outcomes, {200, 0}, log_from)
    assert statuses[200] >= 3 * len(sessions)
    assert statuses[0] >= 1  # some clients did give up mid-request


@pytest.mark.slow
async def test_connection_resets_mid_traffic_are_503_or_200_never_500_nor_half_exchanges(
    service: Service, proxy: ProxyThread
) -> None:
    sessions = [f"reset-{n}" for n in range(6)] + ["reset-0", "reset-1"]  # two share each
    proxy.delay(0.01)  # commands spend long enough on the wire to be cut
    stats = proxy.stats()
    log_from = len(service.stderr())
    outcomes: list[Outcome] = []
    traffic = True

    async def client(http: httpx.AsyncClient, writer: int, session: str) -> None:
        for n in range(12):
            outcomes.append(await post(http, session, f"{session} writer {writer} says {n}"))

    async def reset_repeatedly() -> None:
        while traffic:
            await asyncio.sleep(0.25)
            await asyncio.to_thread(proxy.reset_all)

    async with service.async_client() as http:
        resetter = asyncio.create_task(reset_repeatedly())
        try:
            await asyncio.gather(*(client(http, w, s) for w, s in enumerate(sessions)))
        finally:
            traffic = False
            await resetter
        statuses = assert_no_500(service, outcomes, {200, 503}, log_from)
        assert max(o.took for o in outcomes) < BOUND_SECONDS
        proxy.pass_through()
        await assert_every_exchange_whole_and_every_200_stored(service, http, outcomes)
        service.expect(await http.get("/ready"), 200)
    after = proxy.stats()
    assert after.resets_in_flight - stats.resets_in_flight >= 3, after
    assert statuses[200] >= len(outcomes) // 2, statuses
    print(
        f"\nreset: {statuses}, {after.resets - stats.resets} connections reset, "
        f"{after.resets_in_flight - stats.resets_in_flight} of them mid-command"
    )


# --- a write that the stall caught ------------------------------------------------------------


@pytest.fixture(scope="module")
def openai_service(
    module_launch: ServiceLauncher, module_stub: ProviderStub, module_proxy: ProxyThread
) -> Service:
    """A service asking the stub provider, whose Redis is behind the proxy: the stub's pause
    before answering is the moment to stall Redis between an exchange's read and its write."""
    return module_launch(
        {
            "redis": {"url": module_proxy.redis_url, "key_prefix": "late-write"},
            "llm": openai_config(module_stub, timeout_seconds="10"),
        }
    )


def _stall_the_write(
    service: Service, stub: ProviderStub, proxy: ProxyThread, body: dict[str, str], **headers: str
) -> httpx.Response:
    """POST `body`; once the service has read the history and asked the model, stall Redis,
    so that the exchange's write is held on its way. Returns the response."""
    stub.plan(slow(json_reply(openai_body("late answer")), 0.5))
    seen = len(stub.requests)
    with service.client() as http, ThreadPoolExecutor(1) as thread:
        pending = thread.submit(http.post, "/chat/", json=body, headers=headers)
        wait_until(lambda: len(stub.requests) > seen, BOUND_SECONDS, "model asked")
        proxy.stall()
        return pending.result(timeout=1.0 + 2 * BOUND_SECONDS)


@pytest.mark.slow
def test_a_503_for_a_write_held_up_in_a_stalled_redis_is_stored_whole_or_not_at_all(
    openai_service: Service, module_stub: ProviderStub, proxy: ProxyThread
) -> None:
    """The exchange's write is on its way when Redis stalls: the service answers 503 after
    its socket timeout, then Redis catches up and may run the write. No networked store can
    rule that out (the README says so, and to retry with an Idempotency-Key, next test); what
    must hold is that the write lands whole or not at all."""
    service = openai_service
    with service.client() as http:
        service.expect(http.post("/chat/", json={"session_id": "late", "message": "first"}), 200)
        before = [m["content"] for m in service.expect(http.get("/chat/late"), 200)["messages"]]

        body = {"session_id": "late", "message": "second"}
        response = _stall_the_write(service, module_stub, proxy, body)
        assert response.status_code == 503, response.text
        proxy.release()
        time.sleep(0.5)  # what the stall held reaches Redis now
        after = [m["content"] for m in service.expect(http.get("/chat/late"), 200)["messages"]]
    assert after in (before, [*before, "second", "late answer"]), after


@pytest.mark.slow
def test_a_503_retried_with_its_idempotency_key_stores_the_exchange_once(
    openai_service: Service, module_stub: ProviderStub, proxy: ProxyThread
) -> None:
    """Whether or not the held write lands, the retry the README recommends ends with the
    exchange stored once, and the retry's reply is the one stored."""
    service = openai_service
    with service.client() as http:
        service.expect(http.post("/chat/", json={"session_id": "kept", "message": "first"}), 200)
        before = [m["content"] for m in service.expect(http.get("/chat/kept"), 200)["messages"]]

        body = {"session_id": "kept", "message": "second"}
        key = {"idempotency-key": "redis-stall-retry-1"}
        response = _stall_the_write(service, module_stub, proxy, body, **key)
        assert response.status_code == 503, response.text
        proxy.release()
        time.sleep(0.5)  # what the stall held reaches Redis now

        retried = service.expect(http.post("/chat/", json=body, headers=key), 200)
        after = [m["content"] for m in service.expect(http.get("/chat/kept"), 200)["messages"]]
    assert after == [*before, "second", retried["response"]]
