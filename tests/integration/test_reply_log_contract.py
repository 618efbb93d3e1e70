"""The reply log's behaviour, run against MemoryReplyLog and RedisReplyLog alike."""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from adapters.memory_reply_log import MemoryReplyLog
from adapters.redis_reply_log import RedisReplyLog
from application.ports import Publication, Published, ReplyLog
from domain.answer import Usage
from domain.reply_events import (
    DeltaData,
    DoneData,
    EventData,
    ReplyEvent,
    SessionData,
    reply_event,
)
from domain.session import SessionKey

PREFIX = "chat-test"
KEY = SessionKey("public", "s-1")
LEASE = 0.3


def events(*texts: str, done: bool = False) -> list[ReplyEvent]:
    data: list[EventData] = [SessionData(KEY.session_id), *(DeltaData(t) for t in texts)]
    if done:
        data.append(DoneData(KEY.session_id, "".join(texts), Usage(1, 1, "estimate")))
    return [reply_event(seq, d) for seq, d in enumerate(data)]


async def publish(
    log: ReplyLog, key: SessionKey, reply_id: str, sent: list[ReplyEvent], published: int
) -> Published:
    [outcome] = await log.publish([Publication(key, reply_id, sent, published)])
    return outcome


@dataclass
class LogStore:
    make: Callable[[], ReplyLog]
    forget_all: Callable[[], Awaitable[None]]  # what a store restart without persistence does


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> LogStore:
    if request.param == "memory":
        logs: list[MemoryReplyLog] = []

        def make_memory() -> ReplyLog:
            logs.append(MemoryReplyLog(keep_seconds=60, lease_seconds=LEASE))
            return logs[-1]

        async def forget_memory() -> None:
            for log in logs:
                log._replies.clear()
                log._latest.clear()

        return LogStore(make_memory, forget_memory)
    client: Redis = request.getfixturevalue("redis_client")

    async def forget_redis() -> None:
        await client.flushdb()

    return LogStore(
        lambda: RedisReplyLog(client, key_prefix=PREFIX, keep_seconds=60, lease_seconds=LEASE),
        forget_redis,
    )


async def test_an_unknown_reply_or_session_is_none(store: LogStore) -> None:
    log = store.make()

    assert await log.latest(KEY) is None
    assert await log.read(KEY, "0123456789abcdef", -1, 0) is None
    assert await log.request_stop(KEY) is False


async def test_events_published_in_batches_read_back_from_any_point(store: LogStore) -> None:
    log = store.make()
    sent = events("Once", " upon", " a", " time", done=True)

    first = await publish(log, KEY, "r1", sent[:3], -1)
    second = await publish(log, KEY, "r1", sent, first.upto)

    assert (first.upto, second.upto) == (2, 5)
    assert await log.latest(KEY) == "r1"
    whole = await log.read(KEY, "r1", -1, 0)
    assert whole is not None
    assert whole.events == sent
    assert whole.running is False
    for after in range(-1, 6):
        part = await log.read(KEY, "r1", after, 0)
        assert part is not None
        assert part.events == sent[after + 1 :]


async def test_a_reader_waits_for_the_next_batch(store: LogStore) -> None:
    log = store.make()
    sent = events("a", "b")
    await publish(log, KEY, "r1", sent[:2], -1)

    async def later() -> None:
        await asyncio.sleep(0.1)
        await publish(log, KEY, "r1", sent, 1)

    publisher = asyncio.create_task(later())
    read = await log.read(KEY, "r1", 1, wait_seconds=2)
    await publisher

    assert read is not None
    assert read.events == sent[2:]
    assert read.running


async def test_a_lease_not_renewed_shows_the_producer_gone(store: LogStore) -> None:
    log = store.make()
    await publish(log, KEY, "r1", events("a"), -1)

    running = await log.read(KEY, "r1", 1, 0)
    await asyncio.sleep(LEASE + 0.1)
    gone = await log.read(KEY, "r1", 1, wait_seconds=0.2)

    assert running is not None
    assert running.running
    assert gone is not None
    assert gone.events == []
    assert not gone.running


async def test_a_stop_request_reaches_the_producer_of_the_latest_reply(store: LogStore) -> None:
    log = store.make()
    first = await publish(log, KEY, "r1", events("a"), -1)

    assert await log.request_stop(KEY) is True
    assert (await publish(log, KEY, "r1", events("a"), first.upto)).stop_requested


async def test_an_ended_reply_cannot_be_stopped(store: LogStore) -> None:
    log = store.make()
    await publish(log, KEY, "r1", events("a", done=True), -1)

    assert await log.request_stop(KEY) is False


async def test_the_latest_reply_is_the_last_started(store: LogStore) -> None:
    log = store.make()
    first = await publish(log, KEY, "r1", events("a"), -1)
    await publish(log, KEY, "r2", events("b"), -1)
    await publish(log, KEY, "r1", events("a", "c"), first.upto)

    assert await log.latest(KEY) == "r2"


async def test_sessions_and_namespaces_are_apart(store: LogStore) -> None:
    log = store.make()
    await publish(log, KEY, "r1", events("a"), -1)

    assert await log.latest(SessionKey("other", KEY.session_id)) is None
    assert await log.latest(SessionKey(KEY.namespace, "s-2")) is None
    assert await log.read(SessionKey("other", KEY.session_id), "r1", -1, 0) is None


async def test_a_reply_the_store_lost_is_published_whole_again(store: LogStore) -> None:
    log = store.make()
    sent = events("a", "b", "c")
    first = await publish(log, KEY, "r1", sent[:2], -1)

    await store.forget_all()
    again = await publish(log, KEY, "r1", sent, first.upto)

    read = await log.read(KEY, "r1", -1, 0)
    assert again.upto == 3
    assert read is not None
    assert read.events == sent
    assert await log.latest(KEY) == "r1"


async def test_a_batch_publishes_every_reply_in_it(store: LogStore) -> None:
    log = store.make()
    keys = [SessionKey("public", f"s-{n}") for n in range(5)]
    first = await log.publish(
        [Publication(k, f"r{n}", events("a"), -1) for n, k in enumerate(keys)]
    )
    second = await log.publish(
        [Publication(k, f"r{n}", events("a", done=True), 1) for n, k in enumerate(keys)]
    )

    assert [p.upto for p in first] == [1] * 5
    assert [p.upto for p in second] == [2] * 5
    for n, key in enumerate(keys):
        assert await log.latest(key) == f"r{n}"
        read = await log.read(key, f"r{n}", -1, 0)
        assert read is not None
        assert [e.name for e in read.events] == ["session", "delta", "done"]
