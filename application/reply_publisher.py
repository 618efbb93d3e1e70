import asyncio
import contextlib
import contextvars
import logging
import time
from dataclasses import dataclass, field

from application.errors import HistoryUnavailable
from application.ports import Publication, ReplyLog
from application.reply_run import ReplyRun

log = logging.getLogger(__name__)

# A reply's events reach the log in batches, one write per FLUSH_SECONDS at most; while
# nothing new comes, a heartbeat renews the producer's lease (and asks whether to stop)
# every HEARTBEAT_SECONDS. A lease not renewed for LEASE_SECONDS means the producer died.
FLUSH_SECONDS = 0.1
HEARTBEAT_SECONDS = 0.5
LEASE_SECONDS = 3.0
# How long a finished reply keeps trying to publish its last events to a failing store.
FINAL_PUBLISH_SECONDS = 10.0


@dataclass(eq=False)
class _Published:
    run: ReplyRun
    upto: int = -1  # the seq of the last event the log has
    renewed: float = field(default_factory=time.monotonic)
    gave_up_at: float | None = None
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class ReplyPublisher:
    """Publishes every reply this process is producing, all in one call to the log per
    flush interval (the store pipelines it), rather than one task and one call per reply.

    A reply's first events go at once (a client may re-attach from then on), and so do its
    last (its producer waits for them); the rest at the next flush, and a heartbeat while
    it is quiet. What the log answers about a stop request is passed to the reply."""

    def __init__(self, reply_log: ReplyLog) -> None:
        self._log = reply_log
        self._replies: dict[ReplyRun, _Published] = {}
        self._urgent = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def publish(self, run: ReplyRun) -> None:
        """Keep `run` published from now until its terminal event is, or is given up on."""
        state = self._replies[run] = _Published(run)
        self.hurry()
        if self._task is None or self._task.done():
            # Serves every reply of the process: not in the context of the request that
            # happened to start it (its request id in log lines, its trace).
            self._task = asyncio.create_task(self._flush_forever(), context=contextvars.Context())
        try:
            await asyncio.shield(state.done)
        finally:
            if state.done.done():
                self._replies.pop(run, None)

    def hurry(self) -> None:
        """Flush now, for the replies that started or ended since the last flush."""
        self._urgent.set()

    async def _flush_forever(self) -> None:
        loop = asyncio.get_running_loop()
        tick = loop.time()
        while self._replies:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(tick):
                    await self._urgent.wait()
            self._urgent.clear()
            if loop.time() < tick:  # woken early: only what started or ended
                await self._flush(urgent_only=True)
                continue
            tick = loop.time() + FLUSH_SECONDS
            await self._flush(urgent_only=False)

    async def _flush(self, urgent_only: bool) -> None:
        now = time.monotonic()
        due = [s for s in self._replies.values() if self._due(s, now, urgent_only)]
        if not due:
            return
        for state in due:
            if not state.run.ended.is_set() and now - state.run.emitted_at >= HEARTBEAT_SECONDS:
                state.run.wake()  # a quiet stretch: followers may owe a keep-alive
        batch = [Publication(s.run.key, s.run.reply_id, s.run.events, s.upto) for s in due]
        try:
            outcomes = await self._log.publish(batch)
        except HistoryUnavailable as error:
            if not self._failing:  # once per outage, not once per flush
                log.warning("streamed replies' events not published yet: %s", error)
                self._failing = True
            for state in due:
                if state.run.ended.is_set():
                    state.run.logged.set()  # its clients are not held up by the outage
                self._give_up_if_late(state, now)
            return
        if self._failing:
            log.info("streamed replies' events are published again")
            self._failing = False
        for state, outcome in zip(due, outcomes, strict=True):
            state.upto, state.renewed = outcome.upto, now
            if outcome.stop_requested:
                state.run.stop.set()
            if state.run.ended.is_set() and state.upto == len(state.run.events) - 1:
                state.run.logged.set()
                _resolve(state.done)

    @staticmethod
    def _due(state: _Published, now: float, urgent_only: bool) -> bool:
        run = state.run
        if state.done.done():
            return False
        news = len(run.events) - 1 > state.upto
        if urgent_only:  # started, or ended, since the last flush
            return news and (state.upto < 0 or run.ended.is_set())
        return news or now - state.renewed >= HEARTBEAT_SECONDS

    def _give_up_if_late(self, state: _Published, now: float) -> None:
        if not state.run.ended.is_set():
            return
        state.gave_up_at = state.gave_up_at or now + FINAL_PUBLISH_SECONDS
        if now > state.gave_up_at:
            log.warning("reply %s: its last events were never published", state.run.reply_id)
            _resolve(state.done)


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
