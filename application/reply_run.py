"""A streamed reply being produced in this process: its events so far, for whoever follows it."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple

from domain.reply_events import EventData, ReplyEvent, reply_event
from domain.session import SessionKey


class Streamed(NamedTuple):
    """A reply as a client receives it: its events, in batches of those ready together (so
    a client that fell behind catches up in one write; empty: nothing for a while), and
    what to call when that client hangs up."""

    reply_id: str
    events: AsyncIterator[list[ReplyEvent]]
    client_gone: Callable[[], None]


def nothing_to_do() -> None:
    return None


class ReplyRun:
    """Events are only appended; a follower reads them by index and waits for the next one,
    so any number can follow without a queue each. `committed` resolves at the first delta
    (or fails with what went wrong before it); `stop` is set when a stop was requested;
    `logged` once the terminal event is in the reply log (or the log failed to take it)."""

    def __init__(self, key: SessionKey, reply_id: str) -> None:
        self.key = key
        self.reply_id = reply_id
        self.events: list[ReplyEvent] = []
        self.committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.stop = asyncio.Event()
        self.ended = asyncio.Event()
        self.logged = asyncio.Event()
        self.task: asyncio.Task[None] | None = None  # the producer, once committed
        self.cancelled_with: tuple[int, str] | None = None  # the error event if cancelled
        self.emitted_at = time.monotonic()
        self._grew = asyncio.Event()

    def emit(self, data: EventData) -> ReplyEvent:
        event = reply_event(len(self.events), data)
        self.events.append(event)
        self.emitted_at = time.monotonic()
        self.wake()
        if event.terminal:
            self.ended.set()
        return event

    def wake(self) -> None:
        """Wake the followers: a new event, or (from the producer's heartbeat) a quiet
        stretch in which one may owe its client a keep-alive."""
        self._grew.set()
        self._grew = asyncio.Event()

    async def follow(self, idle_seconds: float) -> AsyncIterator[list[ReplyEvent]]:
        """The events as they come, each time all that are there, up to the terminal one;
        an empty batch once idle_seconds pass without one (a client's connection may want a
        keep-alive), as the heartbeat notices. No timer per wait: a follower costs nothing
        between events. The terminal event comes once it is logged, so that a client that
        saw it can send anyone to re-attach and get it too."""
        index = 0
        kept_alive_at = 0.0
        while True:
            if index < len(self.events):
                batch = self.events[index:]
                index += len(batch)
                if batch[-1].terminal:  # always a reply's last
                    await self.logged.wait()
                    yield batch
                    return
                yield batch
                continue
            await self._grew.wait()
            now = time.monotonic()
            if index == len(self.events) and now - max(self.emitted_at, kept_alive_at) >= (
                idle_seconds
            ):
                kept_alive_at = now
                yield []
