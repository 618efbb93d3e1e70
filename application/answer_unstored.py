from collections.abc import AsyncGenerator

from application.model_routing import ModelRouter, OpenedStream, TurnOptions
from application.ports import ChatHistory, Clock
from application.send_message import utc_now
from application.telemetry import UNOBSERVED, StreamOutcome, Telemetry
from domain.answer import Answer, Usage
from domain.message import Message, check_user_message
from domain.session import SessionKey, parse_session_id


class AnswerUnstored:
    """Answer a message and store nothing: OpenAI's Chat Completions without a session, or a
    Responses turn with store false.

    Rules:
    - The message follows SendMessage's rules; the models are asked as ModelRouter says,
      with the turn's options (the client's earlier messages among them).
    - Given a session, the model sees its stored history first; it is read, never written.
    - A stream is its client's alone: when the client stops reading it, the provider's call
      ends (told to the telemetry as client_gone). Its usage is the provider's count, or
      an estimate.
    """

    def __init__(
        self,
        history: ChatHistory,
        models: ModelRouter,
        *,
        max_message_chars: int,
        clock: Clock = utc_now,
        telemetry: Telemetry = UNOBSERVED,
    ) -> None:
        self._history = history
        self._models = models
        self._max_message_chars = max_message_chars
        self._clock = clock
        self._telemetry = telemetry

    async def reply(
        self, namespace: str, session_id: str | None, text: str, options: TurnOptions
    ) -> Answer:
        question = self._question(text, options)
        stored = await self._stored(namespace, session_id)
        return await self._models.reply(stored, question, options)

    async def stream(
        self, namespace: str, session_id: str | None, text: str, options: TurnOptions
    ) -> "UnstoredStream":
        """Return once a model has written its first text; failures until then raise."""
        question = self._question(text, options)
        stored = await self._stored(namespace, session_id)
        opened = await self._models.stream(stored, question, options)
        return UnstoredStream(opened, self._telemetry)

    def _question(self, text: str, options: TurnOptions) -> Message:
        question = Message("user", check_user_message(text, self._max_message_chars), self._clock())
        self._models.check_fits(question.content, options)
        return question

    async def _stored(self, namespace: str, session_id: str | None) -> list[Message]:
        if session_id is None:
            return []
        return await self._history.load(SessionKey(namespace, parse_session_id(session_id)))


class UnstoredStream:
    """A reply as the model writes it: `model` answers; `texts()` yields the first text and
    the rest; once they end, `usage` holds what the reply cost."""

    def __init__(self, opened: OpenedStream, telemetry: Telemetry = UNOBSERVED) -> None:
        self._opened = opened
        self._telemetry = telemetry
        self.model = opened.model
        self.usage: Usage | None = None

    async def texts(self) -> AsyncGenerator[str, None]:
        opened = self._opened
        written = [opened.first]
        counted = None
        self._telemetry.stream_started()
        outcome: StreamOutcome = "client_gone"  # unless it ends otherwise: it stopped reading
        try:
            yield opened.first
            async for chunk in opened.rest:
                if isinstance(chunk, str):
                    written.append(chunk)
                    yield chunk
                else:
                    counted = chunk
            outcome = "done"
            self.usage = opened.cost(counted, "".join(written))
        except Exception:
            outcome = "error"
            raise
        finally:
            self._telemetry.stream_ended(outcome)
            await opened.rest.aclose()
