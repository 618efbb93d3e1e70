"""[redis] min_replicas_ack: an exchange is acknowledged only once that many replicas have it
(Redis WAIT, on the write's own connection, in the same round trip), so a primary that dies
right after a reply loses nothing the client was told. A primary and a replica, real servers."""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis

from adapters.redis_client import connect
from adapters.redis_history import REPLICAS_WAIT_MS, RedisHistory
from application.errors import HistoryUnavailable
from domain.message import Message
from domain.session import SessionKey
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    with RedisServer(tmp_path / "primary") as primary, RedisServer(tmp_path / "replica") as replica:
        yield primary, replica


@pytest.fixture
async def replica_client(pair: tuple[RedisServer, RedisServer]) -> AsyncIterator[Redis]:
    primary, replica = pair
    client = connect(replica.url)
    await client.execute_command("REPLICAOF", "127.0.0.1", primary.port)
    deadline = time.monotonic() + 10
    while (await client.info("replication")).get("master_link_status") != "up":
        assert time.monotonic() < deadline, "the replica did not sync"
        await asyncio.sleep(0.05)
    yield client
    await client.aclose()


def exchange(n: int) -> tuple[Message, Message]:
    return Message("user", f"question {n}", T0), Message("assistant", f"answer {n}", T0)


async def test_an_exchange_is_acknowledged_once_a_replica_has_it_and_refused_when_none_can(
    pair: tuple[RedisServer, RedisServer], replica_client: Redis
) -> None:
    primary, replica = pair
    client = connect(primary.url, retries=0)
    history = RedisHistory(
        client, key_prefix="acked", max_messages=10, ttl_seconds=60, min_replicas_ack=1
    )
    key = SessionKey("public", "s1")
    try:
        await history.append_exchange(key, *exchange(1))
        on_replica = await replica_client.lrange("acked:history:public:s1", 0, -1)
        assert len(on_replica) == 2  # it was there when the client was told

        replica.stop()
        started = time.monotonic()
        with pytest.raises(HistoryUnavailable, match="reached 0 of the 1 replicas"):
            await history.append_exchange(key, *exchange(2))
        assert time.monotonic() - started < REPLICAS_WAIT_MS / 1000 + 1

        unacked = RedisHistory(client, key_prefix="acked", max_messages=10, ttl_seconds=60)
        await unacked.append_exchange(key, *exchange(3))  # 0: no replica waited for
    finally:
        await client.aclose()
