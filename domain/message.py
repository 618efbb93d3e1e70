"""A message of a conversation, and the rules a user's message must follow."""

from datetime import datetime
from typing import Literal

import msgspec

from domain.errors import InvalidMessage

Role = Literal["user", "assistant"]


class Message(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """Untracked by the cycle collector (it holds only strings and a datetime, so it can be
    in no cycle): a turn loads a whole history of them."""

    role: Role
    content: str
    created_at: datetime
    model: str | None = None  # an assistant message: the configured model that wrote it


def check_user_message(text: str, max_chars: int) -> str:
    """Return `text` unchanged if a user may send it; whitespace-only text says nothing."""
    if not text.strip():
        raise InvalidMessage("message must not be empty")
    if len(text) > max_chars:
        raise InvalidMessage(f"message is {len(text)} characters long; the limit is {max_chars}")
    return text
