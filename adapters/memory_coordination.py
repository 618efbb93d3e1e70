"""Job lock and rate limiter for a single process: what the Redis ones do across processes."""

import math
import time
from collections.abc import Callable


class MemoryJobLock:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._now = monotonic
        self._held: dict[str, float] = {}

    async def claim(self, name: str, ttl_seconds: int) -> bool:
        now = self._now()
        if self._held.get(name, 0.0) > now:
            return False
        self._held = {n: t for n, t in self._held.items() if t > now}
        self._held[name] = now + ttl_seconds
        return True


class MemoryRateLimiter:
    """Fixed windows of window_seconds, limit requests each, per identity."""

    def __init__(
        self, *, limit: int, window_seconds: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._limit = limit
        self._window = window_seconds
        self._clock = clock
        self._counts: dict[tuple[str, int], int] = {}

    async def hit(self, identity: str) -> float | None:
        now = self._clock()
        window = int(now // self._window)
        if len(self._counts) > 10_000:
            self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
        count = self._counts[identity, window] = self._counts.get((identity, window), 0) + 1
        if count <= self._limit:
            return None
        return max(1.0, math.ceil((window + 1) * self._window - now))
