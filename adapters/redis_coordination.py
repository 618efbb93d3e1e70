"""Job lock and rate limiter shared by every process using one Redis."""

import math
import time

from redis.asyncio import Redis

from adapters.redis_client import StoreCalls, StoreObserver


class RedisJobLock:
    def __init__(
        self, client: Redis, *, key_prefix: str, observe: StoreObserver | None = None
    ) -> None:
        self._client = client
        self._prefix = f"{key_prefix}:lock:"
        self._call = StoreCalls("the history store is unavailable", observe)

    async def claim(self, name: str, ttl_seconds: int) -> bool:
        async with self._call("job_lock.claim"):
            return bool(await self._client.set(self._prefix + name, 1, nx=True, ex=ttl_seconds))


class RedisRateLimiter:
    """Fixed windows counted with INCR, so every worker and replica shares one count."""

    def __init__(
        self,
        client: Redis,
        *,
        key_prefix: str,
        limit: int,
        window_seconds: int,
        observe: StoreObserver | None = None,
    ) -> None:
        self._client = client
        self._call = StoreCalls("the rate limit store is unavailable", observe)
        self._prefix = f"{key_prefix}:ratelimit:"
        self._limit = limit
        self._window = window_seconds

    async def hit(self, identity: str) -> float | None:
        now = time.time()
        window = int(now // self._window)
        key = f"{self._prefix}{identity}:{window}"
        async with (
            self._call("rate_limit.hit"),
            self._client.pipeline(transaction=True) as pipe,
        ):
            pipe.incr(key)
            pipe.expire(key, 2 * self._window)
            count, _ = await pipe.execute()
        if count <= self._limit:
            return None
        return max(1.0, math.ceil((window + 1) * self._window - now))
