"""A reply as OpenAI's event streams tell it: Responses events, or Chat Completions chunks.

A reply reaches here in one of two forms: a stored turn's events (the same ones /chat/stream
sends, in batches, from the reply log), or an unstored reply's texts straight from the model.
Both become Pieces, and each API's writer turns pieces into frames, a batch in one write.
"""

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, NamedTuple

import msgspec

from application.answer_unstored import UnstoredStream
from application.errors import HistoryUnavailable, ModelUnavailable
from application.reply_run import Streamed
from domain.answer import Usage
from domain.reply_events import DeltaData, DoneData, ErrorData, SessionData
from entrypoints.http.openai.errors import error_code, error_type
from entrypoints.http.openai.ids import output_id, response_id
from entrypoints.http.openai.wire import (
    ChatCompletionChunk,
    ChunkChoice,
    CompletionUsage,
    ConversationRef,
    Delta,
    OutputMessage,
    OutputText,
    Response,
    ResponseError,
    ResponseUsage,
)
from entrypoints.http.request_log import note_failure, note_reply, note_session


class Started(NamedTuple):
    session_id: str | None  # None: a reply that is not stored


class Finished(NamedTuple):
    text: str
    usage: Usage
    model: str | None


Piece = Started | str | Finished | ErrorData
_KEEP_ALIVE = b": keep-alive\n\n"

_session = msgspec.json.Decoder(SessionData).decode
_delta = msgspec.json.Decoder(DeltaData).decode
_done = msgspec.json.Decoder(DoneData).decode
_error = msgspec.json.Decoder(ErrorData).decode
_encode = msgspec.json.Encoder().encode


async def stored_pieces(streamed: Streamed) -> AsyncGenerator[list[Piece], None]:
    """A stored turn's events as pieces; an empty batch while nothing happens. The reply
    runs on when the client hangs up (`client_gone` says so)."""
    try:
        async for batch in streamed.events:
            pieces: list[Piece] = []
            for event in batch:
                if event.name == "session":
                    session_id = _session(event.data).session_id
                    note_session(session_id)
                    pieces.append(Started(session_id))
                elif event.name == "delta":
                    pieces.append(_delta(event.data).text)
                elif event.name == "done":
                    done = _done(event.data)
                    note_reply(done.session_id, done.model, done.usage, stopped=done.stopped)
                    pieces.append(Finished(done.response, done.usage, done.model))
                else:
                    error = _error(event.data)
                    note_failure(error.status_code)
                    pieces.append(error)
            yield pieces
    finally:
        streamed.client_gone()


async def unstored_pieces(
    stream: UnstoredStream, status_of: Callable[[BaseException], int]
) -> AsyncGenerator[list[Piece], None]:
    """An unstored reply's texts as pieces; closing this ends the provider's call."""
    yield [Started(None)]
    written = []
    try:
        async with contextlib.aclosing(stream.texts()) as texts:
            async for text in texts:
                written.append(text)
                yield [text]
    except (ModelUnavailable, HistoryUnavailable) as error:
        note_failure(status_of(error))
        yield [ErrorData(status_of(error), str(error))]
        return
    assert stream.usage is not None
    note_reply(None, stream.model, stream.usage)
    yield [Finished("".join(written), stream.usage, stream.model)]


async def _framed(
    pieces: AsyncGenerator[list[Piece], None], frames: Callable[[Piece], bytes]
) -> AsyncIterator[bytes]:
    """Each batch of pieces in one write (a keep-alive for an empty one). The pieces are
    closed at once when the client goes: for an unstored reply, that ends the provider's
    call, rather than at garbage collection."""
    async with contextlib.aclosing(pieces):
        async for batch in pieces:
            yield b"".join(frames(piece) for piece in batch) or _KEEP_ALIVE


def completion_usage(usage: Usage) -> CompletionUsage:
    total = usage.input_tokens + usage.output_tokens
    return CompletionUsage(
        prompt_tokens=usage.input_tokens, completion_tokens=usage.output_tokens, total_tokens=total
    )


def _usage(usage: Usage) -> ResponseUsage:
    total = usage.input_tokens + usage.output_tokens
    return ResponseUsage(
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, total_tokens=total
    )


class ResponseShape(NamedTuple):
    """What a Response repeats of its request."""

    model: str
    instructions: str | None
    previous_response_id: str | None
    conversation: ConversationRef | None
    metadata: dict[str, str]
    store: bool


def response(
    shape: ResponseShape,
    rid: str,
    created_at: int,
    message: OutputMessage | None,
    *,
    usage: Usage | None = None,
    model: str | None = None,
    error: ResponseError | None = None,
) -> Response:
    status: Any = "failed" if error else "completed" if usage else "in_progress"
    return Response(
        id=rid,
        created_at=created_at,
        model=model or shape.model,
        status=status,
        output=[] if message is None else [message],
        usage=None if usage is None else _usage(usage),
        instructions=shape.instructions,
        previous_response_id=shape.previous_response_id,
        conversation=shape.conversation,
        metadata=shape.metadata,
        store=shape.store,
        error=error,
    )


