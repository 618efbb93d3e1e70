"""A fast OpenAI-compatible provider stand-in for the benchmark, run as its own process.

A bare asyncio Protocol on uvloop with httptools parsing (no framework), so that it answers
far faster than the service it stands behind and never is what a run measures. Every POST
outside /__bench/ gets the same short Chat Completions answer, after `delay` seconds
(loop.call_later, no task per request). Keep-alive as the client asks; replies on one
connection leave in request order even if a client pipelines.

A request with `"stream": true` gets OpenAI's stream instead (chunked `text/event-stream`):
`tokens` chunks of one word each, the first `first` seconds after the request and each
next one `interval` later, then a usage chunk and `data: [DONE]` right after the last word.
The chunks are framed once; the first word has a timer of its own (its time is what S6's
time to first token measures) and the later ones share one 1 ms ticker (Pacer), so that
a stream costs a write per word and little else: one core feeds a thousand streams.

Control routes (not counted): GET /__bench/stats, POST /__bench/reset, GET /__bench/last (the
body of the last provider request, byte for byte), POST /__bench/delay/<milliseconds>,
POST /__bench/stream/<tokens>/<interval ms>/<first ms>.

    python -m tests.performance.provider_stub [--port 0] [--delay SECONDS]
        [--stream-tokens 64] [--stream-interval 0.015] [--stream-first SECONDS]

prints `PORT <n>` once listening; SIGTERM or SIGINT stops it.
"""

import argparse
import asyncio
import json
import math
import re
import signal
import socket
from collections import deque
from typing import cast

import httptools
import uvloop

ANSWER = "Noted. This is the benchmark stand-in's fixed reply."
MODEL = "bench-model"
_CONTROL = b"/__bench/"
_STREAMING = re.compile(rb'"stream"\s*:\s*true')
# The words a stream is made of, taken in turn: short, as a model's tokens are.
WORDS = ANSWER.split()
STREAM_TOKENS = 64
STREAM_INTERVAL = 0.015


def _response(body: bytes, *, status: bytes = b"200 OK", close: bool = False) -> bytes:
    head = (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
    )
    return head + (b"connection: close\r\n" if close else b"") + b"\r\n" + body


def completion_body(text: str = ANSWER) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 0,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        },
        separators=(",", ":"),
    ).encode()


def _sse_chunk(payload: bytes) -> bytes:
    """One `data:` event as one HTTP chunk."""
    event = b"data: " + payload + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


def _chunk_json(choices: list[object], usage: object = None) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": choices,
            "usage": usage,
        },
        separators=(",", ":"),
    ).encode()


