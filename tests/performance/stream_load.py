"""The streaming load generator (S6): concurrent SSE streams, their tokens and first tokens.

wrk cannot tell when a stream's first token arrives, so S6 has a generator of its own, in a
process of its own (run_streams() starts it; it can be pinned apart from the harness):
`streams` keep-alive connections, each sending its next request as soon as the previous
stream has ended. It reads each response with httptools (chunked framing included) and
counts tokens by a marker in the body, without parsing the events: `event: delta` in the
service's stream, `"content":` in the provider stand-in's. Per stream it notes the time from
writing the request to the first token (TTFT) and to the end of the response.

Two ways to run:
- a window: streams start over the first `stagger` seconds; tokens received between
  `settle` and `settle + duration` are the throughput, and the streams sent in that window
  give the TTFT percentiles. No stream starts after the window; those running end.
- `max_streams`: that many streams in all, then stop; the whole run is the window.

CPU seconds of the processes in `cpu_pids` (and the generator's own) are read from /proc at
the window's edges, so a run also says what each side spent on the tokens it counts.

    python -m tests.performance.stream_load '<StreamLoad as JSON>'

prints one line, `STREAM_RESULT {json}`. It imports nothing of the service's, to start fast.
"""

import asyncio
import contextlib
import itertools
import json
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import uvloop

SERVICE_TOKEN = b"event: delta"
SERVICE_END = b"event: done"
PROVIDER_TOKEN = b'"content":'
PROVIDER_END = b"data: [DONE]"
_RESULT = "STREAM_RESULT "
_ERRORS = ("connect", "read", "status", "timeout", "incomplete")


