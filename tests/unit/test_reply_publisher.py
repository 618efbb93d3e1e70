"""ReplyPublisher: every running reply of a process in one log call per flush."""

import asyncio
import logging
from collections.abc import Sequence

import pytest

from adapters.memory_reply_log import MemoryReplyLog
from application.errors import HistoryUnavailable
from application.ports import Publication, Published
from application.reply_publisher import FLUSH_SECONDS, ReplyPublisher
from application.reply_run import ReplyRun
from domain.answer import Usage
from domain.reply_events import DeltaData, DoneData, SessionData
from domain.session import SessionKey


class CountingLog(MemoryReplyLog):
    def __init__(self) -> None:
        super().__init__(keep_seconds=60, lease_seconds=3)
        self.batches: list[int] = []

    async def publish(self, batch: Sequence[Publication]) -> list[Published]:
        self.batches.append(len(batch))
        return await super().publish(batch)


async def test_many_replies_share_one_call_per_flush() -> None:
    log = CountingLog()
    publisher = ReplyPublisher(log)
    runs = [ReplyRun(SessionKey("ns", f"s{n}"), f"{n:016x}") for n in range(20)]
    for run in runs:
        run.emit(SessionData(run.key.session_id))
    published = [asyncio.create_task(publisher.publish(run)) for run in runs]

    for _ in range(round(0.5 / 0.02)):  # every reply writes a token every 20 ms for 0.5 s
        for run in runs:
            run.emit(DeltaData("word "))
        await asyncio.sleep(0.02)
    for run in runs:
        run.emit(DoneData(run.key.session_id, "...", Usage(1, 1, "estimate")))
    publisher.hurry()
    await asyncio.wait_for(asyncio.gather(*published), timeout=2)

    assert sum(log.batches) <= 20 * (0.5 / FLUSH_SECONDS + 3)  # each reply: once per flush
    assert len(log.batches) <= 0.5 / FLUSH_SECONDS + 6  # and all of them in each call
    for run in runs:
        read = await log.read(run.key, run.reply_id, -1, 0)
        assert read is not None
        assert read.events == run.events


async def test_a_reply_is_published_as_soon_as_it_starts_and_ends() -> None:
    log = CountingLog()
    publisher = ReplyPublisher(log)
    run = ReplyRun(SessionKey("ns", "s"), "0123456789abcdef")
    run.emit(SessionData("s"))
    published = asyncio.create_task(publisher.publish(run))

    await asyncio.sleep(0.01)
    started = await log.read(run.key, run.reply_id, -1, 0)
    run.emit(DoneData("s", "", Usage(0, 0, "estimate")))
    publisher.hurry()
    await asyncio.wait_for(published, timeout=FLUSH_SECONDS / 2)

    assert started is not None
    assert [e.name for e in started.events] == ["session"]
    ended = await log.read(run.key, run.reply_id, -1, 0)
    assert ended is not None
    assert [e.name for e in ended.events] == ["session", "done"]


class FailingLog(CountingLog):
    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def publish(self, batch: Sequence[Publication]) -> list[Published]:
        if self.down:
            raise HistoryUnavailable("the history store is unavailable")
        return await super().publish(batch)


async def test_a_store_that_fails_is_said_once_and_its_return_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = FailingLog()
    publisher = ReplyPublisher(log)
    run = ReplyRun(SessionKey("ns", "s"), "0123456789abcdef")
    run.emit(SessionData("s"))
    published = asyncio.create_task(publisher.publish(run))

    with caplog.at_level(logging.INFO, logger="application.reply_publisher"):
        await asyncio.sleep(5 * FLUSH_SECONDS)
        log.down = False
        run.emit(DoneData("s", "", Usage(0, 0, "estimate")))
        publisher.hurry()
        await asyncio.wait_for(published, timeout=1)

    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "streamed replies' events not published yet: the history store is unavailable",
        "streamed replies' events are published again",
    ]
    read = await log.read(run.key, run.reply_id, -1, 0)
    assert read is not None
    assert [e.name for e in read.events] == ["session", "done"]
