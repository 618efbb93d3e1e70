import asyncio
import time
from collections.abc import AsyncIterator

from application.errors import HistoryUnavailable, SessionNotFound
from application.ports import ReplyLog, ReplyRead
from application.reply_run import Streamed, nothing_to_do
from domain.reply_events import ErrorData, ReplyEvent, parse_event_id, reply_event
from domain.session import SessionKey, parse_session_id

# How long a follower waits for news before it looks at the producer's lease again.
WAIT_SECONDS = 1.0
# How long a follower rides out a store that fails (a restart, a failover) before giving up.
STORE_PATIENCE_SECONDS = 10.0

DIED = "the worker writing this reply stopped before it ended; nothing of it was stored"
EXPIRED = "this reply is no longer kept; GET /chat/{session_id} shows what was stored"
STORE_LOST = "the history store did not answer while following this reply; try again"


class AttachReply:
    """Follow a session's streamed reply from any worker: what was sent, then what comes.

    Rules:
    - With a Last-Event-ID, the events after it, if that reply is still kept (nothing at
      all if it was the reply's last); otherwise (or without one) the session's latest reply
      from its first event.
    - A session with no reply running or kept (for this caller) is not found.
    - It ends with the reply's own done or error. A reply whose producer stopped renewing
      its lease without ending it ends with an error, within a lease and a wait.
    """

    def __init__(self, log: ReplyLog, *, wait_seconds: float = WAIT_SECONDS) -> None:
        self._log = log
        self._wait = wait_seconds

    async def execute(
        self,
        namespace: str,
        session_id: str,
        last_event_id: str | None = None,
        *,
        idle_seconds: float,
    ) -> Streamed | None:
        """Return once the reply is found (SessionNotFound if not); then follow its events.
        None when Last-Event-ID names the reply's last event: the client has it all."""
        key = SessionKey(namespace, parse_session_id(session_id))
        if last_event_id:
            reply_id, after = parse_event_id(last_event_id)
            # From the event the client names, to see whether that one was the last.
            found = await self._log.read(key, reply_id, after - 1, 0)
            if found is not None:
                if found.events and found.events[0].seq == after and found.events[0].terminal:
                    return None
                rest = ReplyRead([e for e in found.events if e.seq > after], found.running)
                following = self._follow(key, reply_id, after, rest, idle_seconds)
                return Streamed(reply_id, following, nothing_to_do)
        latest = await self._log.latest(key)
        whole = None if latest is None else await self.follow(key, latest, idle_seconds)
        if whole is None:
            raise SessionNotFound(
                f"session {key.session_id!r} has no reply running or recently ended"
            )
        return whole

    async def follow(self, key: SessionKey, reply_id: str, idle_seconds: float) -> Streamed | None:
        """A reply from its first event, if the log knows it."""
        found = await self._log.read(key, reply_id, -1, 0)
        if found is None:
            return None
        return Streamed(
            reply_id, self._follow(key, reply_id, -1, found, idle_seconds), nothing_to_do
        )

    async def _follow(
        self, key: SessionKey, reply_id: str, after: int, read: ReplyRead, idle_seconds: float
    ) -> AsyncIterator[list[ReplyEvent]]:
        checked_death = False
        quiet_since = time.monotonic()
        while True:
            if read.events:
                yield read.events  # a terminal event is always a reply's last
                if read.events[-1].terminal:
                    return
                after = read.events[-1].seq
                checked_death = False
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= idle_seconds:
                yield []
                quiet_since = time.monotonic()
            if not read.events and not read.running:
                if checked_death:  # looked twice: its last publish did not just land
                    yield [reply_event(after + 1, ErrorData(503, DIED))]
                    return
                checked_death = True
            next_read = await self._read(key, reply_id, after, 0 if checked_death else self._wait)
            if next_read is None:
                yield [reply_event(after + 1, ErrorData(410, EXPIRED))]
                return
            if isinstance(next_read, ErrorData):
                yield [reply_event(after + 1, next_read)]
                return
            read = next_read

    async def _read(
        self, key: SessionKey, reply_id: str, after: int, wait: float
    ) -> ReplyRead | ErrorData | None:
        deadline = time.monotonic() + STORE_PATIENCE_SECONDS
        while True:
            try:
                return await self._log.read(key, reply_id, after, wait)
            except HistoryUnavailable:
                if time.monotonic() > deadline:
                    return ErrorData(503, STORE_LOST)
                await asyncio.sleep(0.5)
