"""Server-sent events read from bytes as they arrive.

A network chunk can end anywhere, in a line or in a UTF-8 character, so the reader splits
on b"\\n" and decodes only complete lines; a line's b"\\r" (CRLF endings) is dropped. Data
stays bytes: the adapters hand it to msgspec, which validates the UTF-8 itself.
"""

from typing import NamedTuple


class SseEvent(NamedTuple):
    name: str  # the `event:` field; "message" when the server sends none (OpenAI, TGI)
    data: bytes  # its `data:` lines joined by b"\n"


class SseTooLong(ValueError):
    """A line or event grew past the limit without ending: not an event stream to keep."""


class SseReader:
    """Feed it chunks; it returns the events they complete. `limit` bounds what it holds
    while an event is incomplete, so a server that never ends a line cannot fill memory."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._partial = b""  # the current line, not yet ended
        self._name = ""
        self._data: list[bytes] = []
        self._held = 0  # bytes of the event being read

    def feed(self, chunk: bytes) -> list[SseEvent]:
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        events = [event for line in lines if (event := self._line(line)) is not None]
        if len(self._partial) + self._held > self._limit:
            raise SseTooLong(f"an event longer than {self._limit} bytes")
        return events

    def end(self) -> list[SseEvent]:
        """At the end of the body: an event the server did not close with a blank line still
        counts, as browsers do not but servers that forget the last blank line expect."""
        tail, self._partial = self._partial, b""
        return [event for line in (tail, b"") if (event := self._line(line)) is not None]

    def _line(self, line: bytes) -> SseEvent | None:
        line = line.removesuffix(b"\r")
        if not line:
            return self._dispatch()
        field, colon, value = line.partition(b":")
        if not field:  # a comment (": keep-alive")
            return None
        if colon and value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            self._data.append(value)
            self._held += len(value) + 1
        elif field == b"event":
            self._name = value.decode("utf-8", errors="replace")
        return None  # id and retry say nothing a provider call uses

    def _dispatch(self) -> SseEvent | None:
        if not self._data:
            self._name = ""  # an event without data is not dispatched
            return None
        event = SseEvent(self._name or "message", b"\n".join(self._data))
        self._name, self._data, self._held = "", [], 0
        return event
