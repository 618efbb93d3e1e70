"""Load generators: wrk (the real one) and a small asyncio stand-in for smoke runs without it.

Both are closed loops: `connections` keep-alive connections, each sending its next request
as soon as the previous answer arrived, for `duration` seconds. Both report requests/s,
latency percentiles and errors the way wrk counts them: connect, read, write and timeout
errors, and `status` = answers with an HTTP status of 400 or more.
"""

import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tests.performance.workload import BENCH_TOKEN, USER_TEXT

WRK_SCRIPT = Path(__file__).with_name("wrk_post.lua")
WRK = "wrk"
BUILTIN = "builtin (asyncio, NOT wrk: smoke numbers only)"


@dataclass(frozen=True)
class Load:
    url: str  # http://127.0.0.1:port/path
    connections: int
    duration: float
    sessions: int = 0  # chat bodies spread over this many session ids; 0: a new one each time
    prefix: str = "s"
    body: bytes | None = None  # a fixed body instead of chat bodies (requests to the stub)
    stagger: float = 0.0  # the first request of each connection waits up to this long
    timeout: float = 10.0


@dataclass
class LoadResult:
    generator: str
    url: str
    connections: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: dict[str, int] = field(default_factory=dict)
    service_cpu_ms_per_request: float | None = None  # set by the harness, not the generator

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"error_count": self.error_count}


def chat_body(prefix: str, sessions: int, n: int) -> bytes:
    session = f"{prefix}{n % sessions if sessions else n}"
    return b'{"session_id":"%s","message":%s}' % (session.encode(), json.dumps(USER_TEXT).encode())


def wrk_path() -> str | None:
    return shutil.which(WRK)


def wrk_version() -> str:
    found = wrk_path()
    if found is None:
        return "not installed"
    done = subprocess.run([found, "-v"], capture_output=True, text=True, check=False, timeout=10)
    return (done.stdout or done.stderr).splitlines()[0].strip()


async def run_wrk(load: Load, threads: int = 1) -> LoadResult:
    threads = max(1, min(threads, load.connections))
    env = dict(os.environ)
    env.update(
        BENCH_MODE="fixed" if load.body is not None else "chat",
        BENCH_THREADS=str(threads),
        BENCH_SESSIONS=str(load.sessions),
        BENCH_PREFIX=load.prefix,
        BENCH_MESSAGE_JSON=json.dumps(USER_TEXT),
        BENCH_STAGGER_MS=str(round(load.stagger * 1000)),
        BENCH_CONNECTIONS=str(load.connections),
        BENCH_TOKEN=BENCH_TOKEN,
    )
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as scratch:
        if load.body is not None:
            body_file = Path(scratch) / "body"
            body_file.write_bytes(load.body)
            env["BENCH_BODY_FILE"] = str(body_file)
        command = [
            wrk_path() or WRK,
            f"-t{threads}",
            f"-c{load.connections}",
            f"-d{math.ceil(load.duration)}s",  # wrk takes whole seconds
            f"--timeout={load.timeout:g}s",
            "--latency",
            "-s", str(WRK_SCRIPT),
            load.url,
        ]  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            *command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), load.duration + 60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    text = out.decode(errors="replace")
    match = re.search(r"^BENCH_RESULT (\{.*\})$", text, re.MULTILINE)
    if process.returncode != 0 or match is None:
        raise RuntimeError(
            f"wrk failed (exit {process.returncode}): {' '.join(command)}\n{text}\n"
            f"{err.decode(errors='replace')}"
        )
    raw = json.loads(match[1])
    seconds = raw["duration_us"] / 1e6
    return LoadResult(
        generator=WRK,
        url=load.url,
        connections=load.connections,
        requests=raw["requests"],
        seconds=seconds,
        rps=raw["requests"] / seconds if seconds else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        mean_ms=raw["mean_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        errors={k: raw[k] for k in ("connect", "read", "write", "status", "timeout")},
    )


class RawConnection:
    """One keep-alive HTTP/1.1 connection written by hand: a fraction of httpx's client CPU.
    It reads what the service and the stub send: answers with a Content-Length. It sends the
    bench's bearer token (the service's auth is on; the stub ignores it)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> "RawConnection":
        return cls(*await asyncio.open_connection(host, port))

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self._writer.write(
            b"POST %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer %s\r\ncontent-length: %d\r\n\r\n%s"
            % (path.encode(), BENCH_TOKEN.encode(), len(body), body)
        )
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        length = 0
        for line in lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        payload = await self._reader.readexactly(length)
        return int(status_line.split()[1]), payload

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


def _percentile(ordered: list[float], p: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run_builtin(load: Load) -> LoadResult:
    parts = urlsplit(load.url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    numbers = itertools.count()
    latencies: list[float] = []
    errors = dict.fromkeys(("connect", "read", "write", "status", "timeout"), 0)
    start = time.monotonic()
    deadline = start + load.duration

    async def client(rng: random.Random) -> None:
        if load.stagger:
            await asyncio.sleep(rng.uniform(0, load.stagger))
        connection: RawConnection | None = None
        while time.monotonic() < deadline:
            if connection is None:
                try:
                    connection = await RawConnection.open(host, port)
                except OSError:
                    errors["connect"] += 1
                    await asyncio.sleep(0.01)
                    continue
            n = next(numbers)
            body = load.body if load.body is not None else chat_body(load.prefix, load.sessions, n)
            sent = time.perf_counter()
            try:
                status, _ = await asyncio.wait_for(connection.post(path, body), load.timeout)
            except TimeoutError:
                errors["timeout"] += 1
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                errors["read"] += 1
            else:
                latencies.append(time.perf_counter() - sent)
                errors["status"] += status >= 400
                continue
            await connection.close()
            connection = None
        if connection is not None:
            await connection.close()

    await asyncio.gather(*(client(random.Random(i)) for i in range(load.connections)))
    seconds = time.monotonic() - start
    ordered = sorted(latencies)
    return LoadResult(
        generator=BUILTIN,
        url=load.url,
        connections=load.connections,
        requests=len(ordered),
        seconds=seconds,
        rps=len(ordered) / seconds,
        p50_ms=_percentile(ordered, 50) * 1000,
        p90_ms=_percentile(ordered, 90) * 1000,
        p99_ms=_percentile(ordered, 99) * 1000,
        mean_ms=(sum(ordered) / len(ordered) * 1000) if ordered else 0.0,
        max_ms=(ordered[-1] * 1000) if ordered else 0.0,
        errors=errors,
    )


async def send_exact(url: str, bodies: list[bytes]) -> list[int]:
    """Send these requests one after another on one connection; their statuses. For counts
    that must be exact (bytes and Redis commands per request), not for timing."""
    parts = urlsplit(url)
    connection = await RawConnection.open(parts.hostname or "127.0.0.1", parts.port or 80)
    try:
        return [(await connection.post(parts.path, body))[0] for body in bodies]
    finally:
        await connection.close()
