"""A streamed reply being produced in this process: its events so far, for whoever follows it."""

import asyncio
from collections.abc import AsyncIterator

from domain.reply_events import EventData, ReplyEvent, reply_event
from domain.session import SessionKey


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

    async def follow(self, after: int = -1) -> AsyncIterator[ReplyEvent]:
        """The events after seq `after`, as they come, up to the terminal one."""
        index = after + 1
        while True:
            while index < len(self.events):
                event = self.events[index]
                index += 1
                yield event
                if event.terminal:
                    return
            await self._grew.wait()

