"""Fixture: a real HTTP server on loopback standing in for an LLM provider.

Built on asyncio.start_server, so a test decides every byte and every pause: each request is
answered by the next planned Reply, or by `default` once the plan runs out. A Reply's `kind`
selects how it misbehaves; a new fault is a new kind handled in `_send`. Where the answer
depends on the request (a model that refuses some parameters), a Responder stands in for the
Reply and makes one from the request.

A streamed reply (kind "stream", made by `streamed`) is a list of byte pieces, each sent as
its own write after its own pause, so a test can split an event mid-line or mid-character and
then end it cleanly, with a TCP reset, or with a stall. `openai_stream`, `anthropic_stream`
and `tgi_stream` write the providers' event streams byte for byte.

`windowed` stands in for a model with a context window: it counts each prompt with the
stand-ins' own tokenizer (`stub_tokens`), refuses what does not fit as the provider does, and
answers the rest with usage in the same counts.

The stub also shows what its client does: `open_connections` and `replying` right now, and in
`abandoned` every connection the client closed before its reply was completely sent, with the
time, so a test can see a caller give up on (cancel) a provider call and release its connection.
"""

import asyncio
import contextlib
import dataclasses
import itertools
import json
import re
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import pytest
import pytest_asyncio

from adapters.llm.aiohttp_transport import AiohttpTransport

# complete: headers then the whole body. trickle: the body in chunk_size pieces, chunk_interval
# apart. cut_mid_body: half the declared body, then a TCP reset. no_headers: read the request,
# then say nothing until the client hangs up. stream: `pieces`, each after its `pauses` entry,
# then `ending`.
Kind = Literal["complete", "trickle", "cut_mid_body", "no_headers", "stream"]
# complete: the body ends as declared. reset: a TCP reset instead. stall: nothing more is
# sent; the connection stays open until the client hangs up.
Ending = Literal["complete", "reset", "stall"]


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the status line
    kind: Kind = "complete"
    chunked: bool = False  # Transfer-Encoding: chunked instead of Content-Length
    chunk_size: int = 16
    chunk_interval: float = 0.05
    pieces: tuple[bytes, ...] = ()  # kind "stream": the body, as written
    pauses: tuple[float, ...] = ()  # kind "stream": seconds before each piece
    ending: Ending = "complete"  # kind "stream"


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    connection: int  # the n-th connection the stub accepted, to see keep-alive at work
    received_at: float = 0.0  # time.monotonic() once the request head was read

    @property
    def json(self) -> Any:
        return json.loads(self.body)


Responder = Callable[[RecordedRequest], Reply]


# before-headers: during the reply's delay (or a no_headers reply). during-body: after the status
# line, before the last byte of the body.
Phase = Literal["before-headers", "during-body"]


@dataclass(frozen=True)
class Abandoned:
    """A connection its client closed while the stub still owed it (part of) a reply."""

    connection: int  # as in RecordedRequest.connection
    received_at: float  # time.monotonic() when the unanswered request arrived
    closed_at: float  # time.monotonic() when the stub saw the connection closed
    phase: Phase


class _ClientLeft(Exception):
    def __init__(self, phase: Phase) -> None:
        super().__init__(phase)
        self.phase = phase