@dataclass(frozen=True)
class StreamLoad:
    url: str  # http://127.0.0.1:port/path, answered with a chunked event stream
    streams: int  # connections, each one stream at a time
    duration: float = 0.0  # the measured window, seconds (unused with max_streams)
    settle: float = 0.0  # seconds before the window
    stagger: float = 0.0  # each connection's first request waits up to this long
    max_streams: int = 0  # > 0: this many streams in all, then stop
    body: str | None = None  # a fixed body (provider requests); None: chat bodies
    prefix: str = "s6-"  # chat bodies: a new session, prefix + n, for every stream
    message: str = "Tell me a story."  # chat bodies' message
    token: str = SERVICE_TOKEN.decode()
    end: str = SERVICE_END.decode()
    bearer: str = ""  # sent as `Authorization: Bearer <bearer>` when set
    timeout: float = 60.0  # per stream
    cpus: tuple[int, ...] = ()  # pin the generator to these CPUs
    cpu_pids: dict[str, int] = field(default_factory=dict)


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0, "max": 0.0}

    def at(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    return {
        "count": len(ordered),
        "p50": at(50),
        "p90": at(90),
        "p99": at(99),
        "mean": sum(ordered) / len(ordered),
        "max": ordered[-1],
    }


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, from /proc/<pid>/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Totals:
    """What every connection adds to: tokens received so far."""

    def __init__(self) -> None:
        self.tokens = 0


class _Stream:
    """One response as it arrives."""

    __slots__ = ("ended", "first", "status", "tokens")

    def __init__(self) -> None:
        self.status = 0
        self.tokens = 0
        self.first = 0.0  # perf_counter() at the first token; 0: none yet
        self.ended = False  # the end marker was seen


class _Connection(asyncio.Protocol):
    """One keep-alive connection; request() resolves when its response has been read."""

    def __init__(self, totals: _Totals, token: bytes, end: bytes) -> None:
        self._totals = totals
        self._token = token
        self._end = end
        self._keep = max(len(token), len(end)) - 1  # a marker may straddle two reads
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._carry = b""
        self._stream = _Stream()
        self._done: asyncio.Future[_Stream] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._done is not None and not self._done.done():
            self._done.set_exception(ConnectionResetError("connection closed mid-response"))

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            if self._done is not None and not self._done.done():
                self._done.set_exception(ValueError(f"bad response: {error}"))
            self.close()

    def request(self, data: bytes) -> "asyncio.Future[_Stream]":
        assert self._transport is not None
        self._stream, self._carry = _Stream(), b""
        self._done = self._loop.create_future()
        self._transport.write(data)
        return self._done

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # --- httptools callbacks ---

    def on_headers_complete(self) -> None:
        self._stream.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        text = self._carry + body
        found = text.count(self._token)
        if found:
            stream = self._stream
            if not stream.tokens:
                stream.first = time.perf_counter()
            stream.tokens += found
            self._totals.tokens += found
        if self._end in text:
            self._stream.ended = True
        self._carry = text[-self._keep :] if self._keep else b""

    def on_message_complete(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(self._stream)
        if not self._parser.should_keep_alive():
            self.close()


def _request(host: str, path: str, body: bytes, bearer: str) -> bytes:
    auth = b"authorization: Bearer %s\r\n" % bearer.encode() if bearer else b""
    return (
        b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
        b"accept: text/event-stream\r\n%scontent-length: %d\r\n\r\n%s"
        % (path.encode(), host.encode(), auth, len(body), body)
    )


async def generate(load: StreamLoad) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    parts = urlsplit(load.url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    token, end = load.token.encode(), load.end.encode()
    fixed = None if load.body is None else _request(host, path, load.body.encode(), load.bearer)
    question = json.dumps(load.message).encode()
    numbers = itertools.count()
    totals = _Totals()
    errors = dict.fromkeys(_ERRORS, 0)
    first_ms: list[float] = []
    stream_ms: list[float] = []
    per_stream: list[int] = []
    started = time.perf_counter()
    bounded = load.max_streams > 0
    window_start = started + (0.0 if bounded else load.settle)
    window_end = float("inf") if bounded else window_start + load.duration
    edges: dict[str, dict[str, Any]] = {}

    def snapshot(name: str) -> None:
        edges[name] = {
            "at": time.perf_counter(),
            "tokens": totals.tokens,
            "cpu": {n: cpu_seconds(pid) for n, pid in load.cpu_pids.items()}
            | {"generator": _own_cpu_seconds()},
        }

    def request_bytes() -> tuple[bytes, bool]:
        n = next(numbers)
        if bounded and n >= load.max_streams:
            return b"", False
        if fixed is not None:
            return fixed, True
        body = b'{"session_id":"%s%d","message":%s}' % (load.prefix.encode(), n, question)
        return _request(host, path, body, load.bearer), True

    async def client(rng: random.Random) -> None:
        if load.stagger:
            await asyncio.sleep(rng.uniform(0, load.stagger))
        connection: _Connection | None = None
        while time.perf_counter() < window_end:
            if connection is None or connection.closed:
                try:
                    _, connection = await loop.create_connection(
                        lambda: _Connection(totals, token, end), host, port
                    )
                except OSError:
                    errors["connect"] += 1
                    await asyncio.sleep(0.01)
                    continue
            data, more = request_bytes()
            if not more:
                break
            sent = time.perf_counter()
            try:
                async with asyncio.timeout(load.timeout):
                    stream = await connection.request(data)
            except TimeoutError:
                errors["timeout"] += 1
                connection.close()
                connection = None
                continue
            except (OSError, ValueError):
                errors["read"] += 1
                connection.close()
                connection = None
                continue
            if stream.status >= 400:
                errors["status"] += 1
                continue
            if not (stream.ended and stream.tokens):
                errors["incomplete"] += 1
            per_stream.append(stream.tokens)
            if window_start <= sent < window_end:
                if stream.tokens:
                    first_ms.append((stream.first - sent) * 1000)
                stream_ms.append((time.perf_counter() - sent) * 1000)
        if connection is not None:
            connection.close()

    if not bounded:
        loop.call_at(loop.time() + load.settle, snapshot, "start")
        loop.call_at(loop.time() + load.settle + load.duration, snapshot, "end")
    else:
        snapshot("start")
    await asyncio.gather(*(client(random.Random(i)) for i in range(load.streams)))
    if bounded:
        snapshot("end")
    start, stop = edges["start"], edges["end"]
    seconds = stop["at"] - start["at"]
    tokens = stop["tokens"] - start["tokens"]
    cpu = {
        name: None if value is None or stop["cpu"][name] is None else stop["cpu"][name] - value
        for name, value in start["cpu"].items()
    }
    return {
        "url": load.url,
        "streams": load.streams,
        "window_seconds": seconds,
        "window_tokens": tokens,
        "tokens_per_second": tokens / seconds if seconds > 0 else 0.0,
        "streams_completed": len(per_stream),
        "tokens_per_stream": {
            "min": min(per_stream, default=0),
            "max": max(per_stream, default=0),
            "mean": sum(per_stream) / len(per_stream) if per_stream else 0.0,
        },
        "ttft_ms": _percentiles(first_ms),
        "stream_ms": _percentiles(stream_ms),
        "errors": errors,
        "error_count": sum(errors.values()),
        "cpu_seconds": cpu,
        "total_seconds": time.perf_counter() - started,
    }


async def run_streams(load: StreamLoad) -> dict[str, Any]:
    """The generator in a process of its own; its result."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.performance.stream_load",
        json.dumps(asdict(load)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    budget = load.settle + load.duration + 2 * load.timeout + 30
    try:
        out, err = await asyncio.wait_for(process.communicate(), budget)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    for line in out.decode(errors="replace").splitlines():
        if line.startswith(_RESULT):
            result: dict[str, Any] = json.loads(line.removeprefix(_RESULT))
            return result
    raise RuntimeError(
        f"the stream generator failed (exit {process.returncode}):\n"
        f"{out.decode(errors='replace')}\n{err.decode(errors='replace')[-3000:]}"
    )


def main() -> None:
    raw = json.loads(sys.argv[1])
    load = StreamLoad(**raw | {"cpus": tuple(raw.get("cpus", ()))})
    if load.cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, set(load.cpus))
    result = uvloop.run(generate(load))
    print(_RESULT + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
