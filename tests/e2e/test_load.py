"""Two workers on one Redis under load, and what they share: the history and the rate limit.

The service runs as `chat-service serve --workers 2` on a redis-server of the test's own, so
the test counts straight from Redis besides reading over HTTP. Which worker served what is
read from /proc: the server end of a TCP connection belongs to the one worker that accepted
it, and that worker serves every request sent on the connection.
"""

import asyncio
import contextlib
import json
import random
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
import redis

from tests.e2e.conftest import (
    Service,
    ServiceLauncher,
    assert_paired,
    tcp_connections,
    wait_until,
    worker_pids,
)
from tests.support.redis_server import RedisServer

PUBLIC = "public"  # the namespace of every session when auth is off

# --- helpers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class RawConnection:
    """One keep-alive HTTP/1.1 connection written by hand.

    httpx costs 4-10 ms of client CPU per request here (its pool grows slower with every
    concurrent request), so on a shared 2-core machine it would measure the client rather
    than the service; this costs ~0.2 ms. It reads what this service sends: answers with a
    Content-Length.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.port: int = writer.get_extra_info("sockname")[1]  # the client end's port

    @classmethod
    async def open(cls, port: int) -> "RawConnection":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(
        self,
        method: str,
        path: str,
        payload: object = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        body = b"" if payload is None else json.dumps(payload).encode()
        head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(body)}\r\n"
        if payload is not None:
            head += "content-type: application/json\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self._writer.write(f"{head}\r\n".encode("latin-1") + body)

    async def answer(self) -> Answer:
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self._reader.readexactly(int(headers.get("content-length", "0")))
        return Answer(int(status_line.split()[1]), headers, body)

    async def request(
        self,
        method: str,
        path: str,
        payload: object = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        self.send(method, path, payload, headers)
        return await self.answer()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


def accepting_workers(service: Service, client_ports: set[int]) -> dict[int, int]:
    """client port -> pid of the worker that accepted that connection, once all are accepted."""
    assert service.process is not None
    main_pid = service.process.pid
    owners: dict[int, int] = {}

    def all_accepted() -> bool:
        owners.clear()
        for pid in worker_pids(main_pid):
            for local, remote in tcp_connections(pid):
                if local == service.port and remote in client_ports:
                    owners[remote] = pid
        return len(owners) == len(client_ports)

    wait_until(all_accepted, 15, f"{len(client_ports)} connections accepted by the workers")
    return dict(owners)


def start_two_workers(launch: ServiceLauncher, config: dict[str, dict[str, str]]) -> Service:
    service = launch(config, workers=2)
    # /health answers as soon as one worker does; the other may still be starting.
    wait_until(lambda: service.stderr().count(" ready: ") == 2, 20, "both workers ready")
    assert service.process is not None
    assert len(worker_pids(service.process.pid)) == 2
    return service


def log_problems(service: Service) -> list[tuple[str, int]]:
    """The service's warnings and errors, most frequent first, without their timestamps."""
    lines = [
        re.sub(r"\d{4}-\d\d-\d\d[ T][\d:.,]+", "", line)
        for line in service.stderr().splitlines()
        if "WARNING" in line or "ERROR" in line
    ]
    return Counter(line for line in lines if "AUTH IS OFF" not in line).most_common(5)


def stored(store: redis.Redis, pattern: str) -> dict[str, list[tuple[str, str]]]:
    """Straight from Redis: each history key matching pattern -> its (role, content) entries."""
    histories = {}
    for key in store.scan_iter(match=pattern, count=1000):
        entries = store.lrange(key, 0, -1)
        histories[key.decode()] = [tuple(msgspec.msgpack.decode(e))[:2] for e in entries]
    return histories


# --- 10,000 requests from 200 clients over 1,000 sessions -----------------------------------

