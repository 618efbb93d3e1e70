"""A fast OpenAI-compatible provider stand-in for the benchmark, run as its own process.

A bare asyncio Protocol on uvloop with httptools parsing (no framework), so that it answers
far faster than the service it stands behind and never is what a run measures. Every POST
outside /__bench/ gets the same short Chat Completions answer, after `delay` seconds
(loop.call_later, no task per request). Keep-alive as the client asks; replies on one
connection leave in request order even if a client pipelines.

Control routes (not counted): GET /__bench/stats, POST /__bench/reset, GET /__bench/last (the
body of the last provider request, byte for byte), POST /__bench/delay/<milliseconds>.

    python -m tests.performance.provider_stub [--port 0] [--delay SECONDS]

prints `PORT <n>` once listening; SIGTERM or SIGINT stops it.
"""

import argparse
import asyncio
import json
import signal
import socket
from collections import deque
from typing import cast

import httptools
import uvloop

ANSWER = "Noted. This is the benchmark stand-in's fixed reply."
MODEL = "bench-model"
_CONTROL = b"/__bench/"


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


_BAD_REQUEST = _response(b'{"error":"bad request"}', status=b"400 Bad Request", close=True)


class StubState:
    """Counters shared by every connection: what scenario 4 reads as bytes per request."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.reply = _response(completion_body())
        self.reply_close = _response(completion_body(), close=True)
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.body_bytes = 0
        self.wire_bytes = 0  # request line + headers + body, as received
        self.last_body = b""

    def stats(self) -> bytes:
        return json.dumps(
            {
                "requests": self.requests,
                "body_bytes": self.body_bytes,
                "wire_bytes": self.wire_bytes,
                "delay": self.delay,
            }
        ).encode()


class _Pending:
    __slots__ = ("close", "data", "ready")

    def __init__(self, data: bytes, close: bool, ready: bool) -> None:
        self.data = data
        self.close = close
        self.ready = ready


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
        reply = state.reply_close if close else state.reply
        if state.delay <= 0:
            self._queue(reply, close, ready=True)
            return
        pending = self._queue(reply, close, ready=False)
        self._loop.call_later(state.delay, self._release, pending)

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
        return _response(b'{"error":"unknown control route"}', status=b"404 Not Found")

    def _queue(self, data: bytes, close: bool, *, ready: bool) -> _Pending:
        pending = _Pending(data, close, ready)
        self._pending.append(pending)
        if ready:
            self._flush()
        return pending

    def _release(self, pending: _Pending) -> None:
        pending.ready = True
        self._flush()

    def _flush(self) -> None:
        transport = self._transport
        while self._pending and self._pending[0].ready:
            pending = self._pending.popleft()
            if transport is None or transport.is_closing():
                self._pending.clear()
                return
            transport.write(pending.data)
            if pending.close:
                transport.close()
                self._pending.clear()
                return


async def serve(port: int, delay: float) -> None:
    loop = asyncio.get_running_loop()
    state = StubState(delay)
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
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.delay))


if __name__ == "__main__":
    main()
