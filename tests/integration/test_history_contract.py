"""One set of behaviours, run against MemoryHistory and RedisHistory alike.

Whatever passes here for Redis must pass for the in-memory fake, so unit tests that use the
fake say something true about production.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from redis.asyncio import Redis

from adapters.memory_history import MemoryHistory
from adapters.redis_history import RedisHistory
from application.ports import ChatHistory
from domain.idempotency import RECEIPT_TTL_SECONDS, Receipt, Reply
from domain.message import Message
from domain.session import SessionInfo, SessionKey

PREFIX = "chat-test"
KEY = SessionKey("public", "s-1")
# A non-UTC offset and non-zero microseconds: both must survive a round trip.
T0 = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))


def exchange(n: int) -> tuple[Message, Message]:
    asked_at = T0 + timedelta(seconds=n, microseconds=n)
    return (
        Message("user", f"question {n}", asked_at),
        Message("assistant", f"answer {n}", asked_at + timedelta(microseconds=1)),
    )


@dataclass
class HistoryStore:
    """Builds histories over one store, and moves that store's clock forward."""

    make: Callable[[int, int], ChatHistory]  # (max_messages, ttl_seconds)
    advance: Callable[[float], Awaitable[None]]


def memory_store() -> HistoryStore:
    now = [1_000.0]

    async def advance(seconds: float) -> None:
        now[0] += seconds

    return HistoryStore(
        make=lambda max_messages, ttl: MemoryHistory(
            max_messages=max_messages, ttl_seconds=ttl, monotonic=lambda: now[0]
        ),
        advance=advance,
    )


def redis_store(client: Redis) -> HistoryStore:
    async def advance(seconds: float) -> None:
        # Redis cannot be told the time, so shorten every key's remaining TTL by as much:
        # what Redis holds after that much time (a non-positive PEXPIRE deletes). Session
        # records are tagged with their history key: `{chat-test:history:...}:session`.
        names = [
            name
            for match in (f"{PREFIX}:*", f"{{{PREFIX}:*")
            async for name in client.scan_iter(match=match)
        ]
        for name in names:
            remaining = await client.pttl(name)
            if remaining >= 0:
                await client.pexpire(name, remaining - int(seconds * 1000))

    return HistoryStore(
        make=lambda max_messages, ttl: RedisHistory(
            client, key_prefix=PREFIX, max_messages=max_messages, ttl_seconds=ttl
        ),
        advance=advance,
    )


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> HistoryStore:
    if request.param == "memory":
        return memory_store()
    return redis_store(request.getfixturevalue("redis_client"))


async def test_unknown_session_loads_empty(store: HistoryStore) -> None:
    history = store.make(10, 60)

    assert await history.load(KEY) == []


async def test_exchange_round_trips_in_order(store: HistoryStore) -> None:
    history = store.make(10, 60)
    question = Message("user", "héllo 👋\nsecond line", T0)
    answer = Message("assistant", "", T0 + timedelta(microseconds=1))

    await history.append_exchange(KEY, question, answer)
    loaded = await history.load(KEY)

    assert loaded == [question, answer]
    assert [m.created_at.utcoffset() is not None for m in loaded] == [True, True]
    assert [m.created_at.astimezone(UTC) for m in loaded] == [
        datetime(2024, 5, 1, 10, 30, 15, 123456, tzinfo=UTC),
        datetime(2024, 5, 1, 10, 30, 15, 123457, tzinfo=UTC),
    ]


async def test_a_reply_keeps_the_name_of_the_model_that_wrote_it(store: HistoryStore) -> None:
    history = store.make(10, 60)
    question, answer = exchange(1)
    named = Message("assistant", answer.content, answer.created_at, "claude")

    await history.append_exchange(KEY, question, named)

    assert [m.model for m in await history.load(KEY)] == [None, "claude"]


async def test_a_retried_write_is_stored_once(store: HistoryStore) -> None:
    history = store.make(50, 0)
    question, answer = exchange(1)

    await history.append_exchange(KEY, question, answer)
    await history.append_exchange(KEY, question, answer)

    assert await history.load(KEY) == [question, answer]


async def test_trim_keeps_the_newest_messages(store: HistoryStore) -> None:
    history = store.make(4, 60)
    for n in range(1, 4):
        await history.append_exchange(KEY, *exchange(n))

    assert await history.load(KEY) == [*exchange(2), *exchange(3)]


async def test_history_expires_after_its_ttl(store: HistoryStore) -> None:
    history = store.make(10, 60)
    await history.append_exchange(KEY, *exchange(1))

    await store.advance(59)
    assert await history.load(KEY) == list(exchange(1))
    await store.advance(2)
    assert await history.load(KEY) == []


