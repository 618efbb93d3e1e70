"""A streamed reply being produced in this process: its events so far, for whoever follows it."""

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple

from domain.reply_events import EventData, ReplyEvent, reply_event
from domain.session import SessionKey


class Streamed(NamedTuple):
    """A reply as a client receives it: its events (None: nothing for a while), and what
    to call when that client hangs up."""

    reply_id: str
    events: AsyncIterator[ReplyEvent | None]
    client_gone: Callable[[], None]


def nothing_to_do() -> None:
    return None


class ReplyRun:
    """Events are only appended; a follower reads them by index and waits for the next one,
    so any number can follow without a queue each. `committed` resolves at the first delta
    (or fails with what went wrong before it); `stop` is set when a stop was requested."""

    def __init__(self, key: SessionKey, reply_id: str) -> None:
        self.key = key
        self.reply_id = reply_id
        self.events: list[ReplyEvent] = []
        self.committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.stop = asyncio.Event()
        self.ended = asyncio.Event()
        self.task: asyncio.Task[None] | None = None  # the producer, once committed
        self.cancelled_with: tuple[int, str] | None = None  # the error event if cancelled
        self._grew = asyncio.Event()

    def emit(self, data: EventData) -> ReplyEvent:
        event = reply_event(len(self.events), data)
        self.events.append(event)
        self._grew.set()
        self._grew = asyncio.Event()
        if event.terminal:
            self.ended.set()
        return event

    async def follow(self, idle_seconds: float) -> AsyncIterator[ReplyEvent | None]:
        """Every event, as it comes, up to the terminal one; None after each idle_seconds
        without one (a client's connection may want a keep-alive)."""
        index = 0
        while True:
            while index < len(self.events):
                event = self.events[index]
                index += 1
                yield event
                if event.terminal:
                    return
            try:
                async with asyncio.timeout(idle_seconds):
                    await self._grew.wait()
            except TimeoutError:
                yield None
