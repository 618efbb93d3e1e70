"""The cleanup job on a real APScheduler and a real Redis, shared by two "processes"."""

import asyncio
import time
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from adapters.cleanup_scheduler import CleanupScheduler
from adapters.redis_coordination import RedisJobLock
from adapters.redis_history import RedisHistory
from application.purge_histories import PurgeHistories
from domain.message import Message
from domain.session import SessionKey
from tests.support.redis_server import RedisServer

PREFIX = "chat-cleanup"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def scheduler_over(client: Redis, interval: int = 1) -> CleanupScheduler:
    history = RedisHistory(client, key_prefix=PREFIX, max_messages=10, ttl_seconds=0)
    purge = PurgeHistories(
        history, RedisJobLock(client, key_prefix=PREFIX), interval_seconds=interval
    )
    return CleanupScheduler(purge, interval_seconds=interval)


@pytest.mark.slow  # seconds of whole-second runs, like tests/e2e/test_cleanup.py
async def test_two_processes_purge_once_per_interval_in_total(
    two_clients: tuple[Redis, Redis],
) -> None:
    a, b = two_clients
    history = RedisHistory(a, key_prefix=PREFIX, max_messages=10, ttl_seconds=0)
    await history.append_exchange(
        SessionKey("public", "s"), Message("user", "q", NOW), Message("assistant", "a", NOW)
    )
    await a.set(f"{PREFIX}:not-a-history", "kept")
    first, second = scheduler_over(a), scheduler_over(b)

    started = time.time()
    first.start()
    second.start()
    await asyncio.sleep(3.3)
    first.shutdown()
    second.shutdown()
    elapsed = time.time() - started

    # Both fire on every whole second; each second, exactly one of them purges.
    slots = int(started + elapsed) - int(started)
    assert first.runs + second.runs in (slots - 1, slots), (first.runs, second.runs, slots)
    assert first.runs + second.runs >= 2
    assert await history.load(SessionKey("public", "s")) == []
    assert await a.get(f"{PREFIX}:not-a-history") == b"kept"


async def test_a_run_while_redis_is_down_is_skipped_not_raised(
    redis_server: RedisServer, two_clients: tuple[Redis, Redis]
) -> None:
    scheduler = scheduler_over(two_clients[0], interval=60)
    redis_server.stop()
    assert await scheduler.run_once() is None
    assert scheduler.runs == 0
    redis_server.start()
    assert await scheduler.run_once() == 0
    assert scheduler.runs == 1
