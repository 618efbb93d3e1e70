"""The Redis history under network faults, through a TCP proxy to a real redis-server.

The client is the service's own (adapters.redis_client.connect: retries on connection errors),
each call bounded by StoreCall's 2 s deadline. What must hold: a stalled or slow Redis fails
each call with HistoryUnavailable within seconds; a command cancelled or timed out mid-flight
never leaves its reply to be read as the answer to the next command on the pool (the redis-py
bug class of CVE-2023-28858/28859); a reset connection never splits an exchange, and is replaced
by a fresh one on every event loop the service runs on (uvicorn picks uvloop when installed).
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from adapters.redis_client import connect
from adapters.redis_history import RedisHistory
from application.errors import HistoryUnavailable
from domain.message import Message
from domain.session import SessionKey
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy

PREFIX = "faults"
MAX_MESSAGES = 200
CHUNK = 8192  # the proxy's read size: a long reply crosses it in several delayed chunks
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
BOUND_SECONDS = 5.0  # "within seconds": the socket timeout is 2 s, the rest is margin


def key(session: str) -> SessionKey:
    return SessionKey("public", session)


def exchange(tag: str, n: int, padding: int = 0) -> tuple[Message, Message]:
    """Question n of `tag` and its answer; the answer names its question."""
    at = T0 + timedelta(seconds=n, microseconds=n)
    question = f"{tag} question {n}" + "." * padding
    answer = f"{tag} answer {n}" + "." * padding
    return Message("user", question, at), Message("assistant", answer, at)


async def seed(
    history: RedisHistory, sessions: Iterable[str], exchanges: int = 2, padding: int = 0
) -> dict[str, list[Message]]:
    stored = {}
    for session in sessions:
        messages: list[Message] = []
        for n in range(exchanges):
            pair = exchange(session, n, padding)
            await history.append_exchange(key(session), *pair)
            messages.extend(pair)
        stored[session] = messages
    return stored


def paired_questions(messages: list[Message]) -> list[str]:
    """The stored questions, after checking each is followed at once by its own answer."""
    assert len(messages) % 2 == 0, [m.content[:30] for m in messages]
    for question, answer in zip(messages[::2], messages[1::2], strict=True):
        assert question.role == "user", question
        assert answer.role == "assistant", answer
        assert answer.content == question.content.replace(" question ", " answer ", 1), (
            question.content[:40],
            answer.content[:40],
        )
    return [m.content for m in messages[::2]]


async def lrange_calls(client: Redis) -> int:
    """How many LRANGEs the server has run: counts the cancelled loads that reached it."""
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_lrange", {}).get("calls", 0))


async def outcome(call: Awaitable[object]) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        await call
    except Exception as error:
        return error, time.monotonic() - started
    return None, time.monotonic() - started


@pytest.fixture
async def proxy(redis_server: RedisServer) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(redis_server.port, chunk_size=CHUNK)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def redis_history(client: Redis) -> RedisHistory:
    return RedisHistory(client, key_prefix=PREFIX, max_messages=MAX_MESSAGES, ttl_seconds=3600)


@pytest.fixture
async def history(proxy: TcpProxy) -> AsyncIterator[RedisHistory]:
    """The history under test, through the proxy."""
    client = connect(proxy.redis_url)
    try:
        yield redis_history(client)
    finally:
        await client.aclose()


@pytest.fixture
def direct(redis_client: Redis) -> RedisHistory:
    """The same store straight to the server: for seeding and for the ground truth."""
    return redis_history(redis_client)


# --- the proxy itself: the faults below are only as real as these -----------------------------


async def test_the_proxy_delays_stalls_and_resets_what_it_carries(
    proxy: TcpProxy, redis_client: Redis
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)

    async def ping() -> float:
        started = time.monotonic()
        writer.write(b"PING\r\n")
        assert await reader.readline() == b"+PONG\r\n"
        return time.monotonic() - started

    assert await ping() < 1
    proxy.delay(0.2)
    assert 0.4 <= await ping() < 0.4 + BOUND_SECONDS  # held both ways

    proxy.stall()
    writer.write(b"PING\r\n")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await reader.readline()
    proxy.pass_through()
    async with asyncio.timeout(BOUND_SECONDS):
        assert await reader.readline() == b"+PONG\r\n"

    # Bytes held when their sender hung up still reach the server, as on a real network.
    proxy.stall()
    writer.write(b"SET sent-then-gone yes\r\n")
    await writer.drain()
    writer.close()
    await asyncio.sleep(0.1)
    assert await redis_client.get("sent-then-gone") is None
    proxy.release()
    for _ in range(100):  # up to 5 s
        if await redis_client.get("sent-then-gone") is not None:
            break
        await asyncio.sleep(0.05)
    assert await redis_client.get("sent-then-gone") == b"yes"

    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await ping() < 1
    assert proxy.reset_all() == 1
    with pytest.raises(ConnectionResetError):
        await reader.read(1)
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await ping() < 1  # a reset ends the connections it found, not the route
    writer.close()


# --- slow and stalled Redis --------------------------------------------------------------------


@pytest.mark.slow
async def test_a_stalled_redis_fails_every_call_within_seconds_and_the_pool_recovers(
    direct: RedisHistory, history: RedisHistory, proxy: TcpProxy
) -> None:
    stored = await seed(direct, ["a", "b", "c", "d", "f"])
    # Pooled connections are open: the stall catches commands on them, not only connects.
    await asyncio.gather(*(history.ping() for _ in range(8)))
    proxy.stall()

    calls: dict[str, Awaitable[object]] = {
        **{f"load {s}": history.load(key(s)) for s in "abcd"},
        "ping": history.ping(),
        "append e": history.append_exchange(key("e"), *exchange("e", 0)),
        "delete f": history.delete(key("f")),
    }
    outcomes = dict(zip(calls, await asyncio.gather(*map(outcome, calls.values())), strict=True))
    for name, (error, elapsed) in outcomes.items():
        assert isinstance(error, HistoryUnavailable), (name, error)
        assert elapsed < BOUND_SECONDS, (name, elapsed)

    proxy.release()  # the stale requests go on to the server, their replies come back late
    for _ in range(3):  # concurrent loads, so that every pooled connection serves one
        loaded = await asyncio.gather(*(history.load(key(s)) for s in "abcd"))
        assert loaded == [stored[s] for s in "abcd"]
    # A write that timed out may still have run, but only ever whole.
    assert await history.load(key("e")) in ([], list(exchange("e", 0)))
    assert await history.load(key("f")) in ([], stored["f"])
    await history.ping()


@pytest.mark.slow
async def test_a_reply_cut_off_by_the_socket_timeout_is_not_read_by_the_next_command(
    direct: RedisHistory, history: RedisHistory, proxy: TcpProxy
) -> None:
    big = await seed(direct, ["a"], exchanges=25, padding=2000)  # a ~100 KB reply: 13 chunks
    small = await seed(direct, ["b", "c"])
    await asyncio.gather(history.ping(), history.ping())  # two connections, open before
    # The request takes 0.3 s, then the reply's chunks come 0.3 s apart: A's load is still
    # reading when the 2 s socket timeout fires; D's write has not been answered by then.
    proxy.delay(0.3)
    (load_error, load_took), (write_error, write_took) = await asyncio.gather(
        outcome(history.load(key("a"))),
        outcome(history.append_exchange(key("d"), *exchange("d", 0, padding=40_000))),
    )
    assert isinstance(load_error, HistoryUnavailable), load_error
    assert isinstance(write_error, HistoryUnavailable), write_error
    assert max(load_took, write_took) < BOUND_SECONDS, (load_took, write_took)

    proxy.pass_through()  # the rest of A's reply, and D's, now race the next commands
    for _ in range(3):
        b, c = await asyncio.gather(history.load(key("b")), history.load(key("c")))
        assert (b, c) == (small["b"], small["c"])
    assert await history.load(key("a")) == big["a"]
    assert await history.load(key("d")) in ([], list(exchange("d", 0, padding=40_000)))


CANCEL_STEP = 0.004  # the proxy's delay per chunk, and the step between cancellation moments
MOMENTS = 20  # 0 to 76 ms: before the request leaves, while it or the reply is held, mid-reply


async def _cancel_after(call: Awaitable[object], moment: float, style: int) -> bool:
    """Run `call`, cancelled `moment` seconds in (one of three ways); True if it was."""
    if style == 0:
        try:
            async with asyncio.timeout(moment):
                await call
        except TimeoutError:
            return True
        return False
    if style == 1:
        try:
            await asyncio.wait_for(call, moment)
        except TimeoutError:
            return True
        return False
    task = asyncio.ensure_future(call)
    await asyncio.sleep(moment)
    if task.done():
        await task
        return False
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return True
    return False


@pytest.mark.slow
async def test_a_cancelled_load_never_hands_its_reply_to_the_next_command(
    direct: RedisHistory, history: RedisHistory, proxy: TcpProxy, redis_client: Redis
) -> None:
    big = await seed(direct, ["a"], exchanges=25, padding=2000)
    small = await seed(direct, ["b", "c"])
    proxy.delay(CANCEL_STEP)
    calls_before = await lrange_calls(redis_client)
    cancelled = completed = 0

    async def load_a() -> None:
        assert await history.load(key("a")) == big["a"]  # if it finishes, it is A's

    for i in range(3 * MOMENTS):
        moment, style = (i % MOMENTS) * CANCEL_STEP, i // MOMENTS
        if style < 2:  # cancel A, then B and C: the pool hands them A's connection first
            was_cancelled = await _cancel_after(load_a(), moment, style)
            b, c = await asyncio.gather(history.load(key("b")), history.load(key("c")))
        else:  # B and C load while A is being cancelled beside them
            was_cancelled, b, c = await asyncio.gather(
                _cancel_after(load_a(), moment, style),
                history.load(key("b")),
                history.load(key("c")),
            )
        assert (b, c) == (small["b"], small["c"]), f"iteration {i}: cancelled after {moment} s"
        cancelled += was_cancelled
        completed += not was_cancelled

    proxy.pass_through()
    await asyncio.sleep(0.2)  # requests of the last cancelled loads may still be on their way
    loads_of_a_run = await lrange_calls(redis_client) - calls_before - 2 * 3 * MOMENTS
    # The dangerous case happened, often: a load cancelled after its request had gone out,
    # so that its reply was on the way back.
    figures = {"cancelled": cancelled, "completed": completed, "ran": loads_of_a_run}
    print(f"\ncancelled loads: {figures}")
    assert cancelled >= MOMENTS, figures
    assert loads_of_a_run - completed >= 10, figures
    assert await history.load(key("a")) == big["a"]


@pytest.mark.slow
async def test_a_cancelled_write_is_stored_whole_or_not_at_all_and_poisons_nothing(
    direct: RedisHistory, history: RedisHistory, proxy: TcpProxy
) -> None:
    small = await seed(direct, ["b", "c"])
    proxy.delay(CANCEL_STEP)
    acknowledged, attempted = [], []
    for i in range(2 * MOMENTS):
        # Finer steps than for loads: a write is over in a few chunks' time.
        moment, style = (i % MOMENTS) * CANCEL_STEP / 2, 2 * (i // MOMENTS)
        question, answer = exchange("a", i, padding=6000)  # a request of 2 chunks
        attempted.append(question.content)
        if not await _cancel_after(
            history.append_exchange(key("a"), question, answer), moment, style
        ):
            acknowledged.append(question.content)
        b, c = await asyncio.gather(history.load(key("b")), history.load(key("c")))
        assert (b, c) == (small["b"], small["c"]), f"iteration {i}: cancelled after {moment} s"

    proxy.pass_through()
    stored = paired_questions(await direct.load(key("a")))
    assert len(stored) == len(set(stored))
    assert set(acknowledged) <= set(stored) <= set(attempted)
    # Cancelled after the script had gone out: it ran, whole, though nobody heard back.
    ran_anyway = len(set(stored) - set(acknowledged))
    figures = {"writes": len(attempted), "acknowledged": len(acknowledged), "ran": ran_anyway}
    print(f"\ncancelled writes: {figures}")
    assert len(acknowledged) < len(attempted), figures
    assert ran_anyway >= 3, figures


# --- connections reset mid-traffic -------------------------------------------------------------


RESET_EVERY = 0.1


@pytest.mark.slow
async def test_connections_reset_mid_traffic_fail_cleanly_and_never_split_an_exchange(
    direct: RedisHistory, history: RedisHistory, proxy: TcpProxy
) -> None:
    proxy.delay(0.004)  # so that many resets find a command in flight
    sessions = ["r0", "r1", "r2", "r3", "r4", "r5", "r0", "r1"]  # two writers on r0 and r1
    attempted: dict[str, set[str]] = {s: set() for s in sessions}
    acknowledged: dict[str, set[str]] = {s: set() for s in sessions}
    failures: list[BaseException] = []
    writing = True

    async def write(writer: int, session: str) -> None:
        for n in range(10):
            question, answer = exchange(f"{session}-w{writer}", n)
            attempted[session].add(question.content)
            try:
                await history.append_exchange(key(session), question, answer)
                acknowledged[session].add(question.content)
                loaded = await history.load(key(session))
            except HistoryUnavailable as error:
                failures.append(error)
                continue
            assert all(m.content.startswith(f"{session}-") for m in loaded), session

    async def reset_repeatedly() -> None:
        while writing:
            await asyncio.sleep(RESET_EVERY)
            proxy.reset_all()

    resetter = asyncio.create_task(reset_repeatedly())
    try:
        await asyncio.gather(*(write(w, s) for w, s in enumerate(sessions)))
    finally:
        writing = False
        await resetter

    for session in set(sessions):
        stored = paired_questions(await direct.load(key(session)))
        assert len(stored) == len(set(stored)), f"an exchange stored twice in {session}"
        assert acknowledged[session] <= set(stored) <= attempted[session]
    assert proxy.stats.resets_in_flight >= 5, proxy.stats
    figures = {
        "resets": proxy.stats.resets,
        "mid-command": proxy.stats.resets_in_flight,
        "writes": sum(map(len, attempted.values())),
        "acknowledged": sum(map(len, acknowledged.values())),
        "HistoryUnavailable": len(failures),
    }
    print(f"\nredis resets: {figures}")


# uvicorn runs the service on uvloop wherever uvicorn[standard] installed it (not on Windows).
LOOPS = {"asyncio": asyncio.new_event_loop}
with contextlib.suppress(ImportError):
    import uvloop

    LOOPS["uvloop"] = uvloop.new_event_loop


async def _load_after_idle_connections_were_reset(port: int) -> None:
    proxy = TcpProxy(port)
    await proxy.start()
    client = connect(proxy.redis_url)
    try:
        history = redis_history(client)
        await history.append_exchange(key("a"), *exchange("a", 0))
        for _ in range(3):
            await asyncio.gather(*(history.ping() for _ in range(4)))  # idle pooled connections
            assert proxy.reset_all() >= 1  # as a load balancer or NAT that dropped them does
            await asyncio.sleep(0.1)  # the resets arrive; the client has not written since
            loaded = await asyncio.gather(*(history.load(key("a")) for _ in range(4)))
            assert loaded == [list(exchange("a", 0))] * 4
    finally:
        await client.aclose()
        await proxy.stop()


@pytest.mark.parametrize("loop", LOOPS)
def test_idle_pooled_connections_reset_by_the_network_are_replaced_not_an_error(
    redis_server: RedisServer, loop: str
) -> None:
    """connect() retries connection errors on a fresh connection; a reset met on the next
    write must be one, on every event loop the service runs on."""
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(_load_after_idle_connections_were_reset(redis_server.port))
