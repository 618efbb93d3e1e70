"""What only the Redis history can get wrong: key layout, purging, round trips, outages."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from adapters.redis_client import connect
from adapters.redis_coordination import RedisJobLock, RedisRateLimiter
from adapters.redis_history import RedisHistory
from application.errors import HistoryUnavailable
from domain.idempotency import Receipt, Reply
from domain.message import Message
from domain.session import SessionInfo, SessionKey
from tests.support.redis_server import RedisServer

PREFIX = "chat-test"
KEY = SessionKey("public", "s-1")
T0 = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
OPENED = SessionInfo(T0, {"topic": "demo"})
HISTORY = f"{PREFIX}:history:public:s-1"
RECORD = f"{{{HISTORY}}}:session"


def exchange(n: int) -> tuple[Message, Message]:
    asked_at = T0 + timedelta(seconds=n, microseconds=n)
    return (
        Message("user", f"question {n}", asked_at),
        Message("assistant", f"answer {n}", asked_at + timedelta(microseconds=1)),
    )


def redis_history(client: Redis, key_prefix: str = PREFIX, ttl_seconds: int = 3600) -> RedisHistory:
    return RedisHistory(client, key_prefix=key_prefix, max_messages=20, ttl_seconds=ttl_seconds)


async def all_keys(client: Redis) -> set[str]:
    return {name.decode() async for name in client.scan_iter(count=1000)}


@pytest.fixture
def history(redis_client: Redis) -> RedisHistory:
    return redis_history(redis_client)


async def test_every_key_is_the_prefixed_session_key(
    redis_client: Redis, history: RedisHistory
) -> None:
    keys = [SessionKey("public", "a"), SessionKey("0f" * 16, "a"), SessionKey("public", "b.c:d")]
    for n, key in enumerate(keys):
        await history.append_exchange(key, *exchange(n))

    assert await all_keys(redis_client) == {
        f"{PREFIX}:history:public:a",
        f"{PREFIX}:history:{'0f' * 16}:a",
        f"{PREFIX}:history:public:b.c:d",
    }


async def test_the_session_record_sits_in_its_history_keys_cluster_slot(
    redis_client: Redis, history: RedisHistory
) -> None:
    await history.open(KEY, OPENED)
    await history.append_exchange(KEY, *exchange(1))

    assert await all_keys(redis_client) == {HISTORY, RECORD}
    assert key_slot(RECORD.encode()) == key_slot(HISTORY.encode())


async def test_an_exchange_and_its_receipt_are_written_in_one_cluster_slot(
    redis_client: Redis, history: RedisHistory
) -> None:
    """So that one script can write both in a Redis Cluster: the receipt sits beside the
    history; the key's index (which session the key belongs to) in a slot of its own."""
    pending = Receipt("public", "key{1}", "fingerprint", session_id=KEY.session_id)
    await history.claim(pending, ttl_seconds=60)
    answered = msgspec.structs.replace(pending, reply=Reply(KEY.session_id, "answer 1"))
    await history.append_exchange(KEY, *exchange(1), answered)

    receipt = f"{{{HISTORY}}}:receipt:key{{1}}"
    assert await all_keys(redis_client) == {HISTORY, receipt, f"{PREFIX}:receipt:public:key{{1}}"}
    assert key_slot(receipt.encode()) == key_slot(HISTORY.encode())


async def test_ttl_zero_makes_an_expiring_history_persistent(redis_client: Redis) -> None:
    await redis_history(redis_client, ttl_seconds=60).append_exchange(KEY, *exchange(1))
    name = f"{PREFIX}:history:public:s-1"
    assert 59_000 < await redis_client.pttl(name) <= 60_000

    await redis_history(redis_client, ttl_seconds=0).append_exchange(KEY, *exchange(2))

    assert await redis_client.pttl(name) == -1


async def test_ttl_zero_makes_an_expiring_session_record_persistent(redis_client: Redis) -> None:
    await redis_history(redis_client, ttl_seconds=60).open(KEY, OPENED)
    assert 59_000 < await redis_client.pttl(RECORD) <= 60_000

    await redis_history(redis_client, ttl_seconds=0).append_exchange(KEY, *exchange(1))

    assert await redis_client.pttl(RECORD) == -1


async def test_an_unreadable_session_record_reads_as_none_with_a_warning(
    redis_client: Redis, history: RedisHistory, caplog: pytest.LogCaptureFixture
) -> None:
    await redis_client.set(RECORD, b"\xc1 not msgpack")

    with caplog.at_level(logging.WARNING, logger="adapters.redis_history"):
        assert await history.info(KEY) is None

    assert "unreadable record of session s-1" in caplog.text


