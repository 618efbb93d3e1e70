"""AnswerUnstored: a turn answered without storing anything (Chat Completions, store false)."""

from datetime import UTC, datetime

import pytest

from adapters.memory_history import MemoryHistory
from adapters.memory_model_health import MemoryModelHealth
from application.answer_unstored import AnswerUnstored
from application.model_routing import AS_CONFIGURED, ModelRoute, ModelRouter, TurnOptions
from domain.answer import Usage, estimate_usage
from domain.errors import InvalidMessage
from domain.message import Message
from domain.session import SessionKey
from tests.unit.fakes import ScriptedModel, StreamingModel, routed

NS = "ns"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
STORED = [Message("user", "stored q", NOW), Message("assistant", "stored a", NOW)]


async def with_session(history: MemoryHistory) -> SessionKey:
    key = SessionKey(NS, "s")
    question, answer = STORED
    await history.append_exchange(key, question, answer)
    return key


def unstored(history: MemoryHistory, models: ModelRouter) -> AnswerUnstored:
    return AnswerUnstored(history, models, max_message_chars=100, clock=lambda: NOW)


async def test_a_reply_without_a_session_stores_nothing() -> None:
    history, model = MemoryHistory(max_messages=50, ttl_seconds=0), ScriptedModel()
    answer = await unstored(history, routed(model)).reply(NS, None, "hello", AS_CONFIGURED)
    assert (answer.text, answer.model) == ("reply-1: hello", "model-0")
    assert await history.purge() == 0  # not one history exists


async def test_a_reply_in_a_session_shows_its_history_and_leaves_it_unchanged() -> None:
    history, model = MemoryHistory(max_messages=50, ttl_seconds=0), ScriptedModel()
    key = await with_session(history)
    earlier = (Message("user", "earlier q", NOW), Message("assistant", "earlier a", NOW))
    options = TurnOptions(context=earlier)

    await unstored(history, routed(model)).reply(NS, "s", "hello", options)

    assert [m.content for m in model.seen[0].messages] == [
        "stored q",
        "stored a",
        "earlier q",
        "earlier a",
        "hello",
    ]
    assert await history.load(key) == STORED


async def test_a_stream_yields_the_texts_and_stores_nothing() -> None:
    history = MemoryHistory(max_messages=50, ttl_seconds=0)
    key = await with_session(history)
    stream = await unstored(history, routed(StreamingModel())).stream(
        NS, "s", "hello", AS_CONFIGURED
    )
    assert stream.model == "model-0"
    assert [text async for text in stream.texts()] == ["Once", " upon", " a time"]
    assert await history.load(key) == STORED


async def test_a_streams_usage_is_the_providers_count_when_it_sends_one() -> None:
    health = MemoryModelHealth(cooldown_seconds=30, cooldown_failures=3)
    model = StreamingModel("Once", " upon", Usage(40, 2))
    models = ModelRouter([ModelRoute("m", model)], health)
    history = MemoryHistory(max_messages=50, ttl_seconds=0)
    stream = await unstored(history, models).stream(NS, None, "hello", AS_CONFIGURED)

    assert [text async for text in stream.texts()] == ["Once", " upon"]
    assert stream.usage == Usage(40, 2)
    await models.statuses()  # hands the health this process's samples
    assert (await health.statuses(["m"], {}))["m"].tokens_per_char is not None  # calibrated


async def test_a_streams_usage_is_an_estimate_when_the_provider_counts_none() -> None:
    history = MemoryHistory(max_messages=50, ttl_seconds=0)
    models = routed(StreamingModel("Once", " upon"), system_prompt="Be brief.")
    stream = await unstored(history, models).stream(NS, None, "hello", AS_CONFIGURED)
    assert stream.usage is None  # until the texts end
    assert [text async for text in stream.texts()] == ["Once", " upon"]
    assert stream.usage == estimate_usage(["Be brief.", "hello"], "Once upon")


async def test_a_client_that_stops_reading_ends_the_providers_stream() -> None:
    history, model = MemoryHistory(max_messages=50, ttl_seconds=0), StreamingModel()
    stream = await unstored(history, routed(model)).stream(NS, None, "hello", AS_CONFIGURED)
    texts = stream.texts()
    assert await anext(texts) == "Once"
    assert model.closed == 0
    await texts.aclose()
    assert model.closed == 1


@pytest.mark.parametrize("text", ["   ", "x" * 101], ids=["blank", "too-long"])
@pytest.mark.parametrize("call", ["reply", "stream"])
async def test_a_message_that_breaks_the_rules_is_refused_before_any_model_is_asked(
    call: str, text: str
) -> None:
    history, model = MemoryHistory(max_messages=50, ttl_seconds=0), StreamingModel()
    with pytest.raises(InvalidMessage):
        await getattr(unstored(history, routed(model)), call)(NS, None, text, AS_CONFIGURED)
    assert model.calls == 0
