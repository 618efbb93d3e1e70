"""Streamed replies' events in dicts: the Redis reply log's semantics for one process."""

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from application.ports import Publication, Published, ReplyRead
from domain.reply_events import ReplyEvent
from domain.session import SessionKey


@dataclass
class _Reply:
    events: list[ReplyEvent] = field(default_factory=list)
    lease_until: float = 0.0
    kept_until: float = 0.0
    stop: bool = False
    grew: asyncio.Event = field(default_factory=asyncio.Event)


class MemoryReplyLog:
    def __init__(
        self,
        *,
        keep_seconds: float,
        lease_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keep = keep_seconds
        self._lease = lease_seconds
        self._now = monotonic
        self._replies: dict[tuple[SessionKey, str], _Reply] = {}
        self._latest: dict[SessionKey, str] = {}

    def _kept(self, key: SessionKey, reply_id: str) -> _Reply | None:
        reply = self._replies.get((key, reply_id))
        if reply is not None and self._now() >= reply.kept_until:
            del self._replies[key, reply_id]
            return None
        return reply

    async def publish(self, batch: Sequence[Publication]) -> list[Published]:
        return [self._publish(*publication) for publication in batch]

    def _publish(
        self, key: SessionKey, reply_id: str, events: Sequence[ReplyEvent], published: int
    ) -> Published:
        reply = self._kept(key, reply_id)
        if reply is None:
            reply = self._replies[key, reply_id] = _Reply()
            self._latest[key] = reply_id
            self._sweep()
        if len(reply.events) != published + 1:  # lost: store it all again
            reply.events.clear()
        reply.events.extend(events[len(reply.events) :])
        now = self._now()
        reply.kept_until = now + self._keep
        ended = bool(reply.events) and reply.events[-1].terminal
        reply.lease_until = 0.0 if ended else now + self._lease
        reply.grew.set()
        reply.grew = asyncio.Event()
        return Published(len(reply.events) - 1, reply.stop)

    async def latest(self, key: SessionKey) -> str | None:
        reply_id = self._latest.get(key)
        return reply_id if reply_id and self._kept(key, reply_id) else None

    async def read(
        self, key: SessionKey, reply_id: str, after: int, wait_seconds: float
    ) -> ReplyRead | None:
        reply = self._kept(key, reply_id)
        if reply is None:
            return None
        if len(reply.events) <= after + 1 and self._running(reply) and wait_seconds > 0:
            try:
                async with asyncio.timeout(wait_seconds):
                    await reply.grew.wait()
            except TimeoutError:
                pass
        return ReplyRead(reply.events[after + 1 :], self._running(reply))

    async def request_stop(self, key: SessionKey) -> bool:
        reply_id = await self.latest(key)
        reply = None if reply_id is None else self._kept(key, reply_id)
        if reply is None or not self._running(reply):
            return False
        reply.stop = True
        return True

    def _running(self, reply: _Reply) -> bool:
        return self._now() < reply.lease_until

    def _sweep(self) -> None:
        if len(self._replies) > 10_000:
            now = self._now()
            self._replies = {k: r for k, r in self._replies.items() if r.kept_until > now}
