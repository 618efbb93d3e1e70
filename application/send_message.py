import asyncio
from datetime import UTC, datetime

import msgspec

from application.model_routing import AS_CONFIGURED, ModelRouter, TurnOptions
from application.ports import ChatHistory, Clock
from application.request_leases import RequestLeases
from domain.idempotency import Receipt, Reply, fingerprint, parse_idempotency_key
from domain.message import Message, check_user_message
from domain.session import SessionKey, session_id_or_new


def utc_now() -> datetime:
    return datetime.now(UTC)


class SendMessage:
    """Answer a user's message within a session and remember the exchange.

    Rules:
    - A missing or blank session_id starts a new session; any other must be a valid id.
    - The message must be non-empty and at most max_message_chars long.
    - The models are asked as ModelRouter says: each sees the system prompt, the newest
      stored messages that fit its window, then the new message; the reply and the stored
      answer name the model that wrote it. A message no model could take is refused first.
    - The question and its reply are stored together, in one atomic write, only once the
      model has answered: any failure (model, store, a cancelled request) stores nothing.
    - Concurrent exchanges on one session are each appended whole; none is lost.
    - With an Idempotency-Key, a repeat of a request (same key, same namespace, same session,
      message and TurnOptions) within 24 h gets the first reply without asking the model or
      storing again; while the first is in flight, a repeat waits for it (at most
      `in_flight_seconds`, how long a request can take). The same key with another request
      is a conflict. A request that failed leaves no receipt: its repeat runs again
      (RequestLeases).
    """

    def __init__(
        self,
        history: ChatHistory,
        models: ModelRouter,
        *,
        max_message_chars: int,
        clock: Clock = utc_now,
        leases: RequestLeases | None = None,
    ) -> None:
        self._history = history
        self._models = models
        self._max_message_chars = max_message_chars
        self._clock = clock
        self._leases = leases

    async def execute(
        self,
        namespace: str,
        session_id: str | None,
        text: str,
        idempotency_key: str | None = None,
        options: TurnOptions = AS_CONFIGURED,
    ) -> Reply:
        key = SessionKey(namespace, session_id_or_new(session_id))
        question = Message("user", check_user_message(text, self._max_message_chars), self._clock())
        self._models.check_fits(question.content, options)
        if idempotency_key is None or self._leases is None:
            return await self._answer(key, question, options)
        pending = Receipt(
            namespace,
            parse_idempotency_key(idempotency_key),
            fingerprint(session_id, text, *options.identity()),
            session_id=key.session_id,
        )
        earlier = await self._leases.claim(pending)
        if earlier is not None and earlier.reply is not None:
            return earlier.reply
        lease = asyncio.create_task(self._leases.keep(pending))
        try:
            return await self._answer(key, question, options, pending)
        except BaseException:
            await self._leases.release(pending)
            raise
        finally:
            lease.cancel()

    async def _answer(
        self,
        key: SessionKey,
        question: Message,
        options: TurnOptions,
        pending: Receipt | None = None,
    ) -> Reply:
        stored = await self._history.load(key)
        answer = await self._models.reply(stored, question, options)
        reply = Reply(key.session_id, answer.text, answer.usage, answer.model)
        done = None if pending is None else msgspec.structs.replace(pending, reply=reply)
        written = Message("assistant", answer.text, self._clock(), answer.model)
        first = await self._history.append_exchange(key, question, written, done)
        return first or reply
