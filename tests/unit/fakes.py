"""Language models for unit tests: they record what they were shown, as a provider would see it."""

import asyncio
from collections.abc import AsyncIterator

from application.errors import ModelUnavailable
from domain.answer import Answer, Usage
from domain.conversation import Conversation


class ScriptedModel:
    """Replies `reply-<n>: <question>`; can be told to fail or to wait for a gate."""

    def __init__(self) -> None:
        self.seen: list[Conversation] = []
        self.failure: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def reply(self, conversation: Conversation) -> Answer:
        return Answer("".join([d async for d in self.stream(conversation) if isinstance(d, str)]))

    async def stream(self, conversation: Conversation) -> AsyncIterator[str | Usage]:
        self.seen.append(conversation)
        if self.gate is not None:
            await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        yield f"reply-{len(self.seen)}: "
        yield conversation.last_user_message


def unavailable() -> ModelUnavailable:
    return ModelUnavailable("the test provider answered HTTP 500")
