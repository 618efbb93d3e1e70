"""OpenAI's Responses API over the service's sessions, and its Chat Completions."""

import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple

import msgspec
from litestar import Controller, Request, post
from litestar.di import NamedDependency, Provide
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Operation, Schema
from litestar.openapi.spec.enums import OpenAPIType
from litestar.params import HeaderParameter, JSONBody
from litestar.types import ASGIApp, Receive, Scope, Send

from application.errors import SessionNotFound
from application.model_routing import TurnOptions
from domain.answer import Usage, estimate_usage
from domain.errors import InvalidSessionId
from domain.session import parse_session_id
from entrypoints.http.controllers import (
    SESSION_ID_PATTERN,
    SESSION_ID_RULE,
    Caller,
    IdempotencyKeyHeader,
    caller_of,
)
from entrypoints.http.errors import status_of
from entrypoints.http.openai.errors import OPENAI_SEND_ERRORS, InvalidParameter
from entrypoints.http.openai.events import (
    ChatChunks,
    Piece,
    ResponsesEvents,
    ResponseShape,
    completion_usage,
    response,
    stored_pieces,
    unstored_pieces,
)
from entrypoints.http.openai.ids import completion_id, output_id, response_id, session_of, turn_id
from entrypoints.http.openai.turns import turn
from entrypoints.http.openai.wire import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    Content,
    ConversationRef,
    OutputMessage,
    OutputText,
    ResponsesRequest,
    Role,
    strictly,
)
from entrypoints.http.openai.wire import Response as ResponseObject
from entrypoints.http.request_log import note_reply, note_session
from entrypoints.http.streams import KEEP_ALIVE_SECONDS, MEDIA_TYPE, EventStream, asgi_headers

SESSION_HEADER = "X-Session-ID"
RESPONSES_STREAMED = """\
A Response; with `"stream": true`, OpenAI's Responses event stream: `response.created`,
`response.in_progress`, `response.output_item.added`, `response.content_part.added`,
`response.output_text.delta` for each piece, `response.output_text.done`,
`response.content_part.done`, `response.output_item.done`, `response.completed`; or, after a
failure, `error` then `response.failed`."""
CHUNKS_STREAMED = """\
A ChatCompletion; with `"stream": true`, its chunks as `data:` events, then `data: [DONE]`
(after a failure, a last `data: {"error": ...}`)."""


@dataclass
class AlsoStreamed(Operation):
    """An operation whose 200 is JSON, or with `"stream": true` an event stream: Litestar
    documents one media type per status, so the second is added here."""

    def __post_init__(self) -> None:
        ok = self.responses["200"] if self.responses else None
        if isinstance(ok, OpenAPIResponse) and ok.content is not None:
            ok.content[MEDIA_TYPE] = OpenAPIMediaType(schema=_EVENT)


# One event of the stream, as the document shows events: its `event:` and `data:` lines.
_EVENT = Schema(
    type=OpenAPIType.OBJECT,
    properties={
        "event": Schema(type=OpenAPIType.STRING),
        "data": Schema(type=OpenAPIType.STRING, description="JSON, or [DONE] at the end"),
    },
    required=["data"],
)


_encode = msgspec.json.Encoder().encode


