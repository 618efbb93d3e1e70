"""OpenAI-style ids for what the service stores under its own: responses, messages, items.

A response id names its session (`resp_<turn>_<session id>`), so a chain of responses through
`previous_response_id` continues one session with nothing stored to map one to the other; the
turn part is derived from the Idempotency-Key when there is one, so a replayed request gets
its first answer's id. An item id is its message's timestamp, the microseconds that already
make every stored entry unique.
"""

import hashlib
import re
import secrets
from datetime import UTC, datetime, timedelta

from domain.errors import InvalidSessionId
from domain.message import Message
from domain.session import parse_session_id

_RESPONSE_ID = re.compile(r"resp_([0-9a-f]{16})_(.+)")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def turn_id(namespace: str, idempotency_key: str | None) -> str:
    if idempotency_key is None:
        return secrets.token_hex(8)
    return hashlib.sha256(f"{namespace}\n{idempotency_key.strip()}".encode()).hexdigest()[:16]


def response_id(turn: str, session_id: str | None) -> str:
    """None: a response that was not stored, which no later response can continue."""
    return f"resp_{turn}" if session_id is None else f"resp_{turn}_{session_id}"


def session_of(response: str) -> str | None:
    """The session a response id names; None for one that names none (or was not ours)."""
    match = _RESPONSE_ID.fullmatch(response.strip())
    if match is None:
        return None
    try:
        return parse_session_id(match[2])
    except InvalidSessionId:
        return None


def output_id(turn: str) -> str:
    return f"msg_{turn}"


def item_id(message: Message) -> str:
    microseconds = (message.created_at - _EPOCH) // _MICROSECOND
    return f"msg_{microseconds:x}{0 if message.role == 'user' else 1}"


def completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"
