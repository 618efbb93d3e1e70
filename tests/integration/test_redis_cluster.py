"""The Redis adapters on a real Redis Cluster (3 primaries, 3 replicas): the cleanup reaches
every primary, and what spans several keys (a batch of replies, the models' statuses) is
answered across nodes. The service end to end on a Cluster: tests/e2e/test_redis_modes.py."""

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from adapters.redis_client import connect
from adapters.redis_history import RedisHistory
from adapters.redis_model_health import RedisModelHealth
from adapters.redis_reply_log import RedisReplyLog
from application.errors import HistoryUnavailable
from application.ports import Publication, TokenSample
from domain.message import Message
from domain.reply_events import DeltaData, SessionData, reply_event
from domain.session import SessionKey
from tests.support.redis_cluster import RedisCluster

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
async def client(redis_cluster: RedisCluster) -> AsyncIterator[Redis]:
    client = connect(redis_cluster.url)
    yield client
    await client.aclose()
    redis_cluster.flushall()


def exchange(at: datetime) -> tuple[Message, Message]:
    return Message("user", "question", at), Message("assistant", "answer", at)


async def test_the_cleanup_reaches_every_primary(
    redis_cluster: RedisCluster, client: Redis
) -> None:
    history = RedisHistory(client, key_prefix="purged", max_messages=10, ttl_seconds=0)
    idle = [SessionKey("public", f"idle-{n}") for n in range(12)]
    for key in idle:
        await history.append_exchange(key, *exchange(T0))
    recent = SessionKey("public", "recent")
    await history.append_exchange(recent, *exchange(T0 + timedelta(hours=2)))
    assert all(node.call("DBSIZE") > 0 for node in redis_cluster.primaries())

    assert await history.purge(written_before=T0 + timedelta(hours=1)) == len(idle)

    assert [await history.load(key) for key in idle] == [[]] * len(idle)
    assert await history.load(recent) == list(exchange(T0 + timedelta(hours=2)))
    assert await history.purge() == 1


async def test_batches_over_many_slots_are_answered_whole(client: Redis) -> None:
    log = RedisReplyLog(client, key_prefix="batched", keep_seconds=60, lease_seconds=5)
    sessions = [SessionKey("public", f"s{n}") for n in range(8)]
    events = [reply_event(0, SessionData("s")), reply_event(1, DeltaData("text"))]
    batch = [Publication(key, f"reply-{n}", events, -1) for n, key in enumerate(sessions)]

    published = await log.publish(batch)

    assert [p.upto for p in published] == [1] * len(sessions)
    read = await log.read(sessions[5], "reply-5", -1, 0)
    assert read is not None
    assert [event.seq for event in read.events] == [0, 1]

    health = RedisModelHealth(client, key_prefix="batched", cooldown_seconds=5, cooldown_failures=1)
    names = [f"model-{n}" for n in range(6)]
    await health.failed("model-3")
    statuses = await health.statuses(names, {"model-1": TokenSample(100, 400)})
    assert statuses["model-3"].cooling_seconds > 0
    assert statuses["model-1"].tokens_per_char == pytest.approx(0.25)


async def test_min_replicas_ack_waits_on_the_node_that_took_the_write(
    redis_cluster: RedisCluster, client: Redis
) -> None:
    """WAIT counts the replicas of the connection's own writes: it goes to the keys' primary
    on the connection of the append. With that primary's replica gone, no turn is acked."""
    history = RedisHistory(
        client, key_prefix="acked", max_messages=10, ttl_seconds=0, min_replicas_ack=1
    )
    key = SessionKey("public", "acked")
    await history.append_exchange(key, *exchange(T0))

    primary = redis_cluster.node_for_key(f"acked:history:{key.namespace}:{key.session_id}")
    [replica] = [n for n in redis_cluster.replicas() if n.call("ROLE")[2] == primary.port]
    redis_cluster.kill(replica)
    with pytest.raises(HistoryUnavailable, match="reached 0 of the 1 replicas"):
        await history.append_exchange(key, *exchange(T0 + timedelta(seconds=1)))
    redis_cluster.restart(replica)