class StreamShape:
    """What one stream sends, framed once: its head, one chunk per word, and its tail."""

    def __init__(self, tokens: int, interval: float, first: float) -> None:
        self.tokens, self.interval, self.first = tokens, interval, first
        self.head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
        )
        self.words = [
            _sse_chunk(
                _chunk_json(
                    [
                        {
                            "index": 0,
                            "delta": {"content": (" " if n else "") + WORDS[n % len(WORDS)]},
                            "finish_reason": None,
                        }
                    ]
                )
            )
            for n in range(tokens)
        ]
        usage = {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1}
        self.tail = (
            _sse_chunk(_chunk_json([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
            + _sse_chunk(_chunk_json([], usage))
            + _sse_chunk(b"[DONE]")
            + b"0\r\n\r\n"
        )

    def as_dict(self) -> dict[str, float]:
        return {"tokens": self.tokens, "interval": self.interval, "first": self.first}


_BAD_REQUEST = _response(b'{"error":"bad request"}', status=b"400 Bad Request", close=True)


class Pacer:
    """Calls each stream's next word in the millisecond it is due (or the first tick after):
    one timer for every stream, where a timer per word would cost more than the write."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._slots: dict[int, list[tuple[StubProtocol, _Pending]]] = {}
        self._done_upto = 0  # every slot up to this one has been called
        self._ticking = False

    def add(self, due: float, protocol: "StubProtocol", pending: "_Pending") -> None:
        slot = math.ceil(due * 1000)
        if not self._ticking:
            self._ticking = True
            self._done_upto = math.floor(self._loop.time() * 1000)
            self._loop.call_at((self._done_upto + 1) / 1000, self._tick)
        self._slots.setdefault(max(slot, self._done_upto + 1), []).append((protocol, pending))

    def _tick(self) -> None:
        now = math.floor(self._loop.time() * 1000)
        for slot in range(self._done_upto + 1, now + 1):
            self._done_upto = slot  # first: a word added meanwhile goes to a later slot
            for protocol, pending in self._slots.pop(slot, ()):
                protocol.word(pending)
        if self._slots:
            self._loop.call_at((now + 1) / 1000, self._tick)
        else:
            self._ticking = False


class StubState:
    """Counters shared by every connection: what scenario 4 reads as bytes per request."""

    def __init__(self, delay: float, shape: StreamShape) -> None:
        self.delay = delay
        self.shape = shape
        self.pacer = Pacer()
        self.reply = _response(completion_body())
        self.reply_close = _response(completion_body(), close=True)
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.body_bytes = 0
        self.wire_bytes = 0  # request line + headers + body, as received
        self.streams = 0  # requests answered with a stream
        self.tokens_sent = 0  # word chunks written, over all streams
        self.last_body = b""

    def stats(self) -> bytes:
        return json.dumps(
            {
                "requests": self.requests,
                "body_bytes": self.body_bytes,
                "wire_bytes": self.wire_bytes,
                "streams": self.streams,
                "tokens_sent": self.tokens_sent,
                "delay": self.delay,
                "stream": self.shape.as_dict(),
            }
        ).encode()


class _Pending:
    """A reply waiting its turn. A stream's data grows as its words come (ready once the
    last is in), and what is there leaves as soon as it is the connection's first."""

    __slots__ = ("close", "data", "ready", "sent", "shape", "started", "timer")

    def __init__(self, data: bytes, close: bool, ready: bool) -> None:
        self.data = data
        self.close = close
        self.ready = ready
        self.shape: StreamShape | None = None  # a stream's, fixed when it starts
        self.sent = 0  # a stream's words so far
        self.started = (
            0.0  # loop time of the request; word n is due at started + first + n * interval
        )
        self.timer: asyncio.TimerHandle | None = None


class StubProtocol(asyncio.Protocol):
    def __init__(self, state: StubState) -> None:
        self._state = state
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._url = b""
        self._body: list[bytes] = []
        self._body_size = 0
        self._wire = 0
        self._pending: deque[_Pending] = deque()

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        for pending in self._pending:
            if pending.timer is not None:
                pending.timer.cancel()
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        self._wire += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(_BAD_REQUEST)
                self._transport.close()

    # --- httptools callbacks ---

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._body_size += len(body)

    def on_message_complete(self) -> None:
        wire, self._wire = self._wire, 0
        close = not self._parser.should_keep_alive()
        if self._url.startswith(_CONTROL):
            self._queue(self._control(close), close, ready=True)
            return
        state = self._state
        state.requests += 1
        state.body_bytes += self._body_size
        state.wire_bytes += wire
        state.last_body = b"".join(self._body)
        if _STREAMING.search(state.last_body):
            self._stream(close)
            return
        reply = state.reply_close if close else state.reply
        if state.delay <= 0:
            self._queue(reply, close, ready=True)
            return
        pending = self._queue(b"", close, ready=False)
        pending.timer = self._loop.call_later(state.delay, self._release, pending, reply)

    # --- replies ---

    def _control(self, close: bool) -> bytes:
        state, url = self._state, self._url
        if url == b"/__bench/stats":
            return _response(state.stats(), close=close)
        if url == b"/__bench/reset":
            state.reset()
            return _response(b"{}", close=close)
        if url == b"/__bench/last":
            return _response(state.last_body, close=close)
        if url.startswith(b"/__bench/delay/"):
            state.delay = int(url.rsplit(b"/", 1)[1]) / 1000
            return _response(state.stats(), close=close)
        if url.startswith(b"/__bench/stream/"):
            tokens, interval, first = (int(part) for part in url.split(b"/")[3:6])
            state.shape = StreamShape(tokens, interval / 1000, first / 1000)
            return _response(state.stats(), close=close)
        return _response(b'{"error":"unknown control route"}', status=b"404 Not Found")

    def _stream(self, close: bool) -> None:
        shape = self._state.shape
        self._state.streams += 1
        head = shape.head + (b"connection: close\r\n" if close else b"") + b"\r\n"
        pending = self._queue(head, close, ready=False)
        pending.shape, pending.started = shape, self._loop.time()
        self._flush()  # the head at once, as OpenAI does
        if shape.tokens == 0 or shape.first <= 0:
            self.word(pending)
        else:
            pending.timer = self._loop.call_at(pending.started + shape.first, self.word, pending)

    def word(self, pending: _Pending) -> None:
        """The stream's next word (its tail after the last), then the one after is paced."""
        transport = self._transport
        if transport is None:
            return  # the connection is gone
        shape = pending.shape
        assert shape is not None
        pending.timer = None
        sent = pending.sent
        chunk = b""
        if sent < shape.tokens:
            chunk = shape.words[sent]
            pending.sent = sent = sent + 1
            self._state.tokens_sent += 1
        if sent == shape.tokens:
            chunk += shape.tail
            pending.ready = True
        else:
            due = pending.started + shape.first + sent * shape.interval
            self._state.pacer.add(due, self, pending)
        if self._pending[0] is not pending:
            pending.data += chunk  # behind a pipelined reply: it leaves after that one
        elif pending.ready:
            pending.data += chunk
            self._flush()
        else:
            transport.write(chunk)

    def _queue(self, data: bytes, close: bool, *, ready: bool) -> _Pending:
        pending = _Pending(data, close, ready)
        self._pending.append(pending)
        if ready:
            self._flush()
        return pending

    def _release(self, pending: _Pending, reply: bytes) -> None:
        pending.data, pending.ready, pending.timer = reply, True, None
        self._flush()

    def _flush(self) -> None:
        transport = self._transport
        while self._pending:
            pending = self._pending[0]
            if transport is None or transport.is_closing():
                self._pending.clear()
                return
            if pending.data:
                transport.write(pending.data)
                pending.data = b""
            if not pending.ready:
                return
            self._pending.popleft()
            if pending.close:
                transport.close()
                self._pending.clear()
                return


async def serve(port: int, delay: float, shape: StreamShape) -> None:
    loop = asyncio.get_running_loop()
    state = StubState(delay, shape)
    server = await loop.create_server(
        lambda: StubProtocol(state), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"PORT {bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--stream-tokens", type=int, default=STREAM_TOKENS, help="words a stream")
    parser.add_argument(
        "--stream-interval", type=float, default=STREAM_INTERVAL, help="seconds between words"
    )
    parser.add_argument(
        "--stream-first", type=float, help="seconds before the first word (default: interval)"
    )
    args = parser.parse_args()
    first = args.stream_interval if args.stream_first is None else args.stream_first
    shape = StreamShape(args.stream_tokens, args.stream_interval, first)
    uvloop.run(serve(args.port, args.delay, shape))


if __name__ == "__main__":
    main()