async def test_each_write_refreshes_the_ttl(store: HistoryStore) -> None:
    history = store.make(10, 60)
    await history.append_exchange(KEY, *exchange(1))
    await store.advance(40)
    await history.append_exchange(KEY, *exchange(2))

    await store.advance(40)  # 80 s after the first write, 40 s after the second
    assert await history.load(KEY) == [*exchange(1), *exchange(2)]
    await store.advance(21)
    assert await history.load(KEY) == []


async def test_ttl_zero_never_expires(store: HistoryStore) -> None:
    history = store.make(10, 0)
    await history.append_exchange(KEY, *exchange(1))

    await store.advance(10 * 365 * 24 * 3600)

    assert await history.load(KEY) == list(exchange(1))


async def test_namespaces_keep_the_same_session_id_apart(store: HistoryStore) -> None:
    history = store.make(10, 60)
    alice, bob = SessionKey("alice", "shared"), SessionKey("bob", "shared")
    await history.append_exchange(alice, *exchange(1))
    await history.append_exchange(bob, *exchange(2))

    assert await history.load(alice) == list(exchange(1))
    assert await history.load(bob) == list(exchange(2))

    await history.delete(alice)

    assert await history.load(alice) == []
    assert await history.load(bob) == list(exchange(2))


async def test_deleting_a_missing_session_is_fine(store: HistoryStore) -> None:
    history = store.make(10, 60)
    await history.append_exchange(KEY, *exchange(1))

    await history.delete(SessionKey("public", "never-written"))
    await history.delete(KEY)
    await history.delete(KEY)

    assert await history.load(KEY) == []


async def test_purge_of_everything_deletes_every_history_and_counts_them(
    store: HistoryStore,
) -> None:
    history = store.make(10, 60)
    keys = [SessionKey("public", "a"), SessionKey("public", "b"), SessionKey("alice", "a")]
    for n, key in enumerate(keys):
        await history.append_exchange(key, *exchange(n))

    assert await history.purge() == 3
    assert [await history.load(key) for key in keys] == [[], [], []]
    assert await history.purge() == 0


async def test_purge_of_idle_histories_keeps_those_written_since(store: HistoryStore) -> None:
    """Sessions written at different times: only those whose last write is older go."""
    history = store.make(10, 0)
    started_early = SessionKey("public", "started-early-still-talking")
    idle = SessionKey("alice", "idle")
    recent = SessionKey("public", "recent")
    await history.append_exchange(started_early, *exchange(0))  # T0
    await history.append_exchange(idle, *exchange(10))  # T0 + 10 s
    await history.append_exchange(started_early, *exchange(100))  # written again later
    await history.append_exchange(recent, *exchange(60))

    cutoff = T0 + timedelta(seconds=50)
    assert await history.purge(written_before=cutoff) == 1

    assert await history.load(idle) == []
    assert await history.load(started_early) == [*exchange(0), *exchange(100)]
    assert await history.load(recent) == list(exchange(60))
    assert await history.purge(written_before=cutoff) == 0
    assert await history.purge(written_before=T0 + timedelta(seconds=101)) == 2


async def test_concurrent_exchanges_keep_each_answer_after_its_question(
    store: HistoryStore,
) -> None:
    history = store.make(40, 60)

    await asyncio.gather(*(history.append_exchange(KEY, *exchange(n)) for n in range(20)))

    loaded = await history.load(KEY)
    pairs = [tuple(loaded[i : i + 2]) for i in range(0, len(loaded), 2)]
    assert len(loaded) == 40
    assert sorted(pairs, key=lambda pair: pair[0].created_at) == [exchange(n) for n in range(20)]


async def test_ping_answers(store: HistoryStore) -> None:
    await store.make(10, 60).ping()


# --- sessions opened before their first exchange (OpenAI's POST /v1/conversations) ----------

OPENED = SessionInfo(T0, {"topic": "démo", "empty": ""})


async def test_an_opened_session_reads_back_what_it_was_opened_with(store: HistoryStore) -> None:
    history = store.make(10, 60)

    await history.open(KEY, OPENED)
    info = await history.info(KEY)

    assert info == OPENED
    assert info is not None
    assert info.created_at.utcoffset() is not None
    assert info.created_at.astimezone(UTC) == datetime(2024, 5, 1, 10, 30, 15, 123456, tzinfo=UTC)
    assert await history.load(KEY) == []