def json_reply(
    payload: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> Reply:
    merged = {"content-type": "application/json", **(headers or {})}
    return Reply(status, json.dumps(payload).encode(), merged)


def error_reply(status: int = 500, retry_after: str | None = None) -> Reply:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    return json_reply({"error": {"message": f"stub says {status}"}}, status, headers)


def garbage_reply() -> Reply:
    """A 200 whose body is not JSON, as a misconfigured gateway sends."""
    return Reply(200, b"<html><body>Bad gateway</body></html>", {"content-type": "text/html"})


def huge_reply(size: int, *, chunked: bool = False) -> Reply:
    """A JSON string of `size` bytes; chunked hides the size from the Content-Length check."""
    return Reply(200, b'"' + b"x" * (size - 2) + b'"', chunked=chunked)


def slow(reply: Reply, seconds: float) -> Reply:
    return dataclasses.replace(reply, delay=seconds)


def trickle(reply: Reply, interval: float, chunk_size: int = 16) -> Reply:
    return dataclasses.replace(
        reply, kind="trickle", chunk_interval=interval, chunk_size=chunk_size
    )


def cut_mid_body(reply: Reply) -> Reply:
    return dataclasses.replace(reply, kind="cut_mid_body")


def no_headers() -> Reply:
    return Reply(kind="no_headers")


def openai_body(text: str | None, usage: tuple[int, int] | None = None) -> dict[str, Any]:
    message = {"role": "assistant", "content": text}
    body: dict[str, Any] = {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }
    if usage is not None:
        prompt, completion = usage
        body["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                         "total_tokens": prompt + completion}  # fmt: skip
    return body


def anthropic_body(*texts: str, usage: tuple[int, int] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "msg_stub",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": text} for text in texts],
        "stop_reason": "end_turn",
    }
    if usage is not None:
        body["usage"] = {"input_tokens": usage[0], "output_tokens": usage[1]}
    return body


def huggingface_body(text: str, *, as_list: bool = True) -> object:
    """The Inference API answers a list; a TGI `/generate` endpoint a bare object."""
    answer = {"generated_text": text}
    return [answer] if as_list else answer


# --- refusals as the providers word them, byte for byte ------------------------------------
# OpenAI indents its error JSON by two spaces; Anthropic, Hugging Face and TGI send it compact.

OPENAI_KEY_PAGE = "https://platform.openai.com/account/api-keys"


def openai_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    kind: str = "invalid_request_error",
) -> Reply:
    error = {"message": message, "type": kind, "param": param, "code": code}
    body = json.dumps({"error": error}, indent=2)
    return Reply(status, body.encode(), {"content-type": "application/json"})


def openai_max_tokens_refused() -> Reply:
    """o-series and GPT-5 models, sent `max_tokens`."""
    return openai_error(
        400,
        "Unsupported parameter: 'max_tokens' is not supported with this model. "
        "Use 'max_completion_tokens' instead.",
        param="max_tokens",
        code="unsupported_parameter",
    )


def openai_temperature_refused(value: object) -> Reply:
    """GPT-5 and later o-series models, sent a temperature other than 1."""
    return openai_error(
        400,
        f"Unsupported value: 'temperature' does not support {json.dumps(value)} with this "
        "model. Only the default (1) value is supported.",
        param="temperature",
        code="unsupported_value",
    )


def openai_temperature_unknown() -> Reply:
    """o1 and o3-mini, sent any temperature."""
    return openai_error(
        400,
        "Unsupported parameter: 'temperature' is not supported with this model.",
        param="temperature",
        code="unsupported_parameter",
    )


def openai_wrong_key(key: str) -> Reply:
    """OpenAI shows a wrong key's first 8 and last 4 characters."""
    masked = key[:8] + "*" * max(len(key) - 12, 4) + key[-4:]
    return openai_error(
        401,
        f"Incorrect API key provided: {masked}. You can find your API key at {OPENAI_KEY_PAGE}.",
        code="invalid_api_key",
    )


def openai_unknown_model(model: str) -> Reply:
    return openai_error(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
    )


def openai_context_too_long() -> Reply:
    return openai_error(
        400,
        "This model's maximum context length is 128000 tokens. However, your messages "
        "resulted in 130017 tokens. Please reduce the length of the messages.",
        param="messages",
        code="context_length_exceeded",
    )


def openai_rate_limited(model: str) -> Reply:
    return openai_error(
        429,
        f"Rate limit reached for {model} in organization org-Stub0rg4n1zat10nId on requests "
        "per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s. Visit "
        "https://platform.openai.com/account/rate-limits to learn more.",
        code="rate_limit_exceeded",
        kind="requests",
    )


def openai_reasoning_model(answer: str = "reasoned answer") -> Responder:
    """OpenAI serving a reasoning model: it refuses `max_tokens` and any temperature but 1,
    one refusal at a time, and answers a request that has neither."""

    def respond(request: RecordedRequest) -> Reply:
        sent = request.json
        if "max_tokens" in sent:
            return openai_max_tokens_refused()
        if sent.get("temperature", 1) != 1:
            return openai_temperature_refused(sent["temperature"])
        return json_reply(openai_body(answer))

    return respond


def anthropic_error(status: int, kind: str, message: str) -> Reply:
    error = {"type": "error", "error": {"type": kind, "message": message}}
    body = json.dumps({**error, "request_id": "req_011CStubRequest0001"}, separators=(",", ":"))
    return Reply(status, body.encode(), {"content-type": "application/json"})


def huggingface_error(status: int, error: str | list[str], error_type: str | None = None) -> Reply:
    """The Inference API's `{"error": ...}` (a message or a list of them); TGI adds
    `error_type`."""
    payload: dict[str, object] = {"error": error}
    if error_type is not None:
        payload["error_type"] = error_type
    body = json.dumps(payload, separators=(",", ":"))
    return Reply(status, body.encode(), {"content-type": "application/json"})


# --- streamed replies --------------------------------------------------------------------


def streamed(
    pieces: Sequence[bytes],
    *,
    pause: float | Sequence[float] = 0.0,
    ending: Ending = "complete",
    status: int = 200,
    content_type: str = "text/event-stream",
) -> Reply:
    """A chunked reply written as `pieces`; `pause` seconds before each piece but the first
    (one figure for all, or one per piece)."""
    pauses = tuple(pause) if isinstance(pause, Sequence) else (0.0,) + (pause,) * (len(pieces) - 1)
    assert len(pauses) == len(pieces), "one pause per piece"
    return Reply(
        status,
        b"".join(pieces),
        {"content-type": content_type, "cache-control": "no-cache"},
        kind="stream",
        chunked=True,
        pieces=tuple(pieces),
        pauses=pauses,
        ending=ending,
    )


def split_at(body: bytes, *offsets: int) -> list[bytes]:
    """`body` cut at these byte offsets: the pieces for `streamed`."""
    bounds = [0, *sorted(offsets), len(body)]
    return [body[start:end] for start, end in itertools.pairwise(bounds)]


def _compact(payload: object) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def openai_stream(
    *deltas: str,
    usage: tuple[int, int] | None = None,
    start: bool = True,
    end: bool = True,
    model: str = "gpt-4o-mini-2024-07-18",
) -> bytes:
    """Chat Completions chunks as OpenAI writes them: a first chunk with the role and empty
    content, one per delta, one with finish_reason, then with stream_options.include_usage
    a chunk with empty choices and the usage (`"usage":null` on the others), and [DONE].
    start/end False leave out the opening or the closing chunks, to build a broken stream."""

    def chunk(delta: dict[str, object] | None, finish: str | None = None) -> bytes:
        payload: dict[str, object] = {
            "id": "chatcmpl-StubStream0001",
            "object": "chat.completion.chunk",
            "created": 1718000000,
            "model": model,
            "system_fingerprint": "fp_stub0001",
            "choices": []
            if delta is None
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if usage is not None:
            prompt, completion = usage
            counts = {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}  # fmt: skip
            payload["usage"] = counts if delta is None else None
        return f"data: {_compact(payload)}\n\n".encode()

    body = chunk({"role": "assistant", "content": "", "refusal": None}) if start else b""
    body += b"".join(chunk({"content": delta}) for delta in deltas)
    if end:
        body += chunk({}, "stop")
        body += chunk(None) if usage is not None else b""
        body += b"data: [DONE]\n\n"
    return body


def openai_stream_error(message: str, kind: str = "server_error", code: str | None = None) -> bytes:
    """An error OpenAI writes into a stream already answered 200."""
    error = {"message": message, "type": kind, "param": None, "code": code}
    return f"data: {_compact({'error': error})}\n\n".encode()


def _anthropic_event(name: str, payload: object) -> bytes:
    return f"event: {name}\ndata: {_compact(payload)}\n\n".encode()


def anthropic_stream(
    *deltas: str,
    input_tokens: int = 21,
    output_tokens: int | None = None,
    start: bool = True,
    end: bool = True,
) -> bytes:
    """The Messages API's events as Anthropic writes them: message_start (input tokens),
    content_block_start, a ping, a text_delta per delta, content_block_stop, message_delta
    (output tokens), message_stop."""
    body = b""
    if start:
        message: dict[str, object] = {
            "id": "msg_01StubStream",
            "type": "message",
            "role": "assistant",
            "model": "claude-3-5-haiku-20241022",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        }
        body += _anthropic_event("message_start", {"type": "message_start", "message": message})
        block = {"type": "text", "text": ""}
        body += _anthropic_event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        )
        body += _anthropic_event("ping", {"type": "ping"})
    for delta in deltas:
        text_delta = {"type": "text_delta", "text": delta}
        body += _anthropic_event(
            "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": text_delta}
        )
    if end:
        body += _anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0})
        counted = output_tokens if output_tokens is not None else len(deltas)
        body += _anthropic_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": counted},
            },
        )
        body += _anthropic_event("message_stop", {"type": "message_stop"})
    return body


