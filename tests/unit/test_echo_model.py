"""The offline default model: no network, same answer for the same conversation."""

import asyncio
from datetime import UTC, datetime

from adapters.llm.echo import EchoModel
from application.ports import LanguageModel
from domain.conversation import Conversation
from domain.message import Message, Role

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _conversation(*texts: str) -> Conversation:
    roles: tuple[Role, Role] = ("user", "assistant")
    return Conversation(
        "Be brief.", tuple(Message(roles[i % 2], text, NOW) for i, text in enumerate(texts))
    )


async def test_repeats_the_latest_user_message() -> None:
    reply = (
        await EchoModel().reply(_conversation("first question", "an answer", "café ☕ 42?"))
    ).text

    assert "café ☕ 42?" in reply
    assert "first question" not in reply


async def test_says_it_is_the_offline_echo_model() -> None:
    reply = (await EchoModel().reply(_conversation("hello"))).text.lower()

    assert "echo" in reply
    assert "offline" in reply


async def test_is_deterministic() -> None:
    conversation = _conversation("q1", "a1", "q2")

    replies = {(await EchoModel().reply(conversation)).text for _ in range(3)}

    assert len(replies) == 1


async def test_counts_the_earlier_messages_of_the_session() -> None:
    model = EchoModel()

    assert await model.reply(_conversation("q")) != await model.reply(_conversation("x", "y", "q"))


def test_is_a_language_model() -> None:
    assert isinstance(EchoModel(), LanguageModel)


async def test_streams_the_same_reply_word_by_word_at_its_pace() -> None:
    conversation = _conversation("tell me, echo")
    model = EchoModel(word_seconds=0.01)
    loop = asyncio.get_running_loop()

    started = loop.time()
    deltas = [delta async for delta in model.stream(conversation)]
    took = loop.time() - started

    assert "".join(map(str, deltas)) == (await model.reply(conversation)).text
    assert len(deltas) > 10
    assert all(isinstance(d, str) and d for d in deltas)
    assert took >= 0.01 * (len(deltas) - 1)
