import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Literal, TypeVar

import msgspec

from application.attach_reply import AttachReply
from application.errors import HistoryUnavailable, ModelUnavailable
from application.model_routing import AS_CONFIGURED, ModelRouter, OpenedStream, TurnOptions
from application.ports import ChatHistory, Clock, ReplyLog
from application.reply_publisher import FINAL_PUBLISH_SECONDS, ReplyPublisher
from application.reply_run import ReplyRun, Streamed, nothing_to_do
from application.request_leases import RequestLeases
from application.send_message import utc_now
from application.telemetry import UNOBSERVED, StreamOutcome, Telemetry
from domain.answer import Usage, estimate_usage
from domain.idempotency import Receipt, Reply, fingerprint, parse_idempotency_key
from domain.message import Message, check_user_message
from domain.reply_events import (
    DeltaData,
    DoneData,
    ErrorData,
    EventData,
    ReplyEvent,
    SessionData,
    new_reply_id,
    reply_event,
)
from domain.session import SessionKey, session_id_or_new

log = logging.getLogger(__name__)

OnDisconnect = Literal["continue", "cancel"]

CLIENT_GONE_STATUS = 499  # nginx's "client closed request": no one is left to read it
CLIENT_GONE = "the client disconnected and [llm] stream_on_disconnect is cancel; nothing was stored"
SHUT_DOWN = "the service stopped before the reply was complete; nothing was stored"