async def test_a_session_never_opened_has_no_info(store: HistoryStore) -> None:
    history = store.make(10, 60)
    await history.append_exchange(KEY, *exchange(1))

    assert await history.info(KEY) is None
    assert await history.info(SessionKey("public", "unknown")) is None


async def test_an_opened_session_is_not_seen_from_another_namespace(store: HistoryStore) -> None:
    history = store.make(10, 60)

    await history.open(SessionKey("alice", "shared"), OPENED)

    assert await history.info(SessionKey("bob", "shared")) is None


async def test_an_opened_session_without_exchange_expires_with_the_ttl(
    store: HistoryStore,
) -> None:
    history = store.make(10, 60)
    await history.open(KEY, OPENED)

    await store.advance(59)
    assert await history.info(KEY) == OPENED
    await store.advance(2)
    assert await history.info(KEY) is None


async def test_an_exchange_refreshes_the_ttl_of_the_opened_session(store: HistoryStore) -> None:
    history = store.make(10, 60)
    await history.open(KEY, OPENED)
    await store.advance(50)
    await history.append_exchange(KEY, *exchange(1))

    await store.advance(50)  # 100 s after the open, 50 s after the exchange
    assert await history.info(KEY) == OPENED
    await store.advance(11)
    assert await history.info(KEY) is None
    assert await history.load(KEY) == []


async def test_with_ttl_zero_an_opened_session_never_expires(store: HistoryStore) -> None:
    history = store.make(10, 0)
    await history.open(KEY, OPENED)
    await history.open(SessionKey("public", "talked"), OPENED)
    await history.append_exchange(SessionKey("public", "talked"), *exchange(1))

    await store.advance(10 * 365 * 24 * 3600)

    assert await history.info(KEY) == OPENED
    assert await history.info(SessionKey("public", "talked")) == OPENED


async def test_delete_forgets_what_the_session_was_opened_with(store: HistoryStore) -> None:
    history = store.make(10, 60)
    talked, silent = SessionKey("public", "talked"), SessionKey("public", "silent")
    await history.open(talked, OPENED)
    await history.append_exchange(talked, *exchange(1))
    await history.open(silent, OPENED)

    await history.delete(talked)
    await history.delete(silent)

    assert await history.info(talked) is None
    assert await history.info(silent) is None


async def test_purge_of_everything_forgets_every_opened_session(store: HistoryStore) -> None:
    history = store.make(10, 60)
    talked, silent = SessionKey("public", "talked"), SessionKey("alice", "silent")
    await history.open(talked, OPENED)
    await history.append_exchange(talked, *exchange(1))
    await history.open(silent, OPENED)

    assert await history.purge() == 1  # histories

    assert await history.info(talked) is None
    assert await history.info(silent) is None


async def test_purge_of_idle_histories_forgets_their_opened_sessions_only(
    store: HistoryStore,
) -> None:
    """An opened session without history is left to its TTL."""
    history = store.make(10, 60)
    idle, recent = SessionKey("public", "idle"), SessionKey("public", "recent")
    silent = SessionKey("public", "silent")
    for key in (idle, recent, silent):
        await history.open(key, OPENED)
    await history.append_exchange(idle, *exchange(10))
    await history.append_exchange(recent, *exchange(60))

    assert await history.purge(written_before=T0 + timedelta(seconds=50)) == 1

    assert await history.info(idle) is None
    assert await history.info(recent) == OPENED
    assert await history.info(silent) == OPENED


# --- receipts of requests made with an Idempotency-Key ---------------------------------------

PENDING = Receipt("public", "key-1", "fingerprint-1", session_id=KEY.session_id)


def done(pending: Receipt, text: str) -> Receipt:
    return msgspec.structs.replace(pending, reply=Reply(KEY.session_id, text))


def repeat_in(session_id: str, pending: Receipt = PENDING) -> Receipt:
    """The same request again, in the new session its process made up (it named none)."""
    return msgspec.structs.replace(pending, session_id=session_id)


async def test_a_claim_is_held_until_released(store: HistoryStore) -> None:
    receipts = store.make(10, 60)

    assert await receipts.claim(PENDING, ttl_seconds=60) is None
    other = msgspec.structs.replace(PENDING, fingerprint="other")
    assert await receipts.claim(other, ttl_seconds=60) == PENDING
    await receipts.release(PENDING)
    assert await receipts.claim(PENDING, ttl_seconds=60) is None


async def test_an_abandoned_claim_expires(store: HistoryStore) -> None:
    receipts = store.make(10, 60)
    await receipts.claim(PENDING, ttl_seconds=30)

    await store.advance(31)

    assert await receipts.claim(PENDING, ttl_seconds=30) is None


