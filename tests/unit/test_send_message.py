import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from adapters.memory_history import MemoryHistory
from application.errors import ModelUnavailable
from application.send_message import SendMessage
from domain.errors import InvalidMessage, InvalidSessionId
from domain.session import SessionKey
from tests.unit.fakes import ScriptedModel, routed, unavailable


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def history() -> MemoryHistory:
    return MemoryHistory(max_messages=6, ttl_seconds=3600)


@pytest.fixture
def model() -> ScriptedModel:
    return ScriptedModel()


@pytest.fixture
def send(history: MemoryHistory, model: ScriptedModel) -> SendMessage:
    return SendMessage(
        history, routed(model, system_prompt="sys"), max_message_chars=100, clock=Clock()
    )


async def test_a_conversation_is_remembered_and_shown_to_the_model(
    send: SendMessage, history: MemoryHistory, model: ScriptedModel
) -> None:
    first = await send.execute("ns", None, "hello")
    second = await send.execute("ns", first.session_id, "again")

    assert second.session_id == first.session_id
    assert second.response == "reply-2: again"
    shown = model.seen[1]
    assert shown.system_prompt == "sys"
    assert [(m.role, m.content) for m in shown.messages] == [
        ("user", "hello"),
        ("assistant", "reply-1: hello"),
        ("user", "again"),
    ]
    stored = await history.load(SessionKey("ns", first.session_id))
    assert [m.content for m in stored] == ["hello", "reply-1: hello", "again", "reply-2: again"]
    assert stored[0].created_at < stored[1].created_at < stored[2].created_at


async def test_history_keeps_the_newest_max_messages(
    send: SendMessage, history: MemoryHistory
) -> None:
    for n in range(5):
        await send.execute("ns", "s", f"q{n}")
    stored = await history.load(SessionKey("ns", "s"))
    assert [m.content for m in stored][::2] == ["q2", "q3", "q4"]


async def test_bad_input_is_refused_before_anything_is_asked_or_stored(
    send: SendMessage, history: MemoryHistory, model: ScriptedModel
) -> None:
    with pytest.raises(InvalidSessionId):
        await send.execute("ns", "not valid!", "hi")
    with pytest.raises(InvalidMessage):
        await send.execute("ns", "s", "   ")
    with pytest.raises(InvalidMessage):
        await send.execute("ns", "s", "x" * 101)
    assert model.seen == []
    assert await history.load(SessionKey("ns", "s")) == []


async def test_a_failed_model_call_stores_nothing(
    send: SendMessage, history: MemoryHistory, model: ScriptedModel
) -> None:
    await send.execute("ns", "s", "kept")
    model.failure = unavailable()
    with pytest.raises(ModelUnavailable):
        await send.execute("ns", "s", "lost")
    assert [m.content for m in await history.load(SessionKey("ns", "s"))] == [
        "kept",
        "reply-1: kept",
    ]


async def test_a_cancelled_request_stores_nothing(
    send: SendMessage, history: MemoryHistory, model: ScriptedModel
) -> None:
    model.gate = asyncio.Event()
    task = asyncio.create_task(send.execute("ns", "s", "hi"))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await history.load(SessionKey("ns", "s")) == []


async def test_concurrent_exchanges_on_one_session_are_each_kept_whole(
    model: ScriptedModel,
) -> None:
    history = MemoryHistory(max_messages=100, ttl_seconds=0)
    send = SendMessage(history, routed(model), max_message_chars=100)
    model.gate = asyncio.Event()
    tasks = [asyncio.create_task(send.execute("ns", "s", f"q{n}")) for n in range(20)]
    await asyncio.sleep(0.01)
    model.gate.set()
    await asyncio.gather(*tasks)

    stored = await history.load(SessionKey("ns", "s"))
    assert len(stored) == 40
    for question, answer in zip(stored[::2], stored[1::2], strict=True):
        assert question.role == "user"
        assert answer.role == "assistant"
        assert answer.content.endswith(f": {question.content}")


async def test_sessions_in_other_namespaces_are_separate(
    send: SendMessage, history: MemoryHistory
) -> None:
    await send.execute("alice", "shared-id", "from alice")
    await send.execute("bob", "shared-id", "from bob")
    alice = await history.load(SessionKey("alice", "shared-id"))
    assert [m.content for m in alice] == ["from alice", "reply-1: from alice"]
