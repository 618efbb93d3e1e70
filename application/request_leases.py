import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from application.errors import HistoryUnavailable, IdempotencyConflict
from application.ports import ChatHistory
from application.telemetry import UNOBSERVED, Telemetry
from domain.idempotency import Receipt

T = TypeVar("T")

ANOTHER_REQUEST = (
    "this Idempotency-Key was already used for a different request (another session_id or "
    "message); use a new key for a new request"
)
STILL_RUNNING = "a request with this Idempotency-Key is still in progress; retry later"


class RequestLeases:
    """Who runs the request an Idempotency-Key names: claim, renew, release.

    A request holds its key on a short lease, renewed while it runs, so the key of a request
    whose process died (or whose release failed with the store) is free again within one
    lease. The clock and the sleep are injectable, so tests need not wait. A repeat answered
    from its receipt, or following the first as it runs, is told to the telemetry.
    """

    def __init__(
        self,
        receipts: ChatHistory,
        *,
        in_flight_seconds: float,
        lease_seconds: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        telemetry: Telemetry = UNOBSERVED,
    ) -> None:
        self._receipts = receipts
        self._in_flight = in_flight_seconds
        self._lease = lease_seconds
        self._sleep = sleep
        self._now = monotonic
        self._telemetry = telemetry

    async def claim(self, pending: Receipt) -> Receipt | None:
        """None once this request owns its key; otherwise the same request's receipt, once
        it has its reply. A conflict if another request holds the key, or if the first
        still runs after in_flight_seconds."""
        return await self.claim_or_follow(pending, _not_yet)

    async def claim_or_follow(
        self, pending: Receipt, follow: Callable[[Receipt], Awaitable[T | None]]
    ) -> Receipt | T | None:
        """As claim, but while the first request runs, `follow(its receipt)` is asked
        whether it can be followed as it runs; what it returns, if not None, is returned."""
        deadline = self._now() + self._in_flight
        pause = 0.02
        while True:
            held = await self._receipts.claim(pending, ttl_seconds=self._lease)
            if held is None:
                return None
            if held.fingerprint != pending.fingerprint:
                raise IdempotencyConflict(ANOTHER_REQUEST)
            if held.reply is not None:
                self._telemetry.replayed()
                return held
            if (following := await follow(held)) is not None:
                self._telemetry.replayed()
                return following
            if self._now() + pause > deadline:
                raise IdempotencyConflict(STILL_RUNNING)
            await self._sleep(pause)
            pause = min(pause * 2, 0.5)

    async def keep(self, pending: Receipt) -> None:
        """Renew the lease until cancelled; a store that fails meanwhile is tried again."""
        while True:
            await self._sleep(self._lease / 3)
            with contextlib.suppress(HistoryUnavailable):
                await self._receipts.extend(pending, ttl_seconds=self._lease)

    async def release(self, pending: Receipt) -> None:
        """Forget a request that failed, so a repeat runs again. If the store is down the
        lease simply runs out."""
        with contextlib.suppress(HistoryUnavailable):
            await self._receipts.release(pending)


async def _not_yet(_: Receipt) -> None:
    return None