def anthropic_stream_error(kind: str = "overloaded_error", message: str = "Overloaded") -> bytes:
    """The error event Anthropic writes into a stream already answered 200."""
    return _anthropic_event("error", {"type": "error", "error": {"type": kind, "message": message}})


def tgi_stream(
    *tokens: str,
    input_length: int | None = None,
    end: bool = True,
    first_index: int = 1,
) -> bytes:
    """TGI's `/generate_stream` events (no space after `data:`, as TGI writes them): one per
    token, then the end-of-sequence token (special) with the whole `generated_text` and
    `details`; `input_length` in details as the TGI versions that count the prompt send it."""
    body = b""
    index = first_index
    for text in tokens:
        token = {"id": 1000 + index, "text": text, "logprob": -0.25, "special": False}
        event = {"index": index, "token": token, "generated_text": None, "details": None}
        body += f"data:{_compact(event)}\n\n".encode()
        index += 1
    if end:
        details: dict[str, object] = {
            "finish_reason": "eos_token",
            "generated_tokens": len(tokens) + 1,
            "seed": None,
        }
        if input_length is not None:
            details["input_length"] = input_length
        token = {"id": 2, "text": "</s>", "logprob": -0.01, "special": True}
        event = {"index": index, "token": token, "generated_text": "".join(tokens).strip(),
                 "details": details}  # fmt: skip
        body += f"data:{_compact(event)}\n\n".encode()
    return body


