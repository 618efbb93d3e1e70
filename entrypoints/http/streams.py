"""Streamed replies over Server-Sent Events: start one, re-attach to one, stop one.

Frames are written here rather than with Litestar's ServerSentEvent: each event's data is
already JSON (encoded once by the use case), and the keep-alive comment must go out while
a reply is quiet, which Litestar 2's ServerSentEvent cannot do (its ping_interval is 3.0's).
And the response is a plain ASGI app (EventStream) rather than Litestar's Stream, which
starts an anyio task group and a second task per response: a hop of the event loop before
the first event, and work on every stream, for what one watch on `receive` does here.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any, cast

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency, Provide
from litestar.openapi import ResponseSpec
from litestar.params import HeaderParameter, JSONBody, Parameter
from litestar.types import Receive, Scope, Send

from application.reply_run import Streamed
from domain.reply_events import (
    EVENT_ID_PATTERN,
    DeltaData,
    DoneData,
    ErrorData,
    ReplyEvent,
    SessionData,
    event_id,
)
from entrypoints.http.controllers import (
    COMMON_ERRORS,
    SEND_ERRORS,
    Caller,
    ChatRequest,
    IdempotencyKeyHeader,
    SessionIdInPath,
    caller_of,
    error_spec,
)
from entrypoints.http.request_log import note_failure, note_reply, note_session

KEEP_ALIVE_SECONDS = 15.0
_KEEP_ALIVE = b": keep-alive\n\n"
MEDIA_TYPE = "text/event-stream"
# Proxies (nginx) buffer a response unless told not to; a cached stream is a stale reply.
_HEADERS = [
    (b"content-type", f"{MEDIA_TYPE}; charset=utf-8".encode()),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]

EVENTS_DESCRIPTION = f"""\
Server-Sent Events, each with an `id` and JSON `data`, in this order:
`session` `{{"session_id"}}`; `delta` `{{"text"}}` zero or more times (concatenated, the
reply); then exactly one of `done` `{{"session_id", "response", "usage", "model",
"stopped"?}}` (`model`: the configured model that answered), sent once the exchange is
stored, or `error` `{{"status_code", "detail"}}`, after which nothing of it is stored.
A `: keep-alive` comment goes out every {KEEP_ALIVE_SECONDS:g} s while nothing else does.
Re-attach with GET /chat/{{session_id}}/stream and `Last-Event-ID`."""


async def _frames(streamed: Streamed) -> AsyncIterator[bytes]:
    """Each batch of events in one write."""
    try:
        async for batch in streamed.events:
            if batch:
                _note(batch[0], batch[-1])
            yield b"".join(_frame(streamed.reply_id, event) for event in batch) or _KEEP_ALIVE
    finally:
        streamed.client_gone()


_session = msgspec.json.Decoder(SessionData).decode
_done = msgspec.json.Decoder(DoneData).decode
_error = msgspec.json.Decoder(ErrorData).decode


def _note(first: ReplyEvent, last: ReplyEvent) -> None:
    """The request line's facts, from the events that carry them: the session event opens
    its batch, a terminal event ends its own. The deltas are not looked at."""
    if first.name == "session":
        note_session(_session(first.data).session_id)
    if last.name == "done":
        done = _done(last.data)
        note_reply(done.session_id, done.model, done.usage, stopped=done.stopped)
    elif last.name == "error":
        note_failure(_error(last.data).status_code)


def _frame(reply_id: str, event: ReplyEvent) -> bytes:
    return b"event: %s\nid: %s\ndata: %s\n\n" % (
        event.name.encode(),
        event_id(reply_id, event.seq).encode(),
        event.data,
    )


def asgi_headers(headers: dict[str, str] | None) -> list[tuple[bytes, bytes]]:
    """Headers as an ASGI response's start message carries them."""
    return [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]


class EventStream:
    """The response to a stream request, as an ASGI app: each chunk of `frames` in one
    write. A client that hangs up ends it (Litestar's Stream did the same); what `frames`
    does then is its own (a reply runs on, unless told otherwise by `client_gone`).
    `frames` None: 204, nothing more to send."""

    def __init__(
        self, frames: AsyncIterator[bytes] | None, headers: dict[str, str] | None = None
    ) -> None:
        self._frames = frames
        self._headers = [*_HEADERS, *asgi_headers(headers)] if headers else _HEADERS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._frames is None:
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        writer = asyncio.current_task()
        assert writer is not None

        def hung_up(watch: asyncio.Task[None]) -> None:
            if not watch.cancelled():  # it returned: the client disconnected
                writer.cancel()

        watch = asyncio.create_task(_hang_up(receive))
        watch.add_done_callback(hung_up)
        try:
            async for chunk in self._frames:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not watch.done() or watch.cancelled():
                raise
            writer.uncancel()  # the client is gone: nothing left to send it
        finally:
            watch.cancel()


