"""The Redis lock and rate limiter hold across processes: two clients stand in for two."""

import asyncio
import time

from redis.asyncio import Redis

from adapters.redis_coordination import RedisJobLock, RedisRateLimiter

PREFIX = "chat-test"


async def start_of_a_window(window_seconds: int, needed: float = 1.0) -> None:
    """Wait for the next window if this one ends too soon for the test to fit in it."""
    left = window_seconds - time.time() % window_seconds
    if left < needed:
        await asyncio.sleep(left + 0.01)


async def test_exactly_one_process_claims_a_lock(two_clients: tuple[Redis, Redis]) -> None:
    locks = [RedisJobLock(client, key_prefix=PREFIX) for client in two_clients] * 5

    claims = await asyncio.gather(*(lock.claim("purge", 60) for lock in locks))

    assert claims.count(True) == 1


async def test_a_lock_can_be_claimed_again_after_its_ttl(
    two_clients: tuple[Redis, Redis],
) -> None:
    first, second = (RedisJobLock(client, key_prefix=PREFIX) for client in two_clients)
    assert await first.claim("purge", 1)
    assert not await second.claim("purge", 1)
    assert await second.claim("another-job", 1)

    await asyncio.sleep(1.05)

    assert await second.claim("purge", 1)
    assert not await first.claim("purge", 1)


async def test_clients_share_one_rate_limit_budget(two_clients: tuple[Redis, Redis]) -> None:
    limiters = [
        RedisRateLimiter(client, key_prefix=PREFIX, limit=5, window_seconds=60)
        for client in two_clients
    ]
    await start_of_a_window(60)

    results = await asyncio.gather(*(limiters[n % 2].hit("10.0.0.1") for n in range(10)))

    assert results.count(None) == 5
    assert all(0 < retry_after <= 60 for retry_after in results if retry_after is not None)
    assert await limiters[0].hit("10.0.0.2") is None


async def test_retry_after_is_when_the_identity_is_admitted_again(redis_client: Redis) -> None:
    limiter = RedisRateLimiter(redis_client, key_prefix=PREFIX, limit=1, window_seconds=1)
    await start_of_a_window(1, needed=0.5)
    assert await limiter.hit("10.0.0.1") is None

    retry_after = await limiter.hit("10.0.0.1")

    assert retry_after is not None
    assert 0 < retry_after <= 1
    await asyncio.sleep(retry_after)
    assert await limiter.hit("10.0.0.1") is None


async def test_coordination_keys_are_prefixed_and_expire(redis_client: Redis) -> None:
    await RedisJobLock(redis_client, key_prefix=PREFIX).claim("purge", 60)
    limiter = RedisRateLimiter(redis_client, key_prefix=PREFIX, limit=5, window_seconds=60)
    await limiter.hit("10.0.0.1")

    names = [name.decode() async for name in redis_client.scan_iter()]

    assert len(names) == 2
    assert all(name.startswith(f"{PREFIX}:") for name in names)
    assert all([0 < await redis_client.ttl(name) <= 120 for name in names])
