"""Server-Sent Events as a client reads them, for the streaming e2e tests.

A parser fed line by line (as httpx's iter_lines gives them), readers that stop after a
number of events or at the terminal one, and the checks every stream must pass: named
events with JSON data, an id `<16 hex reply id>-<seq>` on each, seq counting up from where
the client resumed, one reply id, exactly one terminal event and it last.
"""

import json
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

EVENT_ID = re.compile(r"([0-9a-f]{16})-(\d+)")
TERMINAL = frozenset({"done", "error"})
EVENT_STREAM = "text/event-stream"


@dataclass(frozen=True)
class Event:
    name: str
    id: str
    data: Any  # the JSON decoded

    @property
    def reply_id(self) -> str:
        return self._id_parts()[0]

    @property
    def seq(self) -> int:
        return int(self._id_parts()[1])

    @property
    def terminal(self) -> bool:
        return self.name in TERMINAL

    def _id_parts(self) -> tuple[str, str]:
        match = EVENT_ID.fullmatch(self.id)
        assert match, f"event id {self.id!r} is not <16 hex>-<seq>"
        return match[1], match[2]


class EventParser:
    """One event per blank line that ends a block with data; comments (`: keep-alive`) and
    unknown fields are skipped, as a browser's EventSource does."""

    def __init__(self) -> None:
        self._name = "message"
        self._id = ""
        self._data: list[str] = []
        self.comments = 0

    def feed(self, line: str) -> Event | None:
        if line == "":
            if not self._data:
                return None
            event = Event(self._name, self._id, json.loads("\n".join(self._data)))
            self._name, self._data = "message", []
            return event
        if line.startswith(":"):
            self.comments += 1
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._name = value
        elif field == "id":
            self._id = value
        elif field == "data":
            self._data.append(value)
        return None


def events_of(lines: Iterable[str]) -> Iterator[Event]:
    parser = EventParser()
    for line in lines:
        if (event := parser.feed(line)) is not None:
            yield event


class EventStream:
    """The events of a streamed response, read a few at a time. Closing the response
    before the terminal event drops the connection, as a client that goes away does."""

    def __init__(self, response: httpx.Response) -> None:
        assert response.status_code == 200, f"{response.status_code}: {response.read()[:500]!r}"
        assert response.headers["content-type"].startswith(EVENT_STREAM), response.headers
        self._events = events_of(response.iter_lines())
        self.ended = False

    def read(self, count: int | None = None) -> list[Event]:
        """`count` more events, or fewer if the terminal one (or the body's end) comes first."""
        events: list[Event] = []
        while not self.ended and len(events) != count:
            event = next(self._events, None)
            if event is None:
                self.ended = True
                break
            events.append(event)
            self.ended = event.terminal
        return events


def read_events(response: httpx.Response, count: int | None = None) -> list[Event]:
    return EventStream(response).read(count)


class AsyncEventStream:
    """EventStream for an httpx.AsyncClient's streamed response."""

    def __init__(self, response: httpx.Response) -> None:
        assert response.status_code == 200, (response.status_code, response.headers)
        assert response.headers["content-type"].startswith(EVENT_STREAM), response.headers
        self._events = _aevents_of(response.aiter_lines())
        self.ended = False

    async def read(self, count: int | None = None) -> list[Event]:
        events: list[Event] = []
        while not self.ended and len(events) != count:
            event = await anext(self._events, None)
            if event is None:
                self.ended = True
                break
            events.append(event)
            self.ended = event.terminal
        return events


async def _aevents_of(lines: AsyncIterator[str]) -> AsyncIterator[Event]:
    parser = EventParser()
    async for line in lines:
        if (event := parser.feed(line)) is not None:
            yield event


def text_of(events: Iterable[Event]) -> str:
    return "".join(event.data["text"] for event in events if event.name == "delta")


def check_order(events: list[Event], after: int = -1) -> None:
    """The events are one reply's, numbered on from `after` without a gap; only the last
    may be terminal; a stream from the start opens with `session`."""
    assert events, "no event"
    assert len({event.reply_id for event in events}) == 1, [event.id for event in events]
    assert [event.seq for event in events] == list(range(after + 1, after + 1 + len(events))), [
        event.id for event in events
    ]
    assert not any(event.terminal for event in events[:-1]), [event.name for event in events]
    if after < 0:
        assert events[0].name == "session", events[0]
    body = events[1:] if after < 0 else events
    assert all(event.name == "delta" for event in body if not event.terminal), [
        event.name for event in events
    ]


def check_whole(events: list[Event], after: int = -1) -> Event:
    """check_order, and the stream ended with its terminal event; returns that event."""
    check_order(events, after)
    assert events[-1].terminal, f"the stream ended without done or error: {events[-3:]}"
    return events[-1]