class StreamMessage:
    """Answer a user's message as the model writes it, and remember the exchange.

    Rules (besides SendMessage's on the session, the message and what the models see):
    - Nothing is promised before a model's first text: a failure until then (the store,
      every model, each after its retries) is raised to the caller, and nothing is stored.
      After it, the reply is that model's: no other is asked, and `done` names it.
    - From the first text on, the reply runs in a task of its own to its end, whether anyone
      follows it or not (with on_disconnect "cancel", the asking client hanging up cancels
      it). It ends with exactly one `done`, sent once the exchange is stored, or one
      `error`, after which nothing of it is stored.
    - A stop request ends it early: the text written so far is stored as the reply, and
      `done` says it stopped; its usage is then an estimate.
    - Its events are published to the reply log in batches (ReplyPublisher), so that any
      worker can serve a client that re-attaches, and a producer that dies is noticed by
      its lease.
    - With an Idempotency-Key (RequestLeases): a repeat of a completed request replays its
      reply without the model, a repeat of a running one follows it, and the key with
      another request is a conflict. A reply that fails frees its key before its error goes
      out, so a client that retries on seeing the error runs the request again.
    - Each reply's start and end (done, stopped, error, client_gone) is told to the
      telemetry.
    """

    def __init__(
        self,
        history: ChatHistory,
        models: ModelRouter,
        log: ReplyLog,
        *,
        max_message_chars: int,
        failure_status: Callable[[BaseException], int],
        attach: AttachReply,
        on_disconnect: OnDisconnect = "continue",
        clock: Clock = utc_now,
        leases: RequestLeases | None = None,
        telemetry: Telemetry = UNOBSERVED,
    ) -> None:
        self._history = history
        self._models = models
        self._publisher = ReplyPublisher(log)
        self._max_message_chars = max_message_chars
        self._status = failure_status
        self._on_disconnect = on_disconnect
        self._clock = clock
        self._attach = attach
        self._leases = leases
        self._telemetry = telemetry
        self._running: dict[asyncio.Task[None], ReplyRun] = {}

    async def start(
        self,
        namespace: str,
        session_id: str | None,
        text: str,
        idempotency_key: str | None = None,
        *,
        idle_seconds: float,
        options: TurnOptions = AS_CONFIGURED,
    ) -> Streamed:
        """Return once the model has written its first text (or, for a repeated request,
        once the first is found); the events follow, None after each idle_seconds."""
        key = SessionKey(namespace, session_id_or_new(session_id))
        question = Message("user", check_user_message(text, self._max_message_chars), self._clock())
        self._models.check_fits(question.content, options)
        reply_id = new_reply_id()
        pending = None
        if idempotency_key is not None and self._leases is not None:
            pending = Receipt(
                namespace,
                parse_idempotency_key(idempotency_key),
                fingerprint(session_id, text, *options.identity()),
                session_id=key.session_id,
                reply_id=reply_id,
            )

            async def follow(held: Receipt) -> Streamed | None:
                if held.session_id is None or held.reply_id is None:
                    return None  # not a stream, or from before streams: wait for its reply
                running = SessionKey(namespace, held.session_id)
                return await self._attach.follow(running, held.reply_id, idle_seconds)

            earlier = await self._leases.claim_or_follow(pending, follow)
            if isinstance(earlier, Receipt) and earlier.reply is not None:
                return Streamed(reply_id, _replayed(earlier.reply), nothing_to_do)
            if isinstance(earlier, Streamed):
                return earlier
        try:
            run = await self._run(key, question, options, reply_id, pending)
        except Exception:  # (a cancelled caller leaves the run, and its key, to the producer)
            if pending is not None and self._leases is not None:
                await self._leases.release(pending)
            raise
        return Streamed(run.reply_id, run.follow(idle_seconds), lambda: self.client_gone(run))

    async def _run(
        self,
        key: SessionKey,
        question: Message,
        options: TurnOptions,
        reply_id: str,
        pending: Receipt | None,
    ) -> ReplyRun:
        stored = await self._history.load(key)
        run = ReplyRun(key, reply_id)
        run.task = asyncio.create_task(self._produce(run, question, options, stored, pending))
        self._running[run.task] = run
        run.task.add_done_callback(self._forget)
        try:
            await asyncio.shield(run.committed)
        except asyncio.CancelledError:  # the asking client hung up before the first text
            run.committed.add_done_callback(_retrieve)
            self.client_gone(run)
            raise
        return run

    def _forget(self, task: asyncio.Task[None]) -> None:
        del self._running[task]

    def client_gone(self, run: ReplyRun) -> None:
        """The client that asked for `run` hung up."""
        if self._on_disconnect == "cancel":
            _cancel(run, CLIENT_GONE_STATUS, CLIENT_GONE)

    async def drain(self, seconds: float) -> None:
        """At shutdown: let running replies finish for up to `seconds`, then end them."""
        if not self._running:
            return
        _, late = await asyncio.wait(set(self._running), timeout=seconds)
        for task in late:
            _cancel(self._running[task], 503, SHUT_DOWN)
        if late:
            await asyncio.wait(late, timeout=FINAL_PUBLISH_SECONDS)

    async def _produce(
        self,
        run: ReplyRun,
        question: Message,
        options: TurnOptions,
        stored: list[Message],
        pending: Receipt | None,
    ) -> None:
        lease = None
        if pending is not None and self._leases is not None:
            lease = asyncio.create_task(self._leases.keep(pending))
        try:
            try:
                opened = await self._models.stream(stored, question, options)
            except BaseException as error:
                if isinstance(error, asyncio.CancelledError):  # before anything was promised
                    run.committed.cancel()
                    if pending is not None and self._leases is not None:
                        await self._leases.release(pending)
                    raise
                run.committed.set_exception(error)  # start() raises it and frees the key
                return
            run.emit(SessionData(run.key.session_id))
            run.emit(DeltaData(opened.first))
            run.committed.set_result(None)
            published = asyncio.create_task(self._publisher.publish(run))
            self._telemetry.stream_started()
            outcome: StreamOutcome = "error"
            try:
                outcome = await self._finish(run, question, opened, pending)
            finally:
                if run.cancelled_with is not None and run.cancelled_with[0] == CLIENT_GONE_STATUS:
                    outcome = "client_gone"
                self._telemetry.stream_ended(outcome)
                await opened.rest.aclose()
                self._publisher.hurry()  # its last events
                # Even while this task is cancelled: a reply ended so still publishes its error.
                await _uncancellable(published)
        finally:
            if lease is not None:
                lease.cancel()

    async def _finish(
        self,
        run: ReplyRun,
        question: Message,
        opened: OpenedStream,
        pending: Receipt | None,
    ) -> StreamOutcome:
        """Relay the rest of the reply, store the exchange, and end with done or error."""
        texts = [opened.first]
        try:
            reported, stopped = await self._relay(run, opened.rest, texts)
            answer = "".join(texts)
            usage = opened.cost(reported, answer)  # a stopped reply's is None: an estimate
            receipt = None
            if pending is not None:
                reply = Reply(run.key.session_id, answer, usage, opened.model)
                receipt = msgspec.structs.replace(pending, reply=reply)
            written = Message("assistant", answer, self._clock(), opened.model)
            # Once the write is sent, its outcome decides done or error: a cancellation now
            # waits for it rather than report "nothing stored" about a write that landed.
            await _uncancellable(self._history.append_exchange(run.key, question, written, receipt))
        except asyncio.CancelledError:
            await self._fail(run, pending, *(run.cancelled_with or (503, SHUT_DOWN)))
            raise
        except (ModelUnavailable, HistoryUnavailable) as error:
            await self._fail(run, pending, self._status(error), str(error))
            return "error"
        except Exception as error:
            log.exception("reply %s failed", run.reply_id, exc_info=error)
            await self._fail(
                run, pending, self._status(error), "internal error; it has been logged"
            )
            return "error"
        run.emit(DoneData(run.key.session_id, answer, usage, opened.model, stopped))
        return "stopped" if stopped else "done"

    async def _fail(self, run: ReplyRun, pending: Receipt | None, status: int, detail: str) -> None:
        """End with an error; the key is freed first, so a client that retries on seeing the
        error runs its request again rather than follow this one."""
        if pending is not None and self._leases is not None:
            await self._leases.release(pending)
        run.emit(ErrorData(status, detail))

    async def _relay(
        self, run: ReplyRun, deltas: AsyncGenerator[str | Usage, None], texts: list[str]
    ) -> tuple[Usage | None, bool]:
        """Emit each delta until the model ends or a stop is requested; (usage, stopped)."""
        usage: Usage | None = None

        async def relay() -> None:
            nonlocal usage
            async for chunk in deltas:
                if isinstance(chunk, str):
                    texts.append(chunk)
                    run.emit(DeltaData(chunk))
                else:
                    usage = chunk

        relaying = asyncio.create_task(relay())
        stopping = asyncio.create_task(run.stop.wait())
        try:
            await asyncio.wait({relaying, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not relaying.done():
                relaying.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await relaying
        if relaying.cancelled():
            return None, True
        relaying.result()  # raises what the model raised
        return usage, False


async def _replayed(reply: Reply) -> AsyncIterator[list[ReplyEvent]]:
    """A completed request's reply, as the events its stream sent."""
    usage = reply.usage or estimate_usage((), reply.response)
    events: list[EventData] = [
        SessionData(reply.session_id),
        DeltaData(reply.response),
        DoneData(reply.session_id, reply.response, usage, reply.model),
    ]
    yield [reply_event(seq, data) for seq, data in enumerate(events)]


T = TypeVar("T")


async def _uncancellable(step: Awaitable[T]) -> T:
    """Run `step` to its end, ignoring cancellation meanwhile (a cancellation already on
    its way out of the caller carries on after)."""
    task = asyncio.ensure_future(step)
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
    return task.result()


def _cancel(run: ReplyRun, status: int, detail: str) -> None:
    if run.task is not None and not run.task.done():
        run.cancelled_with = (status, detail)
        run.task.cancel()


def _retrieve(committed: asyncio.Future[None]) -> None:
    """Mark a failure nobody waits for any more as seen (asyncio warns of unseen ones)."""
    if not committed.cancelled():
        committed.exception()
