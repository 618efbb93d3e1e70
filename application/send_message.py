from datetime import UTC, datetime

import msgspec

from application.ports import ChatHistory, Clock, LanguageModel
from domain.conversation import build_conversation
from domain.message import Message, check_user_message
from domain.session import SessionKey, session_id_or_new


def utc_now() -> datetime:
    return datetime.now(UTC)


class Reply(msgspec.Struct, frozen=True):
    session_id: str
    response: str


class SendMessage:
    """Answer a user's message within a session and remember the exchange.

    Rules:
    - A missing or blank session_id starts a new session; any other must be a valid id.
    - The message must be non-empty and at most max_message_chars long.
    - The model sees the system prompt (if any), the stored history, then the new message.
    - The question and its reply are stored together, in one atomic write, only once the
      model has answered: any failure (model, store, a cancelled request) stores nothing.
    - Concurrent exchanges on one session are each appended whole; none is lost.
    """

    def __init__(
        self,
        history: ChatHistory,
        model: LanguageModel,
        *,
        max_message_chars: int,
        system_prompt: str | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._history = history
        self._model = model
        self._max_message_chars = max_message_chars
        self._system_prompt = system_prompt
        self._clock = clock

    async def execute(self, namespace: str, session_id: str | None, text: str) -> Reply:
        key = SessionKey(namespace, session_id_or_new(session_id))
        question = Message("user", check_user_message(text, self._max_message_chars), self._clock())
        stored = await self._history.load(key)
        answer = await self._model.reply(build_conversation(self._system_prompt, stored, question))
        await self._history.append_exchange(
            key, question, Message("assistant", answer, self._clock())
        )
        return Reply(key.session_id, answer)
