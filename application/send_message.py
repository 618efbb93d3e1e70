import asyncio
import contextlib
import time
from datetime import UTC, datetime

import msgspec

from application.errors import HistoryUnavailable, IdempotencyConflict
from application.ports import ChatHistory, Clock, LanguageModel, RequestReceipts
from domain.conversation import build_conversation
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
    - The model sees the system prompt (if any), the stored history, then the new message.
    - The question and its reply are stored together, in one atomic write, only once the
      model has answered: any failure (model, store, a cancelled request) stores nothing.
    - Concurrent exchanges on one session are each appended whole; none is lost.
    - With an Idempotency-Key, a repeat of a request (same key, same namespace, same session
      and message) within 24 h gets the first reply without asking the model or storing
      again; while the first is in flight, a repeat waits for it (at most `in_flight_seconds`,
      how long a request can take). The same key with another request is a conflict. A
      request that failed leaves no receipt: its repeat runs again. A request holds its key
      on a short lease it renews while it runs, so the key of a request whose process died
      (or whose release failed with the store) is free again within one lease.
    """

    def __init__(
        self,
        history: ChatHistory,
        model: LanguageModel,
        *,
        max_message_chars: int,
        system_prompt: str | None = None,
        clock: Clock = utc_now,
        receipts: RequestReceipts | None = None,
        in_flight_seconds: float = 300.0,
        lease_seconds: float = 10.0,
    ) -> None:
        self._history = history
        self._model = model
        self._max_message_chars = max_message_chars
        self._system_prompt = system_prompt
        self._clock = clock
        self._receipts = receipts
        self._in_flight_seconds = in_flight_seconds
        self._lease_seconds = lease_seconds

    async def execute(
        self,
        namespace: str,
        session_id: str | None,
        text: str,
        idempotency_key: str | None = None,
    ) -> Reply:
        key = SessionKey(namespace, session_id_or_new(session_id))
        question = Message("user", check_user_message(text, self._max_message_chars), self._clock())
        if idempotency_key is None or self._receipts is None:
            return await self._answer(key, question)
        pending = Receipt(
            namespace, parse_idempotency_key(idempotency_key), fingerprint(session_id, text)
        )
        earlier = await self._claim(self._receipts, pending)
        if earlier is not None:
            return earlier
        lease = asyncio.create_task(self._renew(self._receipts, pending))
        try:
            return await self._answer(key, question, pending)
        except BaseException:
            # Failures are not remembered; if the store is down the lease simply runs out.
            with contextlib.suppress(HistoryUnavailable):
                await self._receipts.release(pending)
            raise
        finally:
            lease.cancel()

    async def _answer(
        self, key: SessionKey, question: Message, pending: Receipt | None = None
    ) -> Reply:
        stored = await self._history.load(key)
        answer = await self._model.reply(build_conversation(self._system_prompt, stored, question))
        reply = Reply(key.session_id, answer)
        done = None if pending is None else msgspec.structs.replace(pending, reply=reply)
        first = await self._history.append_exchange(
            key, question, Message("assistant", answer, self._clock()), done
        )
        return first or reply

    async def _claim(self, receipts: RequestReceipts, pending: Receipt) -> Reply | None:
        """None once this request owns its key; the first reply if it was answered before."""
        deadline = time.monotonic() + self._in_flight_seconds
        pause = 0.02
        while True:
            held = await receipts.claim(pending, ttl_seconds=self._lease_seconds)
            if held is None:
                return None
            if held.fingerprint != pending.fingerprint:
                raise IdempotencyConflict(
                    "this Idempotency-Key was already used for a different request "
                    "(another session_id or message); use a new key for a new request"
                )
            if held.reply is not None:
                return held.reply
            if time.monotonic() + pause > deadline:
                raise IdempotencyConflict(
                    "a request with this Idempotency-Key is still in progress; retry later"
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    async def _renew(self, receipts: RequestReceipts, pending: Receipt) -> None:
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            with contextlib.suppress(HistoryUnavailable):
                await receipts.extend(pending, ttl_seconds=self._lease_seconds)
