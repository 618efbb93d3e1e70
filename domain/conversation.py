"""What a language model is shown: the system prompt and the turns, oldest first."""

from collections.abc import Iterator, Sequence

import msgspec

from domain.message import Message


class Conversation(msgspec.Struct, frozen=True):
    system_prompt: str | None
    messages: tuple[Message, ...]

    @property
    def last_user_message(self) -> str:
        return self.messages[-1].content


def build_conversation(
    system_prompt: str | None, history: Sequence[Message], question: Message
) -> Conversation:
    """History then the new question; a history trimmed to start with a reply drops that reply.

    Trimming to max_messages can cut a question from its answer. Providers (Anthropic, the
    Mistral template) require the first turn to be the user's, so an orphaned leading reply
    is left out rather than sent.
    """
    start = 0
    while start < len(history) and history[start].role != "user":
        start += 1
    return Conversation(system_prompt or None, (*history[start:], question))


def prompt_texts(conversation: Conversation) -> Iterator[str]:
    """What a model reads, for estimating its input tokens."""
    if conversation.system_prompt:
        yield conversation.system_prompt
    for message in conversation.messages:
        yield message.content
