"""StoreCall's deadline: Redis's silence fails a call in time; a worker's own busy event loop
does not (the answer may be waiting unread), within a bound."""

import asyncio
import time

import pytest

from adapters.redis_client import BUSY_LOOP_EXTENSIONS, StoreCall
from application.errors import HistoryUnavailable

pytestmark = pytest.mark.unit

SECONDS = 0.2


async def hog_the_loop(seconds: float) -> None:
    """What an overloaded worker does to its loop: callbacks that each hold it 0.1 s."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        time.sleep(0.1)  # noqa: ASYNC251  (holding the loop is the point)
        await asyncio.sleep(0)


async def test_a_silent_store_fails_the_call_at_its_deadline() -> None:
    started = time.monotonic()
    with pytest.raises(HistoryUnavailable, match="the store is down"):
        async with StoreCall("the store is down", SECONDS):
            await asyncio.sleep(10)
    assert SECONDS <= time.monotonic() - started < SECONDS + 0.15


async def test_a_call_whose_deadline_comes_while_the_loop_runs_late_gets_more_time() -> None:
    hog = asyncio.create_task(hog_the_loop(3 * SECONDS))
    async with StoreCall("the store is down", SECONDS):
        await asyncio.sleep(2 * SECONDS)  # an answer the loop is too busy to read in time
    await hog


async def test_a_loop_that_stays_late_still_fails_the_call_in_the_end() -> None:
    bound = (BUSY_LOOP_EXTENSIONS + 1) * (SECONDS + 0.1) + 0.5
    hog = asyncio.create_task(hog_the_loop(bound + 1))
    started = time.monotonic()
    try:
        with pytest.raises(HistoryUnavailable):
            async with StoreCall("the store is down", SECONDS):
                await asyncio.sleep(100)
        assert time.monotonic() - started < bound
    finally:
        hog.cancel()
