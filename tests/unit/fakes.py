"""Language models for unit tests: they record what they were shown, as a provider would see it."""

import asyncio
from collections.abc import AsyncIterator

from adapters.memory_model_health import MemoryModelHealth
from application.errors import ModelUnavailable
from application.model_routing import ModelRoute, ModelRouter
from application.ports import LanguageModel
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


class StreamingModel:
    """Streams its chunks (texts, and a Usage if given) in order; can hold before chunk
    `hold_at` until `release` is set, or raise `failure` instead of chunk `fail_at`."""

    def __init__(self, *chunks: str | Usage) -> None:
        self.chunks = list(chunks or ("Once", " upon", " a time"))
        self.hold_at: int | None = None
        self.release = asyncio.Event()
        self.fail_at: int | None = None
        self.failure: Exception = unavailable()
        self.calls = 0
        self.closed = 0

    async def reply(self, conversation: Conversation) -> Answer:
        texts = [c async for c in self.stream(conversation) if isinstance(c, str)]
        return Answer("".join(texts))

    async def stream(self, conversation: Conversation) -> AsyncIterator[str | Usage]:
        self.calls += 1
        try:
            for index, chunk in enumerate(self.chunks):
                if index == self.hold_at:
                    await self.release.wait()
                if index == self.fail_at:
                    raise self.failure
                yield chunk
        finally:
            self.closed += 1


def routed(*models: LanguageModel | ModelRoute, system_prompt: str | None = None) -> ModelRouter:
    """The models in order, as the service routes them (names model-0, model-1...), with an
    in-memory health that cools a model down after 3 failures, for 30 s."""
    routes = [
        m if isinstance(m, ModelRoute) else ModelRoute(f"model-{n}", m)
        for n, m in enumerate(models)
    ]
    health = MemoryModelHealth(cooldown_seconds=30, cooldown_failures=3)
    return ModelRouter(routes, health, system_prompt=system_prompt)