async def test_purge_deletes_only_history_keys(redis_client: Redis, history: RedisHistory) -> None:
    for n in range(3):
        await history.append_exchange(SessionKey("public", f"s{n}"), *exchange(n))
    other_app = redis_history(redis_client, key_prefix="other-app")
    await other_app.append_exchange(KEY, *exchange(9))
    await RedisJobLock(redis_client, key_prefix=PREFIX).claim("cleanup", 60)
    await RedisRateLimiter(redis_client, key_prefix=PREFIX, limit=5, window_seconds=60).hit("ip")
    await redis_client.set(f"{PREFIX}:other", "kept")
    await redis_client.set(f"{PREFIX}:historyish", "kept")
    await redis_client.set("unrelated", "kept")
    survivors = await all_keys(redis_client) - {f"{PREFIX}:history:public:s{n}" for n in range(3)}

    assert await history.purge() == 3

    assert await all_keys(redis_client) == survivors
    assert len(survivors) == 6
    assert await other_app.load(KEY) == list(exchange(9))


async def test_purge_deletes_session_records_but_not_the_reply_logs_keys_tagged_alike(
    redis_client: Redis, history: RedisHistory
) -> None:
    await history.open(KEY, OPENED)
    await history.open(SessionKey("public", "silent"), OPENED)
    reply_log_keys = {f"{{{HISTORY}}}:reply:r1", f"{{{HISTORY}}}:latest-reply"}
    for name in reply_log_keys:
        await redis_client.set(name, "kept")
    await redis_history(redis_client, key_prefix="other-app").open(KEY, OPENED)

    assert await history.purge() == 0

    assert await all_keys(redis_client) == {
        *reply_log_keys,
        "{other-app:history:public:s-1}:session",
    }


async def test_purge_spans_many_scan_batches(redis_client: Redis, history: RedisHistory) -> None:
    for n in range(1_200):
        await history.open(SessionKey("public", f"s{n}"), OPENED)
        await history.append_exchange(SessionKey("public", f"s{n}"), *exchange(n))
    await redis_client.set(f"{PREFIX}:other", "kept")

    assert await history.purge(written_before=exchange(700)[0].created_at) == 700
    assert len(await all_keys(redis_client)) == 1 + 2 * 500
    assert await history.purge() == 500

    assert await all_keys(redis_client) == {f"{PREFIX}:other"}


async def test_idle_purge_deletes_a_history_whose_newest_entry_is_unreadable(
    redis_client: Redis, history: RedisHistory
) -> None:
    await history.append_exchange(KEY, *exchange(1))
    await redis_client.rpush(f"{PREFIX}:history:public:s-1", b"\xc1 not msgpack")

    assert await history.purge(written_before=exchange(0)[0].created_at) == 1


async def test_a_history_written_while_the_idle_purge_runs_keeps_that_write(
    redis_client: Redis, history: RedisHistory
) -> None:
    """Each idle history is unlinked only if its newest entry is still the one judged idle."""
    keys = [SessionKey("public", f"s{n}") for n in range(2_000)]
    for n, key in enumerate(keys):
        await history.append_exchange(key, *exchange(n))
    late = [exchange(5_000 + n) for n in range(len(keys))]

    async def keep_talking() -> None:
        for key, pair in zip(keys[::-1], late, strict=False):
            await history.append_exchange(key, *pair)

    await asyncio.gather(
        history.purge(written_before=exchange(3_000)[0].created_at), keep_talking()
    )

    for key, pair in zip(keys[::-1], late, strict=False):
        assert (await history.load(key))[-2:] == list(pair), key


async def test_purge_treats_glob_characters_in_the_prefix_literally(
    redis_client: Redis,
) -> None:
    globby = redis_history(redis_client, key_prefix="a*b[1]")
    lookalike = redis_history(redis_client, key_prefix="aXb1")
    await globby.append_exchange(KEY, *exchange(1))
    await globby.open(KEY, OPENED)
    await lookalike.append_exchange(KEY, *exchange(2))
    await lookalike.append_exchange(SessionKey("public", "s-2"), *exchange(3))
    await lookalike.open(KEY, OPENED)

    assert await globby.purge() == 1

    assert await globby.load(KEY) == []
    assert await lookalike.load(KEY) == list(exchange(2))
    assert await all_keys(redis_client) == {
        "aXb1:history:public:s-1",
        "aXb1:history:public:s-2",
        "{aXb1:history:public:s-1}:session",
    }


