"""Conversations: sessions as OpenAI's Conversations API shows them, whichever API began them."""

import re
from datetime import UTC, datetime, timedelta

import pytest

from adapters.memory_history import MemoryHistory
from application.conversations import (
    METADATA_KEY_MAX_CHARS,
    METADATA_MAX_PAIRS,
    METADATA_VALUE_MAX_CHARS,
    Conversations,
    InvalidMetadata,
)
from application.errors import SessionNotFound
from domain.errors import InvalidInput
from domain.message import Message
from domain.session import SessionInfo, SessionKey

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
EARLIER = NOW - timedelta(hours=1)


@pytest.fixture
def history() -> MemoryHistory:
    return MemoryHistory(max_messages=50, ttl_seconds=0)


@pytest.fixture
def conversations(history: MemoryHistory) -> Conversations:
    return Conversations(history, clock=lambda: NOW)


async def chatted(history: MemoryHistory, namespace: str = "ns") -> list[Message]:
    """A session started by /chat/: an exchange stored, no record."""
    question = Message("user", "hello", EARLIER)
    answer = Message("assistant", "hi", EARLIER + timedelta(seconds=2))
    await history.append_exchange(SessionKey(namespace, "chat-1"), question, answer)
    return [question, answer]


async def test_a_created_conversation_has_its_own_id_metadata_and_time(
    conversations: Conversations,
) -> None:
    conversation_id, info = await conversations.create("ns", {"topic": "billing"})
    assert re.fullmatch(r"conv_[0-9a-f]{32}", conversation_id)
    assert info == SessionInfo(NOW, {"topic": "billing"})
    assert await conversations.show("ns", conversation_id) == (info, [])


async def test_each_created_conversation_gets_a_new_id(conversations: Conversations) -> None:
    first, _ = await conversations.create("ns", {})
    second, _ = await conversations.create("ns", {})
    assert first != second


async def test_a_created_conversation_keeps_its_record_once_it_has_messages(
    conversations: Conversations, history: MemoryHistory
) -> None:
    conversation_id, info = await conversations.create("ns", {"topic": "billing"})
    question, answer = Message("user", "q", NOW), Message("assistant", "a", NOW)
    await history.append_exchange(SessionKey("ns", conversation_id), question, answer)
    assert await conversations.show("ns", conversation_id) == (info, [question, answer])


async def test_metadata_at_every_limit_is_accepted(conversations: Conversations) -> None:
    metadata = {
        f"{n:02d}".ljust(METADATA_KEY_MAX_CHARS, "k"): "v" * METADATA_VALUE_MAX_CHARS
        for n in range(METADATA_MAX_PAIRS)
    }
    _, info = await conversations.create("ns", metadata)
    assert info.metadata == metadata


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{n}": "v" for n in range(METADATA_MAX_PAIRS + 1)},
        {"k" * (METADATA_KEY_MAX_CHARS + 1): "v"},
        {"k": "v" * (METADATA_VALUE_MAX_CHARS + 1)},
    ],
    ids=["too-many-pairs", "key-too-long", "value-too-long"],
)
async def test_metadata_over_a_limit_is_refused_and_nothing_is_recorded(
    metadata: dict[str, str],
) -> None:
    opened: list[SessionKey] = []

    class Recording(MemoryHistory):
        async def open(self, key: SessionKey, info: SessionInfo) -> None:
            opened.append(key)

    conversations = Conversations(Recording(max_messages=50, ttl_seconds=0), clock=lambda: NOW)
    with pytest.raises(InvalidMetadata) as raised:
        await conversations.create("ns", metadata)
    assert isinstance(raised.value, InvalidInput)  # the HTTP edge answers 400
    assert opened == []


async def test_a_session_started_by_chat_is_a_conversation_as_old_as_its_first_message(
    conversations: Conversations, history: MemoryHistory
) -> None:
    exchange = await chatted(history)
    info, messages = await conversations.show("ns", "chat-1")
    assert info == SessionInfo(EARLIER, {})
    assert messages == exchange


async def test_showing_a_conversation_that_does_not_exist_is_not_found(
    conversations: Conversations,
) -> None:
    with pytest.raises(SessionNotFound):
        await conversations.show("ns", "conv_missing")


async def test_another_namespace_sees_no_conversation(
    conversations: Conversations, history: MemoryHistory
) -> None:
    created, _ = await conversations.create("alice", {})
    await chatted(history, "alice")
    for conversation_id in (created, "chat-1"):
        with pytest.raises(SessionNotFound):
            await conversations.show("bob", conversation_id)
        with pytest.raises(SessionNotFound):
            await conversations.delete("bob", conversation_id)
        await conversations.show("alice", conversation_id)  # still there


async def test_deleting_a_created_conversation_removes_it_and_a_second_delete_is_not_found(
    conversations: Conversations,
) -> None:
    conversation_id, _ = await conversations.create("ns", {"topic": "billing"})
    await conversations.delete("ns", conversation_id)
    with pytest.raises(SessionNotFound):
        await conversations.show("ns", conversation_id)
    with pytest.raises(SessionNotFound):
        await conversations.delete("ns", conversation_id)


async def test_deleting_a_session_started_by_chat_removes_its_messages(
    conversations: Conversations, history: MemoryHistory
) -> None:
    await chatted(history)
    await conversations.delete("ns", "chat-1")
    assert await history.load(SessionKey("ns", "chat-1")) == []
    with pytest.raises(SessionNotFound):
        await conversations.delete("ns", "chat-1")
