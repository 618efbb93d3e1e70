"""What a Responses or Chat Completions request asks of a turn: its message and its options."""

from collections.abc import Sequence
from datetime import UTC, datetime

from application.model_routing import TurnOptions
from domain.message import Message
from entrypoints.http.openai.errors import InvalidParameter
from entrypoints.http.openai.wire import Content, Role, text_of

DEFAULT_MODEL = "default"  # the configured models in order, with their fallbacks


def turn(
    param: str,
    messages: Sequence[tuple[Role, Content]],
    *,
    model: str,
    instructions: str | None = None,
    keep_earlier: bool = True,
) -> tuple[str, TurnOptions]:
    """The new message (the last, the user's) and the options: system and developer messages
    join the instructions; earlier user and assistant messages are sent along, unless the
    session's stored history stands for them (keep_earlier False)."""
    if not messages or messages[-1][0] != "user":
        raise InvalidParameter(param, "the last message must be the user's (the new turn)")
    earlier = messages[:-1]
    said = [text_of(content) for role, content in earlier if role in ("system", "developer")]
    told = "\n\n".join(part for part in (instructions, *said) if part) or None
    context: tuple[Message, ...] = ()
    if keep_earlier:
        now = datetime.now(UTC)
        context = tuple(
            Message(role, text_of(content), now)
            for role, content in earlier
            if role == "user" or role == "assistant"
        )
    chosen = None if model == DEFAULT_MODEL else model
    return text_of(messages[-1][1]), TurnOptions(chosen, told, context)