class JsonAnswer:
    """A JSON answer as an ASGI app, for a handler that answers with a stream otherwise
    (Litestar picks one way of answering per handler, from its return annotation)."""

    def __init__(self, body: object, headers: dict[str, str] | None = None) -> None:
        self._body = _encode(body)
        self._headers = [(b"content-type", b"application/json"), *asgi_headers(headers)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        await send({"type": "http.response.body", "body": self._body, "more_body": False})


class _Answered(NamedTuple):
    text: str
    usage: Usage
    model: str | None
    stored_in: str | None  # the session; None when nothing was stored


async def _answer(
    caller: Caller,
    session_id: str | None,
    text: str,
    options: TurnOptions,
    *,
    store: bool,
    idempotency_key: str | None,
) -> _Answered:
    """A whole reply, stored in its session (with the Idempotency-Key) or stored nowhere."""
    services = caller.services
    note_session(session_id)
    if store:
        reply = await services.send_message.execute(
            caller.namespace, session_id, text, idempotency_key, options
        )
        usage = reply.usage or estimate_usage((text,), reply.response)  # an older receipt's
        note_reply(reply.session_id, reply.model, usage)
        return _Answered(reply.response, usage, reply.model, reply.session_id)
    answer = await services.answer_unstored.reply(caller.namespace, session_id, text, options)
    assert answer.usage is not None  # the router always counts or estimates it
    note_reply(None, answer.model, answer.usage)
    return _Answered(answer.text, answer.usage, answer.model, None)


async def _stream(
    caller: Caller,
    session_id: str | None,
    text: str,
    options: TurnOptions,
    *,
    store: bool,
    idempotency_key: str | None,
) -> tuple[AsyncGenerator[list[Piece], None], str | None]:
    """A reply as it is written, once its first text is: stored (it then runs to its end
    whoever follows it) or stored nowhere; and its model, when already known."""
    services = caller.services
    note_session(session_id)
    if store:
        streamed = await services.stream_message.start(
            caller.namespace,
            session_id,
            text,
            idempotency_key,
            idle_seconds=KEEP_ALIVE_SECONDS,
            options=options,
        )
        return stored_pieces(streamed), None
    unstored = await services.answer_unstored.stream(caller.namespace, session_id, text, options)
    return unstored_pieces(unstored, status_of), unstored.model


async def _session(caller: Caller, data: ResponsesRequest) -> str | None:
    """The session a Responses turn continues, which must exist; None: a new one."""
    conversation = data.conversation
    if conversation is not None:
        session_id = conversation if isinstance(conversation, str) else conversation.id
        await caller.services.conversations.show(caller.namespace, session_id)
        return session_id.strip()
    if data.previous_response_id is not None:
        continued = session_of(data.previous_response_id)
        missing = SessionNotFound(f"no response {data.previous_response_id!r} to continue")
        if continued is None:
            raise missing
        try:
            await caller.services.conversations.show(caller.namespace, continued)
        except SessionNotFound:
            raise missing from None
        return continued
    return None


class ResponsesController(Controller):
    path = "/"
    tags = ["openai"]  # noqa: RUF012  (Litestar reads it as a class attribute)
    dependencies = {"caller": Provide(caller_of, sync_to_thread=False)}  # noqa: RUF012

    @post(
        "/responses",
        status_code=200,
        responses={
            200: ResponseSpec(ResponseObject, description=RESPONSES_STREAMED),
            **OPENAI_SEND_ERRORS,
        },
        operation_class=AlsoStreamed,
        summary="Answer a turn, OpenAI's Responses API",
    )
    async def responses(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[ResponsesRequest],
        caller: NamedDependency[Caller],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> ASGIApp:
        data = strictly(await request.body(), ResponsesRequest)
        if isinstance(data.input, str):
            messages: list[tuple[Role, Content]] = [("user", data.input)]
        else:
            messages = [(m.role, m.content) for m in data.input]
        text, options = turn("input", messages, model=data.model, instructions=data.instructions)
        session_id = await _session(caller, data)
        conversation = data.conversation
        shape = ResponseShape(
            data.model,
            data.instructions,
            data.previous_response_id,
            ConversationRef(conversation) if isinstance(conversation, str) else conversation,
            data.metadata or {},
            data.store,
        )
        turned = turn_id(caller.namespace, idempotency_key)
        if data.stream:
            pieces, _ = await _stream(
                caller, session_id, text, options, store=data.store, idempotency_key=idempotency_key
            )
            return EventStream(ResponsesEvents(shape, turned).frames(pieces))
        answered = await _answer(
            caller, session_id, text, options, store=data.store, idempotency_key=idempotency_key
        )
        message = OutputMessage(
            id=output_id(turned), status="completed", content=[OutputText(text=answered.text)]
        )
        body = response(
            shape,
            response_id(turned, answered.stored_in),
            int(time.time()),
            message,
            usage=answered.usage,
            model=answered.model,
        )
        return JsonAnswer(body)

    @post(
        "/chat/completions",
        status_code=200,
        responses={
            200: ResponseSpec(ChatCompletion, description=CHUNKS_STREAMED),
            **OPENAI_SEND_ERRORS,
        },
        operation_class=AlsoStreamed,
        summary="Answer a turn, OpenAI's Chat Completions (X-Session-ID: kept in a session)",
    )
    async def chat_completions(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[ChatCompletionRequest],
        caller: NamedDependency[Caller],
        idempotency_key: IdempotencyKeyHeader = None,
        session_id: Annotated[
            str | None,
            HeaderParameter(
                name=SESSION_HEADER,
                required=False,
                # A string when sent (Litestar would also document "null", which a header
                # cannot be); enforced by the domain.
                schema_extra={"oneOf": None, "type": "string", "pattern": SESSION_ID_PATTERN},
                description=(
                    f"{SESSION_ID_RULE}. Keep the conversation in this session (a new id "
                    "starts one): its last message is the new turn, and the stored history "
                    "is what the model sees. Without it, messages is the whole conversation "
                    "and nothing is stored."
                ),
            ),
        ] = None,
    ) -> ASGIApp:
        data = strictly(await request.body(), ChatCompletionRequest)
        stored = session_id is not None
        if session_id is not None:
            try:
                session_id = parse_session_id(session_id)
            except InvalidSessionId as error:
                raise InvalidParameter(SESSION_HEADER, str(error)) from None
        messages = [(m.role, m.content) for m in data.messages]
        text, options = turn("messages", messages, model=data.model, keep_earlier=not stored)
        headers = {SESSION_HEADER: session_id} if session_id is not None else None
        completion = completion_id()
        if data.stream:
            include_usage = data.stream_options is not None and data.stream_options.include_usage
            pieces, model = await _stream(
                caller, session_id, text, options, store=stored, idempotency_key=idempotency_key
            )
            chunks = ChatChunks(completion, model or data.model, include_usage)
            return EventStream(chunks.frames(pieces), headers)
        answered = await _answer(
            caller, session_id, text, options, store=stored, idempotency_key=idempotency_key
        )
        body = ChatCompletion(
            id=completion,
            created=int(time.time()),
            model=answered.model or data.model,
            choices=[Choice(message=AssistantMessage(content=answered.text))],
            usage=completion_usage(answered.usage),
        )
        return JsonAnswer(body, headers)