CLIENTS = 200
SESSIONS = 1000
TURNS = 10  # requests per session
MAX_MESSAGES = 100  # far above 2 * TURNS: no trimming can hide a lost exchange


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_two_workers_under_load_answer_every_request_and_store_every_exchange(
    launch: ServiceLauncher, redis_server: RedisServer
) -> None:
    service = start_two_workers(
        launch,
        {"redis": {"url": redis_server.url}, "history": {"max_messages": str(MAX_MESSAGES)}},
    )
    clients = await asyncio.gather(*(RawConnection.open(service.port) for _ in range(CLIENTS)))
    worker_of = accepting_workers(service, {c.port for c in clients})

    # Turn t of every session goes out before turn t+1 of any, sessions shuffled: the 200
    # clients keep ~200 sessions busy at once, and some sessions get concurrent turns.
    order = random.Random(3).sample(range(SESSIONS), SESSIONS)
    work = iter([(f"load-{s}", f"session {s} turn {t}") for t in range(TURNS) for s in order])
    acked: dict[str, list[str]] = {}
    failures: list[str] = []
    served: Counter[int] = Counter()  # requests answered, by worker pid

    async def client(connection: RawConnection) -> None:
        for session_id, question in work:
            try:
                async with asyncio.timeout(60):
                    answer = await connection.request(
                        "POST", "/chat/", {"session_id": session_id, "message": question}
                    )
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
                failures.append(f"{question}: {error!r}")
                return  # this connection is unusable; the others carry on
            served[worker_of[connection.port]] += 1
            if answer.status != 200:
                failures.append(f"{question}: {answer.status} {answer.body[:200]!r}")
                continue
            reply = answer.json()
            if reply["session_id"] != session_id or f"You said: {question} (" not in reply.get(
                "response", ""
            ):
                failures.append(f"{question}: answered {reply}")
                continue
            acked.setdefault(session_id, []).append(question)

    started = time.monotonic()
    await asyncio.gather(*(client(c) for c in clients))
    wall = time.monotonic() - started
    await asyncio.gather(*(c.close() for c in clients))

    requests = SESSIONS * TURNS
    figures = (
        f"{requests} requests, {CLIENTS} clients, {SESSIONS} sessions, 2 workers: "
        f"{wall:.1f} s, {requests / wall:.0f} requests/s, {len(failures)} errors; "
        f"requests per worker {sorted(served.values())}"
    )
    print(f"\nload: {figures}")

    # Straight from Redis: one list per session, two entries per acknowledged request (and
    # none for a failed one).
    with redis.Redis.from_url(redis_server.url) as store:
        keys = [key.decode() for key in store.scan_iter(match="chat:history:*", count=1000)]
        pipe = store.pipeline(transaction=False)
        for key in keys:
            pipe.llen(key)
        lengths = dict(zip(keys, pipe.execute(), strict=True))
    expected = {f"chat:history:{PUBLIC}:{s}": 2 * len(q) for s, q in acked.items()}
    assert lengths == expected, (figures, set(lengths.items()) ^ set(expected.items()))

    # Over HTTP: every session holds its acknowledged exchanges, each reply after its question.
    readers = await asyncio.gather(*(RawConnection.open(service.port) for _ in range(20)))
    session_ids = iter(sorted(acked))
    histories: dict[str, list[dict[str, str]]] = {}

    async def read_back(connection: RawConnection) -> None:
        for session_id in session_ids:
            answer = await connection.request("GET", f"/chat/{session_id}")
            assert answer.status == 200, (session_id, answer)
            histories[session_id] = answer.json()["messages"]

    async with asyncio.timeout(60):
        await asyncio.gather(*(read_back(c) for c in readers))
    await asyncio.gather(*(c.close() for c in readers))
    assert histories.keys() == acked.keys()
    for session_id, questions in acked.items():
        assert_paired(histories[session_id], questions)

    # And nothing failed: every request answered, by both workers.
    problems = Counter(failure.split(": ", 1)[1][:120] for failure in failures)
    assert not failures, f"{figures}\n{problems.most_common(5)}\n{log_problems(service)}"
    assert sum(len(questions) for questions in acked.values()) == requests, figures
    assert len(served) == 2, f"one worker served everything: {figures}"