async def test_a_completed_receipt_is_written_with_its_exchange_and_kept_a_day(
    store: HistoryStore,
) -> None:
    history = store.make(10, 0)
    await history.claim(PENDING, ttl_seconds=60)
    question, answer = exchange(1)

    assert await history.append_exchange(KEY, question, answer, done(PENDING, "answer 1")) is None

    assert await history.claim(PENDING, ttl_seconds=60) == done(PENDING, "answer 1")
    await history.release(PENDING)  # a completed receipt is never released
    await store.advance(RECEIPT_TTL_SECONDS - 60)
    assert await history.claim(PENDING, ttl_seconds=60) == done(PENDING, "answer 1")
    await store.advance(61)
    assert await history.claim(PENDING, ttl_seconds=60) is None
    assert await history.load(KEY) == [question, answer]


async def test_an_answered_request_is_never_appended_twice(store: HistoryStore) -> None:
    history = store.make(10, 60)
    first, second = exchange(1), exchange(2)
    await history.append_exchange(KEY, *first, done(PENDING, "answer 1"))

    earlier = await history.append_exchange(KEY, *second, done(PENDING, "answer 2"))

    assert earlier == Reply(KEY.session_id, "answer 1")
    assert await history.load(KEY) == list(first)


async def test_receipts_are_per_namespace(store: HistoryStore) -> None:
    receipts = store.make(10, 60)
    await receipts.claim(PENDING, ttl_seconds=60)

    other_namespace = msgspec.structs.replace(PENDING, namespace="other")
    assert await receipts.claim(other_namespace, 60) is None


async def test_a_claim_extended_by_its_holder_outlives_its_first_ttl(store: HistoryStore) -> None:
    receipts = store.make(10, 60)
    await receipts.claim(PENDING, ttl_seconds=10)

    await store.advance(8)
    await receipts.extend(PENDING, ttl_seconds=10)
    not_the_holder = msgspec.structs.replace(PENDING, fingerprint="not the holder")
    await receipts.extend(not_the_holder, ttl_seconds=1000)
    await store.advance(8)

    assert await receipts.claim(PENDING, ttl_seconds=10) == PENDING
    await store.advance(3)
    assert await receipts.claim(PENDING, ttl_seconds=10) is None


async def test_a_repeat_in_a_session_of_its_own_finds_the_first_requests_receipt(
    store: HistoryStore,
) -> None:
    """A request that named no session runs in one its process made up; a repeat, in
    another, is told the first one's receipt: in flight, then answered."""
    history = store.make(10, 60)
    await history.claim(PENDING, ttl_seconds=60)

    assert await history.claim(repeat_in("made-up-2"), ttl_seconds=60) == PENDING
    await history.append_exchange(KEY, *exchange(1), done(PENDING, "answer 1"))
    assert await history.claim(repeat_in("made-up-3"), ttl_seconds=60) == done(PENDING, "answer 1")


async def test_after_a_failed_first_request_a_repeat_runs_in_its_own_session(
    store: HistoryStore,
) -> None:
    history = store.make(10, 60)
    await history.claim(PENDING, ttl_seconds=60)
    await history.release(PENDING)  # it failed: nothing stored

    second = repeat_in("made-up-2")
    assert await history.claim(second, ttl_seconds=60) is None
    answered = msgspec.structs.replace(second, reply=Reply("made-up-2", "answer 2"))
    await history.append_exchange(SessionKey(KEY.namespace, "made-up-2"), *exchange(2), answered)

    assert await history.claim(repeat_in("made-up-3"), ttl_seconds=60) == answered
    assert await history.claim(PENDING, ttl_seconds=60) == answered


async def test_the_key_with_another_body_is_refused_after_its_request_was_answered(
    store: HistoryStore,
) -> None:
    history = store.make(10, 60)
    await history.claim(PENDING, ttl_seconds=60)
    await history.append_exchange(KEY, *exchange(1), done(PENDING, "answer 1"))
    elsewhere = Receipt("public", "key-1", "another body", session_id="another-session")

    held = await history.claim(elsewhere, ttl_seconds=60)

    assert held is not None
    assert held.fingerprint == "fingerprint-1"


async def test_a_released_key_is_free_for_another_body(store: HistoryStore) -> None:
    history = store.make(10, 60)
    await history.claim(PENDING, ttl_seconds=60)
    await history.release(PENDING)
    elsewhere = Receipt("public", "key-1", "another body", session_id="another-session")

    assert await history.claim(elsewhere, ttl_seconds=60) is None