def tgi_stream_error(message: str, error_type: str = "overloaded") -> bytes:
    """The error event TGI writes into a stream already answered 200."""
    return f"data:{_compact({'error': message, 'error_type': error_type})}\n\n".encode()


NOTHING_PLANNED = error_reply(500)


class ProviderStub:
    def __init__(self, default: Reply | Responder = NOTHING_PLANNED) -> None:
        self.default = default
        self.requests: list[RecordedRequest] = []
        self.abandoned: list[Abandoned] = []
        self._planned: deque[Reply | Responder] = deque()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._connections = 0
        self._open = 0
        self._replying = 0
        self.url = ""

    @property
    def planned(self) -> int:
        """Planned replies not yet asked for."""
        return len(self._planned)

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet closed by either side."""
        return self._open

    @property
    def replying(self) -> int:
        """Requests whose reply is not yet complete (in its delay, or its body being sent)."""
        return self._replying

    def plan(self, *replies: Reply | Responder) -> None:
        """Answer the next requests with these replies, in order, then with `default`."""
        self._planned.extend(replies)

    def reset(self) -> None:
        """Forget planned replies and recorded requests, for a stub shared by several tests."""
        self._planned.clear()
        self.requests.clear()
        self.abandoned.clear()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._connections += 1
        self._open += 1
        connection = self._connections
        try:
            while request := await _read_request(reader, connection):
                self.requests.append(request)
                reply = self._planned.popleft() if self._planned else self.default
                if not isinstance(reply, Reply):
                    reply = reply(request)
                self._replying += 1
                try:
                    if not await _send(reply, reader, writer):
                        break
                except _ClientLeft as left:
                    self.abandoned.append(
                        Abandoned(connection, request.received_at, time.monotonic(), left.phase)
                    )
                    break
                finally:
                    self._replying -= 1
                if request.headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up; that is its right
        except asyncio.CancelledError:
            pass  # stop(); ending normally keeps Python 3.11's stream callback from logging it
        finally:
            self._handlers.discard(task)
            self._open -= 1
            writer.close()


async def _read_request(reader: asyncio.StreamReader, connection: int) -> RecordedRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if error.partial:
            raise
        return None  # the client closed an idle keep-alive connection
    received_at = time.monotonic()
    request_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    method, path, _version = request_line.split(" ", 2)
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return RecordedRequest(method, path, headers, body, connection, received_at)


# How often a pausing stub looks whether its client has gone: the precision of closed_at.
_WATCH_INTERVAL = 0.02


def _client_gone(reader: asyncio.StreamReader) -> bool:
    """The client closed or reset its end. (A client that only half-closes after its request
    counts as gone too; HTTP clients do not do that.)"""
    return reader.at_eof() or reader.exception() is not None


async def _pause(reader: asyncio.StreamReader, seconds: float) -> None:
    """Sleep, watching the connection without reading from it: raise _ClientLeft as soon as
    the client has gone, not when the pause is over."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        if _client_gone(reader):
            raise _ClientLeft("before-headers")
        await asyncio.sleep(min(left, _WATCH_INTERVAL))