# --- the rate limit, counted once for all workers --------------------------------------------

TOKEN = "tok-rate-limit-e2e"
LIMIT = 10  # requests per token per hour
PER_WORKER = 2 * LIMIT  # each worker alone gets more requests than the limit
HOUR = 3600


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_the_rate_limit_admits_exactly_the_limit_across_two_workers(
    launch: ServiceLauncher, redis_server: RedisServer
) -> None:
    service = start_two_workers(
        launch,
        {
            "auth": {"tokens": TOKEN, "rate_limit": f"{LIMIT}/hour"},
            "redis": {"url": redis_server.url},
        },
    )
    # Idle connections first, until each worker has accepted PER_WORKER of them; then one
    # request on each, all at once. A limit counted per worker would admit 2 * LIMIT.
    connections: list[RawConnection] = []
    worker_of: dict[int, int] = {}
    for _ in range(40):  # at most 400 connections
        connections += await asyncio.gather(*(RawConnection.open(service.port) for _ in range(10)))
        worker_of = accepting_workers(service, {c.port for c in connections})
        held = Counter(worker_of.values())
        if len(held) == 2 and min(held.values()) >= PER_WORKER:
            break
    held = Counter(worker_of.values())
    assert len(held) == 2, f"connections by worker: {held}"
    assert min(held.values()) >= PER_WORKER, f"connections by worker: {held}"

    # The count restarts at each hour of the epoch: keep the burst inside one window.
    if (left := HOUR - time.time() % HOUR) < 60:
        await asyncio.sleep(left + 1)
    window = int(time.time() // HOUR)
    left_before = (window + 1) * HOUR - time.time()
    auth = {"authorization": f"Bearer {TOKEN}"}
    questions = {c.port: f"limited question from port {c.port}" for c in connections}
    for connection in connections:
        body = {"session_id": "limited", "message": questions[connection.port]}
        connection.send("POST", "/chat/", body, auth)
    async with asyncio.timeout(60):
        answers = await asyncio.gather(*(c.answer() for c in connections))
    left_after = (window + 1) * HOUR - time.time()
    assert int(time.time() // HOUR) == window

    by_worker: dict[int, Counter[int]] = {pid: Counter() for pid in held}
    for connection, answer in zip(connections, answers, strict=True):
        by_worker[worker_of[connection.port]][answer.status] += 1
    figures = (
        f"limit {LIMIT}/hour, {len(connections)} concurrent requests; by worker: "
        + "; ".join(f"{pid}: {c[200]} admitted, {c[429]} refused" for pid, c in by_worker.items())
    )
    print(f"\nrate limit: {figures}")
    statuses = Counter(answer.status for answer in answers)
    assert statuses == {200: LIMIT, 429: len(connections) - LIMIT}, (figures, statuses)
    for answer in answers:
        if answer.status == 429:
            retry_after = int(answer.headers["retry-after"])  # seconds to the next window
            assert left_after - 1 <= retry_after <= left_before + 1, (answer, left_after)
            assert "rate limit" in answer.json()["detail"]

    # Either worker now refuses this token, however the connection lands.
    for connection in connections[:4]:
        answer = await connection.request("GET", "/chat/limited", headers=auth)
        assert answer.status == 429, answer
    await asyncio.gather(*(c.close() for c in connections))

    # Redis holds one count for the token, every request in it; the admitted exchanges, and
    # nothing of the refused ones, are stored.
    with redis.Redis.from_url(redis_server.url) as store:
        counts = {key: int(store.get(key)) for key in store.scan_iter(match="chat:ratelimit:*")}
        [history] = stored(store, "chat:history:*:limited").values()
    assert list(counts.values()) == [len(connections) + 4], counts
    assert all(key.decode().endswith(f":{window}") for key in counts), counts
    admitted = {
        questions[c.port] for c, a in zip(connections, answers, strict=True) if a.status == 200
    }
    assert [role for role, _ in history] == ["user", "assistant"] * LIMIT
    assert {content for role, content in history if role == "user"} == admitted