async def commands_sent(
    client: Redis, url: str, action: Callable[[], Awaitable[object]]
) -> list[str]:
    """The names of the commands `action` sent to Redis, as MONITOR saw them arrive."""
    sentinel = "end-of-action"
    watcher = connect(url)
    try:
        async with watcher.monitor() as monitor:
            await action()
            await client.echo(sentinel)
            names = []
            while (command := await monitor.next_command())["command"] != f"ECHO {sentinel}":
                if command["client_type"] != "lua":  # commands run by a script
                    names.append(command["command"].split(" ", 1)[0].lower())
    finally:
        await watcher.aclose()
    return names


async def test_one_read_is_one_lrange_and_one_write_is_one_evalsha(
    redis_server: RedisServer, redis_client: Redis, history: RedisHistory
) -> None:
    await history.open(KEY, OPENED)
    await history.append_exchange(KEY, *exchange(1))  # opens the connection, loads the script
    url = redis_server.url

    assert await commands_sent(redis_client, url, lambda: history.load(KEY)) == ["lrange"]
    assert await commands_sent(
        redis_client, url, lambda: history.append_exchange(KEY, *exchange(2))
    ) == ["evalsha"]


async def test_delete_is_one_unlink_of_the_history_and_its_record(
    redis_server: RedisServer, redis_client: Redis, history: RedisHistory
) -> None:
    await history.open(KEY, OPENED)
    await history.append_exchange(KEY, *exchange(1))

    sent = await commands_sent(redis_client, redis_server.url, lambda: history.delete(KEY))

    assert sent == ["unlink"]
    assert await all_keys(redis_client) == set()


async def test_undecodable_entries_are_skipped(redis_client: Redis, history: RedisHistory) -> None:
    await history.append_exchange(KEY, *exchange(1))
    name = f"{PREFIX}:history:public:s-1"
    await redis_client.rpush(
        name,
        b"\xc1 not msgpack",
        msgspec.msgpack.encode(["user"]),  # too short
        msgspec.msgpack.encode(["system", "hi", T0]),  # not a role
        msgspec.msgpack.encode(["user", "hi", "yesterday"]),  # not a datetime
    )
    await history.append_exchange(KEY, *exchange(2))

    assert await history.load(KEY) == [*exchange(1), *exchange(2)]


async def test_entries_written_before_replies_named_their_model_still_read(
    redis_client: Redis, history: RedisHistory
) -> None:
    question, answer = exchange(1)
    await redis_client.rpush(
        f"{PREFIX}:history:public:s-1",
        msgspec.msgpack.encode([question.role, question.content, question.created_at]),
        msgspec.msgpack.encode([answer.role, answer.content, answer.created_at]),
    )

    assert await history.load(KEY) == [question, answer]


@pytest.fixture
def persistent_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis", persistent=True) as server:
        yield server


async def test_stopped_redis_raises_history_unavailable_within_seconds(
    redis_server: RedisServer, history: RedisHistory
) -> None:
    await history.append_exchange(KEY, *exchange(1))
    redis_server.stop()

    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: history.load(KEY),
        lambda: history.append_exchange(KEY, *exchange(2)),
        history.ping,
        lambda: history.delete(KEY),
        lambda: history.open(KEY, OPENED),
        lambda: history.info(KEY),
        history.purge,
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(HistoryUnavailable):
            await call()
        assert time.monotonic() - started < 5


async def test_same_client_works_again_after_an_outage(
    redis_server: RedisServer, history: RedisHistory
) -> None:
    await history.append_exchange(KEY, *exchange(1))
    redis_server.stop()
    with pytest.raises(HistoryUnavailable):
        await history.ping()

    redis_server.start()

    await history.ping()
    await history.append_exchange(KEY, *exchange(2))  # the restarted server lost the script
    assert await history.load(KEY) == list(exchange(2))


async def test_same_client_works_right_after_a_restart_it_did_not_see(
    redis_server: RedisServer, history: RedisHistory
) -> None:
    """The pooled connection died with the old server; the client must reconnect, not fail."""
    await history.append_exchange(KEY, *exchange(1))

    redis_server.restart()

    assert await history.load(KEY) == []
    await history.append_exchange(KEY, *exchange(2))
    await history.ping()


async def test_a_write_that_failed_while_redis_was_down_left_nothing_behind(
    persistent_server: RedisServer,
) -> None:
    client = connect(persistent_server.url)
    try:
        history = redis_history(client)
        await history.append_exchange(KEY, *exchange(1))
        persistent_server.stop()
        with pytest.raises(HistoryUnavailable):
            await history.append_exchange(KEY, *exchange(2))

        persistent_server.start()

        assert await history.load(KEY) == list(exchange(1))
    finally:
        await client.aclose()
