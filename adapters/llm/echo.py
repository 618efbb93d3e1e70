"""The offline default: no network, deterministic, and plain about what it is."""

import asyncio
import re
from collections.abc import AsyncGenerator

from domain.answer import Answer, Usage
from domain.conversation import Conversation

_WORD = re.compile(r"\S+\s*|\s+")


class EchoModel:
    """Streams its reply word by word, `word_seconds` apart, so streaming can be seen (and
    stopped, and re-attached to) without a provider. It counts nothing: usage is estimated."""

    def __init__(self, word_seconds: float = 0.0) -> None:
        self._word_seconds = word_seconds

    def _text(self, conversation: Conversation) -> str:
        earlier = len(conversation.messages) - 1
        return (
            f"[echo: offline test model, no LLM provider configured] You said: "
            f"{conversation.last_user_message} ({earlier} earlier messages in this session)"
        )

    async def reply(self, conversation: Conversation) -> Answer:
        return Answer(self._text(conversation))

    async def stream(self, conversation: Conversation) -> AsyncGenerator[str | Usage, None]:
        for index, word in enumerate(_WORD.findall(self._text(conversation))):
            if index and self._word_seconds:
                await asyncio.sleep(self._word_seconds)
            yield word
