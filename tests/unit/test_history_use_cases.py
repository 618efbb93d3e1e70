from datetime import UTC, datetime, timedelta

import pytest

from adapters.memory_coordination import MemoryJobLock
from adapters.memory_history import MemoryHistory
from application.delete_history import DeleteHistory
from application.errors import SessionNotFound
from application.purge_histories import PurgeHistories
from application.show_history import ShowHistory
from domain.errors import InvalidSessionId
from domain.message import Message
from domain.session import SessionKey

T = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def history() -> MemoryHistory:
    history = MemoryHistory(max_messages=10, ttl_seconds=0)
    await history.append_exchange(
        SessionKey("ns", "s"), Message("user", "q", T), Message("assistant", "a", T)
    )
    return history


async def test_show_returns_messages_and_404s_what_is_not_there(history: MemoryHistory) -> None:
    show = ShowHistory(history)
    assert [m.content for m in await show.execute("ns", " s ")] == ["q", "a"]
    with pytest.raises(SessionNotFound):
        await show.execute("other-namespace", "s")
    with pytest.raises(InvalidSessionId):
        await show.execute("ns", "bad id")


async def test_delete_forgets_and_is_idempotent(history: MemoryHistory) -> None:
    delete = DeleteHistory(history)
    await delete.execute("ns", "s")
    await delete.execute("ns", "s")
    assert await history.load(SessionKey("ns", "s")) == []


async def test_purge_runs_once_per_slot_across_processes(history: MemoryHistory) -> None:
    lock = MemoryJobLock()  # shared, as Redis is shared by workers
    worker_a = PurgeHistories(history, lock, interval_seconds=60, scope="all")
    worker_b = PurgeHistories(history, lock, interval_seconds=60, scope="all")

    assert await worker_a.execute(6000.0) == 1
    assert await worker_b.execute(6000.4) is None  # same slot, fired a little later
    assert await worker_b.execute(6059.8) == 0  # the next slot, fired a little early
    assert await worker_a.execute(6060.1) is None


async def test_idle_scope_never_cuts_a_conversation_in_use() -> None:
    """The seed's hourly cleanup: a conversation started at 12:59 is still there at 13:00."""
    history = MemoryHistory(max_messages=10, ttl_seconds=0)
    noon = datetime(2026, 1, 1, 12, tzinfo=UTC)

    async def talk(session: str, at: datetime) -> None:
        await history.append_exchange(
            SessionKey("ns", session), Message("user", "q", at), Message("assistant", "a", at)
        )

    await talk("quiet since noon", noon)
    await talk("started at 12:59", noon + timedelta(minutes=59))
    await talk("all morning, still talking", noon - timedelta(hours=3))
    await talk("all morning, still talking", noon + timedelta(minutes=30))
    purge = PurgeHistories(history, MemoryJobLock(), interval_seconds=3600)

    assert await purge.execute((noon + timedelta(hours=1, seconds=1)).timestamp()) == 1

    assert await history.load(SessionKey("ns", "quiet since noon")) == []
    assert len(await history.load(SessionKey("ns", "started at 12:59"))) == 2
    assert len(await history.load(SessionKey("ns", "all morning, still talking"))) == 4


async def test_all_scope_deletes_every_history_each_interval(history: MemoryHistory) -> None:
    purge = PurgeHistories(history, MemoryJobLock(), interval_seconds=3600, scope="all")

    assert await purge.execute(T.timestamp()) == 1  # written this very second: gone all the same