async def _hang_up(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _json_of(kind: type[msgspec.Struct]) -> Any:
    """An event's `data` as the document shows it: a string holding this JSON."""
    schema = msgspec.json.schema(kind)
    definitions = schema.pop("$defs", {})

    def inlined(node: Any) -> Any:  # the document has no $defs of its own to point into
        if isinstance(node, dict):
            if "$ref" in node:
                return inlined(definitions[node["$ref"].rsplit("/", 1)[1]])
            return {key: inlined(value) for key, value in node.items()}
        return [inlined(value) for value in node] if isinstance(node, list) else node

    return Annotated[
        str,
        Parameter(
            schema_extra={"contentMediaType": "application/json", "contentSchema": inlined(schema)}
        ),
    ]


# The events as the OpenAPI document shows them; on the wire each is the SSE lines
# `event:`, `id:` and `data:`.
class SessionEvent(msgspec.Struct, tag_field="event", tag="session"):
    id: str
    data: _json_of(SessionData)  # type: ignore[valid-type]


class DeltaEvent(msgspec.Struct, tag_field="event", tag="delta"):
    id: str
    data: _json_of(DeltaData)  # type: ignore[valid-type]


class DoneEvent(msgspec.Struct, tag_field="event", tag="done"):
    id: str
    data: _json_of(DoneData)  # type: ignore[valid-type]


class ErrorEvent(msgspec.Struct, tag_field="event", tag="error"):
    id: str
    data: _json_of(ErrorData)  # type: ignore[valid-type]


StreamEvent = SessionEvent | DeltaEvent | DoneEvent | ErrorEvent


def _stream_spec() -> dict[int, ResponseSpec]:
    return {
        200: ResponseSpec(
            cast(Any, StreamEvent),  # a union, which Litestar documents as oneOf
            description=EVENTS_DESCRIPTION,
            media_type=MEDIA_TYPE,
            generate_examples=False,
        )
    }


class Stopping(msgspec.Struct):
    session_id: str
    status: str = "stopping"


class StreamController(Controller):
    path = "/chat"
    tags = ["chat"]  # noqa: RUF012  (Litestar reads it as a class attribute)
    dependencies = {"caller": Provide(caller_of, sync_to_thread=False)}  # noqa: RUF012

    @post(
        "/stream",
        status_code=200,
        media_type=MEDIA_TYPE,
        responses={**SEND_ERRORS, **_stream_spec()},
        summary="Send a message, get the reply as it is written (Server-Sent Events)",
    )
    async def stream(
        self,
        data: JSONBody[ChatRequest],
        caller: NamedDependency[Caller],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> EventStream:
        """Errors known before the model's first text (400-504) are JSON, never a stream."""
        note_session(data.session_id)
        streamed = await caller.services.stream_message.start(
            caller.namespace,
            data.session_id,
            data.message,
            idempotency_key,
            idle_seconds=KEEP_ALIVE_SECONDS,
        )
        return EventStream(_frames(streamed))

    @get(
        "/{session_id:str}/stream",
        media_type=MEDIA_TYPE,
        responses={
            **COMMON_ERRORS,
            404: error_spec("The session has no reply running or recently ended"),
            204: ResponseSpec(None, description="Last-Event-ID names the reply's last event"),
            **_stream_spec(),
        },
        summary="Re-attach to the session's latest streamed reply",
    )
    async def attach(
        self,
        session_id: SessionIdInPath,
        caller: NamedDependency[Caller],
        last_event_id: Annotated[
            str | None,
            HeaderParameter(
                name="Last-Event-ID",
                required=False,
                # Stated here, enforced by the domain, whose error says it in words. A
                # string when sent (Litestar would also document "null", which a header
                # cannot be).
                schema_extra={"oneOf": None, "type": "string", "pattern": f"^{EVENT_ID_PATTERN}$"},
                description=(
                    "The id of the last event received: the stream resumes after it. "
                    "Without it, the latest reply is sent from its first event."
                ),
            ),
        ] = None,
    ) -> EventStream:
        note_session(session_id)
        streamed = await caller.services.attach_reply.execute(
            caller.namespace, session_id, last_event_id, idle_seconds=KEEP_ALIVE_SECONDS
        )
        # None: 204, which tells EventSource to stop reconnecting
        return EventStream(None if streamed is None else _frames(streamed))

    @post(
        "/{session_id:str}/stop",
        status_code=202,
        responses={**COMMON_ERRORS, 404: error_spec("The session has no reply running")},
        summary="Stop the session's running reply; what was written so far is stored",
    )
    async def stop(self, session_id: SessionIdInPath, caller: NamedDependency[Caller]) -> Stopping:
        note_session(session_id)
        await caller.services.stop_reply.execute(caller.namespace, session_id)
        return Stopping(session_id.strip())
