"""The service's Redis connection pool (adapters.redis_client.connect) on a real redis-server:
at its cap, commands wait for a connection to come back instead of failing, and the wait
is bounded by the store call's deadline."""

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from adapters.redis_client import StoreCall, connect
from adapters.redis_history import RedisHistory
from application.errors import HistoryUnavailable
from domain.session import SessionKey
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

CAP = 2


@pytest.fixture
async def capped(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = connect(redis_server.url, max_connections=CAP)
    yield client
    await client.aclose()


async def test_at_its_cap_the_pool_makes_commands_wait_not_fail(
    capped: Redis, redis_client: Redis
) -> None:
    history = RedisHistory(capped, key_prefix="pool", max_messages=10, ttl_seconds=60)
    loads = [history.load(SessionKey("public", f"s{n}")) for n in range(50)]

    answers = await asyncio.gather(*loads, return_exceptions=True)

    assert [a for a in answers if isinstance(a, BaseException)] == []
    clients = await redis_client.client_list()
    assert len(clients) <= CAP + 1  # the pool's, and the one asking


async def test_a_wait_for_a_connection_ends_with_the_store_calls_deadline(
    redis_server: RedisServer,
) -> None:
    proxy = TcpProxy(redis_server.port)
    await proxy.start()
    client = connect(proxy.redis_url, max_connections=1)
    try:
        await client.ping()  # the one connection, opened
        proxy.stall()  # it now never answers

        async def call() -> None:
            async with StoreCall("the store is unavailable", 0.5):
                await client.get("key")

        started = time.monotonic()
        answers = await asyncio.gather(call(), call(), call(), return_exceptions=True)

        assert all(isinstance(a, HistoryUnavailable) for a in answers), answers
        assert time.monotonic() - started < 2.0
    finally:
        await client.aclose()
        await proxy.stop()
