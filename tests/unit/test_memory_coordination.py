"""The in-memory lock and rate limiter: the Redis ones' rules, within one process."""

import asyncio

from adapters.memory_coordination import MemoryJobLock, MemoryRateLimiter


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_exactly_one_concurrent_claim_wins() -> None:
    lock = MemoryJobLock(FakeClock(1_000.0))

    claims = await asyncio.gather(*(lock.claim("purge", 60) for _ in range(10)))

    assert claims.count(True) == 1


async def test_a_lock_can_be_claimed_again_after_its_ttl() -> None:
    clock = FakeClock(1_000.0)
    lock = MemoryJobLock(clock)
    assert await lock.claim("purge", 60)
    assert await lock.claim("another-job", 60)

    clock.now += 59.9
    assert not await lock.claim("purge", 60)
    clock.now += 0.1
    assert await lock.claim("purge", 60)
    assert not await lock.claim("purge", 60)


async def test_rate_limit_admits_limit_requests_per_window() -> None:
    clock = FakeClock(60 * 1_000 + 15.5)  # 15.5 s into a 60 s window
    limiter = MemoryRateLimiter(limit=5, window_seconds=60, clock=clock)

    results = [await limiter.hit("10.0.0.1") for _ in range(7)]

    assert results[:5] == [None] * 5
    assert results[5:] == [45, 45]
    assert await limiter.hit("10.0.0.2") is None


async def test_retry_after_is_when_the_identity_is_admitted_again() -> None:
    clock = FakeClock(60 * 1_000 + 59.5)  # half a second before the window ends
    limiter = MemoryRateLimiter(limit=1, window_seconds=60, clock=clock)
    assert await limiter.hit("10.0.0.1") is None

    retry_after = await limiter.hit("10.0.0.1")

    assert retry_after is not None
    assert 0 < retry_after <= 60
    clock.now += retry_after
    assert await limiter.hit("10.0.0.1") is None
