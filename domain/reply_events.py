"""A streamed reply as numbered events, and the SSE ids that let a client resume after one.

Each event's data is JSON, encoded once by whoever emits it: the same bytes go to the client,
to the store and to a client that re-attaches later.
"""

import re
import secrets
from typing import Literal

import msgspec

from domain.answer import Usage
from domain.errors import InvalidInput

EventName = Literal["session", "delta", "done", "error"]
TERMINAL: frozenset[str] = frozenset({"done", "error"})

EVENT_ID_PATTERN = r"[0-9a-f]{16}-[0-9]{1,9}"  # a reply's id, then the event's seq
_EVENT_ID = re.compile(EVENT_ID_PATTERN)


class InvalidEventId(InvalidInput):
    pass


class ReplyEvent(msgspec.Struct, frozen=True, array_like=True):
    seq: int  # 0 is the session event; each later event one more
    name: EventName
    data: bytes  # JSON

    @property
    def terminal(self) -> bool:
        return self.name in TERMINAL


class SessionData(msgspec.Struct, frozen=True):
    session_id: str


class DeltaData(msgspec.Struct, frozen=True):
    text: str


class DoneData(msgspec.Struct, frozen=True, omit_defaults=True):
    session_id: str
    response: str
    usage: Usage
    model: str | None = None  # the configured model that answered (None: a receipt from before)
    stopped: bool = False  # POST /chat/{id}/stop ended it; response is what was written until then


class ErrorData(msgspec.Struct, frozen=True):
    status_code: int
    detail: str


EventData = SessionData | DeltaData | DoneData | ErrorData
_NAMES: dict[type[EventData], EventName] = {
    SessionData: "session",
    DeltaData: "delta",
    DoneData: "done",
    ErrorData: "error",
}
_encode = msgspec.json.Encoder().encode


def reply_event(seq: int, data: EventData) -> ReplyEvent:
    return ReplyEvent(seq, _NAMES[type(data)], _encode(data))


def new_reply_id() -> str:
    return secrets.token_hex(8)


def event_id(reply_id: str, seq: int) -> str:
    return f"{reply_id}-{seq}"


def parse_event_id(raw: str) -> tuple[str, int]:
    """The reply and the event a client saw last, from its Last-Event-ID."""
    event = raw.strip()
    if not _EVENT_ID.fullmatch(event):
        raise InvalidEventId(
            "Last-Event-ID must be the id of an event this service sent, like 0123456789abcdef-12"
        )
    reply_id, _, seq = event.partition("-")
    return reply_id, int(seq)