async def _send(reply: Reply, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Write `reply`; False when the connection cannot carry another exchange. Raises
    _ClientLeft when the client closes the connection before the reply is complete."""
    try:
        if reply.delay:
            await _pause(reader, reply.delay)
        if reply.kind == "no_headers":
            await reader.read()  # returns at EOF: when the client gives up
            raise _ClientLeft("before-headers")
        if _client_gone(reader):
            raise _ClientLeft("before-headers")
    except ConnectionError:
        raise _ClientLeft("before-headers") from None
    try:
        return await _write(reply, reader, writer)
    except ConnectionError:
        raise _ClientLeft("during-body") from None


async def _write(reply: Reply, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    headers = {name.lower(): value for name, value in reply.headers.items()}
    if reply.chunked:
        headers["transfer-encoding"] = "chunked"
    else:
        headers["content-length"] = str(len(reply.body))
    try:
        reason = HTTPStatus(reply.status).phrase
    except ValueError:
        reason = "Unknown"
    head = f"HTTP/1.1 {reply.status} {reason}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    writer.write(f"{head}\r\n".encode("latin-1"))
    body = reply.body
    if reply.kind == "cut_mid_body":
        writer.write(body[: len(body) // 2])
        await writer.drain()
        _reset(writer)
        return False
    if reply.kind == "stream":
        return await _write_stream(reply, reader, writer)
    if reply.kind == "trickle":
        pieces = [body[i : i + reply.chunk_size] for i in range(0, len(body), reply.chunk_size)]
    else:
        pieces = [body]
    for piece in pieces:
        if _client_gone(reader):
            raise _ClientLeft("during-body")
        if piece:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if reply.chunked else piece)
            await writer.drain()
        if reply.kind == "trickle":
            try:
                await _pause(reader, reply.chunk_interval)
            except _ClientLeft:
                raise _ClientLeft("during-body") from None
    if reply.chunked:
        writer.write(b"0\r\n\r\n")
    await writer.drain()
    return True


async def _write_stream(
    reply: Reply, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bool:
    for piece, pause in zip(reply.pieces, reply.pauses, strict=True):
        try:
            await _pause(reader, pause)
        except _ClientLeft:
            raise _ClientLeft("during-body") from None
        if _client_gone(reader):
            raise _ClientLeft("during-body")
        if piece:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if reply.chunked else piece)
            await writer.drain()
    if reply.ending == "reset":
        _reset(writer)
        return False
    if reply.ending == "stall":
        await reader.read()  # returns at EOF: when the client gives up
        raise _ClientLeft("during-body")
    if reply.chunked:
        writer.write(b"0\r\n\r\n")
    await writer.drain()
    return True


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # with linger 0: an RST, not an orderly FIN


@contextlib.contextmanager
def running_stub(default: Reply | Responder = NOTHING_PLANNED) -> Iterator[ProviderStub]:
    """A stub serving from its own thread and event loop, for a service run in a subprocess."""
    stub = ProviderStub(default)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="provider-stub", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(stub.start(), loop).result(timeout=10)
        yield stub
    finally:
        asyncio.run_coroutine_threadsafe(stub.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest_asyncio.fixture
async def provider_stub() -> AsyncIterator[ProviderStub]:
    stub = ProviderStub()
    await stub.start()
    try:
        yield stub
    finally:
        await stub.stop()


@pytest.fixture
def provider_stub_thread() -> Iterator[ProviderStub]:
    with running_stub() as stub:
        yield stub


@pytest_asyncio.fixture
async def provider_client() -> AsyncIterator[httpx.AsyncBaseTransport]:
    """The transport the service shares (httpx's API over aiohttp's pool; no proxies)."""
    transport = AiohttpTransport(max_connections=100)
    try:
        yield transport
    finally:
        await transport.aclose()


def openai_answering(text: str) -> Responder:
    """An OpenAI-compatible server that answers `text` whichever way it is asked: a whole
    completion, or (for `"stream": true`) a stream of its words."""
    whole = json_reply(openai_body(text))
    words = [word + " " for word in text.split(" ")]
    words[-1] = words[-1][:-1]
    stream = streamed([openai_stream(*words)])

    def respond(request: RecordedRequest) -> Reply:
        return stream if request.json.get("stream") else whole

    return respond


# --- a model with a context window -----------------------------------------------------------

WindowedProvider = Literal["openai", "anthropic", "huggingface"]

_STUB_TOKEN = re.compile(r"\w+|[^\w\s]")
STUB_MESSAGE_TOKENS = 4  # a chat message's role and delimiters, in stub_tokens


def stub_tokens(text: str) -> int:
    """The stand-ins' tokenizer: each word and each punctuation mark is a token. Not a fixed
    share of the characters, so an estimate calibrated from its counts has something to learn."""
    return len(_STUB_TOKEN.findall(text))


def _stub_pieces(text: str) -> list[str]:
    """`text` as stream deltas, one stub token each, with the whitespace before it."""
    return re.findall(r"\s*(?:\w+|[^\w\s])", text)


class WindowedModel:
    """A Responder: `provider`'s model with a window of `window` tokens. A request whose prompt
    tokens (stub_tokens; chat messages STUB_MESSAGE_TOKENS more each, the system prompt being
    one) plus its max tokens exceed the window gets the provider's refusal, in its status and
    words, with the real counts; with `in_band`, a streamed request gets it as the first event
    of a 200 stream instead. Any other request is answered `answer`, whole or streamed as it
    asks, with the counts as the provider reports usage (TGI: in a stream's last event only).
    `largest_prompt` is the most prompt tokens a request carried; `refused` counts refusals."""

    def __init__(
        self, provider: WindowedProvider, window: int, *, answer: str, in_band: bool
    ) -> None:
        if provider not in ("openai", "anthropic", "huggingface"):
            raise ValueError(f"no windowed stand-in for {provider!r}")
        self.provider = provider
        self.window = window
        self.answer = answer
        self.in_band = in_band
        self.largest_prompt = 0
        self.refused = 0

    def __call__(self, request: RecordedRequest) -> Reply:
        sent = request.json
        prompt = self._prompt_tokens(sent)
        self.largest_prompt = max(self.largest_prompt, prompt)
        reply_tokens = self._max_tokens(sent)
        streaming = self._streaming(request, sent)
        if prompt + reply_tokens <= self.window:
            return self._answer(request, prompt, streaming)
        self.refused += 1
        message = self._too_long(prompt, reply_tokens)
        if streaming and self.in_band:
            return streamed([self._error_event(message)])
        return self._error_status(message)

    def _prompt_tokens(self, sent: dict[str, Any]) -> int:
        if self.provider == "huggingface":
            return stub_tokens(sent["inputs"])
        texts = [_content_text(message["content"]) for message in sent["messages"]]
        if sent.get("system"):  # Anthropic's system prompt, a field of its own
            texts.append(_content_text(sent["system"]))
        return sum(STUB_MESSAGE_TOKENS + stub_tokens(text) for text in texts)

    def _max_tokens(self, sent: dict[str, Any]) -> int:
        if self.provider == "huggingface":
            return sent.get("parameters", {}).get("max_new_tokens") or 0
        return sent.get("max_completion_tokens", sent.get("max_tokens")) or 0

    def _streaming(self, request: RecordedRequest, sent: dict[str, Any]) -> bool:
        if self.provider == "huggingface" and urlsplit(request.path).path.endswith("_stream"):
            return True  # TGI's /generate_stream
        return sent.get("stream") is True

    def _too_long(self, prompt: int, reply_tokens: int) -> str:
        window = self.window
        if self.provider == "openai":
            if not reply_tokens:
                return (
                    f"This model's maximum context length is {window} tokens. However, your "
                    f"messages resulted in {prompt} tokens. Please reduce the length of the "
                    "messages."
                )
            return (
                f"This model's maximum context length is {window} tokens. However, you "
                f"requested {prompt + reply_tokens} tokens ({prompt} in the messages, "
                f"{reply_tokens} in the completion). Please reduce the length of the messages "
                "or completion."
            )
        if self.provider == "anthropic":
            if prompt > window:
                return f"prompt is too long: {prompt} tokens > {window} maximum"
            return (
                f"input length and `max_tokens` exceed context limit: {prompt} + {reply_tokens} "
                f"> {window}, decrease input length or `max_tokens` and try again"
            )
        return (
            f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= {window}. "
            f"Given: {prompt} `inputs` tokens and {reply_tokens} `max_new_tokens`"
        )

    def _error_status(self, message: str) -> Reply:
        if self.provider == "openai":
            return openai_error(400, message, param="messages", code="context_length_exceeded")
        if self.provider == "anthropic":
            return anthropic_error(400, "invalid_request_error", message)
        return huggingface_error(422, message, "validation")

    def _error_event(self, message: str) -> bytes:
        if self.provider == "openai":
            return openai_stream_error(
                message, kind="invalid_request_error", code="context_length_exceeded"
            )
        if self.provider == "anthropic":
            return anthropic_stream_error("invalid_request_error", message)
        return tgi_stream_error(message, "validation")

    def _answer(self, request: RecordedRequest, prompt: int, streaming: bool) -> Reply:
        pieces = _stub_pieces(self.answer)
        counts = (prompt, len(pieces))
        sent = request.json
        if self.provider == "openai":
            if not streaming:
                return json_reply(openai_body(self.answer, usage=counts))
            asks_usage = (sent.get("stream_options") or {}).get("include_usage") is True
            return streamed([openai_stream(*pieces, usage=counts if asks_usage else None)])
        if self.provider == "anthropic":
            if not streaming:
                return json_reply(anthropic_body(self.answer, usage=counts))
            return streamed(
                [anthropic_stream(*pieces, input_tokens=prompt, output_tokens=len(pieces))]
            )
        if not streaming:  # TGI counts nothing in a whole answer unless asked for details
            as_list = not urlsplit(request.path).path.endswith("/generate")
            return json_reply(huggingface_body(self.answer, as_list=as_list))
        return streamed([tgi_stream(*pieces, input_length=prompt)])


def windowed(
    provider: WindowedProvider,
    window: int,
    *,
    answer: str = "Two plus two is four.",
    in_band: bool = False,
) -> WindowedModel:
    """A stand-in for `provider`'s model with a context window of `window` tokens: see
    WindowedModel. Plan it, or make it the stub's default, like any Responder."""
    return WindowedModel(provider, window, answer=answer, in_band=in_band)


def _content_text(content: object) -> str:
    """A message's text: a string, or (OpenAI and Anthropic content parts) its text parts."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    return " ".join(part.get("text", "") for part in parts if isinstance(part, dict))