class ResponsesEvents:
    """Writes OpenAI's Responses event stream for one reply: the lifecycle events around
    its one output message, each with a rising sequence_number."""

    def __init__(self, shape: ResponseShape, turn: str) -> None:
        self._shape = shape
        self._turn = turn
        self._item = output_id(turn)
        self._created_at = int(time.time())
        self._id = ""
        self._seq = 0

    def frames(self, pieces: AsyncGenerator[list[Piece], None]) -> AsyncIterator[bytes]:
        return _framed(pieces, self._frames)

    def _frames(self, piece: Piece) -> bytes:
        if isinstance(piece, str):
            return self._event(
                "response.output_text.delta",
                item_id=self._item,
                output_index=0,
                content_index=0,
                delta=piece,
                logprobs=[],
            )
        if isinstance(piece, Started):
            self._id = response_id(self._turn, piece.session_id)
            empty = self._message("in_progress", None)
            created = self._response(None)
            return b"".join(
                (
                    self._event("response.created", response=created),
                    self._event("response.in_progress", response=created),
                    self._event("response.output_item.added", output_index=0, item=empty),
                    self._event(
                        "response.content_part.added",
                        item_id=self._item,
                        output_index=0,
                        content_index=0,
                        part=OutputText(text=""),
                    ),
                )
            )
        if isinstance(piece, Finished):
            part = OutputText(text=piece.text)
            message = self._message("completed", piece.text)
            place = {"item_id": self._item, "output_index": 0, "content_index": 0}
            return b"".join(
                (
                    self._event("response.output_text.done", **place, text=piece.text, logprobs=[]),
                    self._event("response.content_part.done", **place, part=part),
                    self._event("response.output_item.done", output_index=0, item=message),
                    self._event(
                        "response.completed",
                        response=response(
                            self._shape,
                            self._id,
                            self._created_at,
                            message,
                            usage=piece.usage,
                            model=piece.model,
                        ),
                    ),
                )
            )
        failure = ResponseError("server_error", piece.detail)
        return b"".join(
            (
                self._event(
                    "error",
                    code=error_code(piece.status_code),
                    message=piece.detail,
                    param=None,
                ),
                self._event(
                    "response.failed",
                    response=response(self._shape, self._id, self._created_at, None, error=failure),
                ),
            )
        )

    def _message(self, status: Any, text: str | None) -> OutputMessage:
        content = [] if text is None else [OutputText(text=text)]
        return OutputMessage(id=self._item, status=status, content=content)

    def _response(self, message: OutputMessage | None) -> Response:
        return response(self._shape, self._id, self._created_at, message)

    def _event(self, kind: str, **fields: object) -> bytes:
        data = _encode({"type": kind, "sequence_number": self._seq, **fields})
        self._seq += 1
        return b"event: %s\ndata: %s\n\n" % (kind.encode(), data)


class ChatChunks:
    """Writes Chat Completions' chunk stream for one reply, ended by `data: [DONE]`. An error
    after the first chunk is a chunk `{"error": ...}`, which the SDKs raise."""

    def __init__(self, completion: str, model: str, include_usage: bool) -> None:
        self._id = completion
        self._model = model
        self._include_usage = include_usage
        self._created = int(time.time())

    def frames(self, pieces: AsyncGenerator[list[Piece], None]) -> AsyncIterator[bytes]:
        return _framed(pieces, self._frames)

    def _frames(self, piece: Piece) -> bytes:
        if isinstance(piece, str):
            return self._chunk(Delta(content=piece))
        if isinstance(piece, Started):
            return self._chunk(Delta(role="assistant", content=""))
        if isinstance(piece, Finished):
            if piece.model:
                self._model = piece.model
            last = self._chunk(Delta(), finish="stop")
            if self._include_usage:
                usage = completion_usage(piece.usage)
                last += self._data(
                    ChatCompletionChunk(
                        id=self._id,
                        created=self._created,
                        model=self._model,
                        choices=[],
                        usage=usage,
                    )
                )
            return last + b"data: [DONE]\n\n"
        status = piece.status_code
        error = {
            "message": piece.detail,
            "type": error_type(status),
            "param": None,
            "code": error_code(status),
        }
        return self._data({"error": error})

    def _chunk(self, delta: Delta, finish: Any = None) -> bytes:
        choice = ChunkChoice(delta=delta, finish_reason=finish)
        return self._data(
            ChatCompletionChunk(
                id=self._id, created=self._created, model=self._model, choices=[choice]
            )
        )

    def _data(self, payload: object) -> bytes:
        return b"data: %s\n\n" % _encode(payload)
