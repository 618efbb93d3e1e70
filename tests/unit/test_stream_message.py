"""Streamed replies through the use cases, on the in-memory store and reply log."""

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.memory_history import MemoryHistory
from adapters.memory_reply_log import MemoryReplyLog
from application.attach_reply import DIED, AttachReply
from application.errors import (
    HistoryUnavailable,
    IdempotencyConflict,
    ModelUnavailable,
    SessionNotFound,
)
from application.model_routing import ModelRoute, ModelRouter
from application.ports import Publication, Published
from application.reply_run import Streamed
from application.request_leases import RequestLeases
from application.stop_reply import StopReply
from application.stream_message import CLIENT_GONE, OnDisconnect, StreamMessage
from domain.answer import Usage
from domain.errors import InvalidInput
from domain.message import Message
from domain.reply_events import DeltaData, SessionData, reply_event
from domain.session import SessionKey
from entrypoints.http.errors import status_of
from tests.unit.fakes import StreamingModel, routed

NS = "ns"
Event = tuple[str, dict[str, Any]]


@dataclass
class World:
    history: MemoryHistory
    log: MemoryReplyLog
    model: StreamingModel
    streams: StreamMessage
    attach: AttachReply
    models: ModelRouter

    async def stored(self, session_id: str) -> list[str]:
        return [m.content for m in await self.history.load(SessionKey(NS, session_id))]


def world(
    model: StreamingModel | None = None,
    *,
    on_disconnect: OnDisconnect = "continue",
    history: MemoryHistory | None = None,
    log: MemoryReplyLog | None = None,
) -> World:
    history = history or MemoryHistory(max_messages=50, ttl_seconds=0)
    log = log or MemoryReplyLog(keep_seconds=60, lease_seconds=0.5)
    attach = AttachReply(log, wait_seconds=0.05)
    model = model or StreamingModel()
    models = routed(ModelRoute("model-0", model, context_tokens=8000))
    streams = StreamMessage(
        history,
        models,
        log,
        max_message_chars=100,
        failure_status=status_of,
        attach=attach,
        on_disconnect=on_disconnect,
        leases=RequestLeases(history, in_flight_seconds=5),
    )
    return World(history, log, model, streams, attach, models)


async def collect(streamed: Streamed | None, limit: int | None = None) -> list[Event]:
    """The events a client reads (keep-alives skipped), up to `limit` of them."""
    assert streamed is not None
    events: list[Event] = []
    async for batch in streamed.events:
        for event in batch:
            events.append((event.name, json.loads(event.data)))
        if limit is not None and len(events) >= limit:
            break
    return events


def text_of(events: list[Event]) -> str:
    return "".join(data["text"] for name, data in events if name == "delta")


async def start(
    w: World, session_id: str = "s", message: str = "hi", key: str | None = None
) -> Streamed:
    return await w.streams.start(NS, session_id, message, key, idle_seconds=5)


async def test_a_reply_streams_in_order_and_is_stored_before_done() -> None:
    w = world(StreamingModel("Once", " upon", " a time", Usage(12, 3)))

    events = await collect(await start(w))

    assert [name for name, _ in events] == ["session", "delta", "delta", "delta", "done"]
    assert events[0][1] == {"session_id": "s"}
    assert events[-1][1] == {
        "session_id": "s",
        "response": "Once upon a time",
        "usage": {"input_tokens": 12, "output_tokens": 3, "source": "provider"},
        "model": "model-0",
    }
    assert await w.stored("s") == ["hi", "Once upon a time"]


async def test_the_providers_usage_calibrates_the_models_estimate() -> None:
    w = world(StreamingModel("Once", " upon", " a time", Usage(12, 3)))
    await collect(await start(w))
    [(_, status)] = await w.models.statuses()
    assert status.tokens_per_char is not None


async def test_usage_is_estimated_when_the_provider_counts_nothing() -> None:
    w = world(StreamingModel("four", " words", " of text"))

    done = (await collect(await start(w)))[-1][1]

    assert done["usage"]["source"] == "estimate"
    assert done["usage"]["output_tokens"] >= 3


async def test_a_failure_before_the_first_text_is_raised_and_nothing_is_stored() -> None:
    w = world()
    w.model.fail_at = 0

    with pytest.raises(ModelUnavailable):
        await start(w)

    assert await w.stored("s") == []
    assert await w.log.latest(SessionKey(NS, "s")) is None


async def test_a_failure_after_the_first_text_ends_with_error_and_stores_nothing() -> None:
    w = world()
    w.model.fail_at = 2

    events = await collect(await start(w))

    assert [name for name, _ in events] == ["session", "delta", "delta", "error"]
    assert events[-1][1]["status_code"] == 502
    assert await w.stored("s") == []


async def test_a_store_failing_at_the_end_ends_with_503_and_keeps_the_history() -> None:
    class FailingAppend(MemoryHistory):
        async def append_exchange(self, *args: Any, **kwargs: Any) -> None:
            raise HistoryUnavailable("the history store is unavailable")

    w = world(history=FailingAppend(max_messages=50, ttl_seconds=0))

    events = await collect(await start(w))

    assert events[-1] == (
        "error",
        {"status_code": 503, "detail": "the history store is unavailable"},
    )
    assert await w.stored("s") == []


async def test_an_empty_stream_is_a_model_failure() -> None:
    w = world(StreamingModel(Usage(1, 0)))

    with pytest.raises(ModelUnavailable, match="empty reply"):
        await start(w)


async def test_a_client_that_hangs_up_does_not_stop_the_reply() -> None:
    w = world()
    w.model.hold_at = 2
    streamed = await start(w)

    assert len(await collect(streamed, limit=2)) >= 2
    streamed.client_gone()
    w.model.release.set()
    await w.streams.drain(5)

    assert await w.stored("s") == ["hi", "Once upon a time"]


async def test_with_cancel_a_client_that_hangs_up_cancels_the_reply() -> None:
    w = world(on_disconnect="cancel")
    w.model.hold_at = 2
    streamed = await start(w)
    await collect(streamed, limit=2)

    streamed.client_gone()
    await w.streams.drain(5)

    assert await w.stored("s") == []
    assert w.model.closed == 1
    followed = await collect(await w.attach.execute(NS, "s", idle_seconds=5))
    assert followed[-1] == ("error", {"status_code": 499, "detail": CLIENT_GONE})


async def test_stop_stores_the_text_so_far_and_ends_with_done_stopped() -> None:
    w = world()
    w.model.hold_at = 2
    streamed = await start(w)
    await asyncio.sleep(0.15)  # the first batch is published

    await StopReply(w.log).execute(NS, "s")
    events = await asyncio.wait_for(collect(streamed), timeout=2)

    assert events[-1][0] == "done"
    assert events[-1][1]["stopped"] is True
    assert events[-1][1]["response"] == text_of(events) == "Once upon"
    assert events[-1][1]["usage"]["source"] == "estimate"
    assert await w.stored("s") == ["hi", "Once upon"]
    assert w.model.closed == 1


async def test_stop_with_nothing_running_is_not_found() -> None:
    w = world()
    await collect(await start(w))
    await w.streams.drain(5)  # its end is published

    with pytest.raises(SessionNotFound):
        await StopReply(w.log).execute(NS, "s")
    with pytest.raises(SessionNotFound):
        await StopReply(w.log).execute(NS, "never")


async def test_re_attaching_with_the_last_id_sends_the_rest_of_the_same_reply() -> None:
    w = world()
    w.model.hold_at = 2
    streamed = await start(w)
    seen = await collect(streamed, limit=2)
    await asyncio.sleep(0.15)  # published
    last_id = f"{streamed.reply_id}-{len(seen) - 1}"

    rest_task = asyncio.create_task(
        collect(await w.attach.execute(NS, "s", last_id, idle_seconds=5))
    )
    w.model.release.set()
    rest = await asyncio.wait_for(rest_task, timeout=2)

    assert [name for name, _ in seen + rest] == ["session", "delta", "delta", "delta", "done"]
    assert text_of(seen) + text_of(rest) == rest[-1][1]["response"] == "Once upon a time"
    assert await w.stored("s") == ["hi", "Once upon a time"]


async def test_re_attaching_without_an_id_sends_the_latest_reply_whole() -> None:
    w = world()
    first = await collect(await start(w))
    await w.streams.drain(5)  # its last batch is published

    again = await collect(await w.attach.execute(NS, " s ", idle_seconds=5))

    assert again == first


async def test_re_attaching_with_the_id_of_the_last_event_has_nothing_to_send() -> None:
    w = world()
    streamed = await start(w)
    events = await collect(streamed)
    await w.streams.drain(5)

    last = f"{streamed.reply_id}-{len(events) - 1}"
    before_last = f"{streamed.reply_id}-{len(events) - 2}"

    assert await w.attach.execute(NS, "s", last, idle_seconds=5) is None
    assert await collect(await w.attach.execute(NS, "s", before_last, idle_seconds=5)) == [
        events[-1]
    ]


async def test_done_reaches_the_client_only_once_a_re_attach_would_get_it_too() -> None:
    class SlowLog(MemoryReplyLog):
        async def publish(self, batch: Sequence[Publication]) -> list[Published]:
            await asyncio.sleep(0.2)  # a store far away
            return await super().publish(batch)

    w = world(StreamingModel("one", " two"), log=SlowLog(keep_seconds=60, lease_seconds=0.5))
    events = await collect(await start(w))

    again = await collect(await w.attach.execute(NS, "s", None, idle_seconds=5))
    assert events[-1][0] == "done"
    assert again == events


async def test_a_re_attach_right_after_the_first_text_finds_the_running_reply() -> None:
    w = world()
    w.model.hold_at = 2
    streamed = await start(w)
    await asyncio.sleep(0.01)  # less than a flush interval

    following = await w.attach.execute(NS, "s", f"{streamed.reply_id}-1", idle_seconds=5)
    w.model.release.set()

    assert [name for name, _ in await collect(following)] == ["delta", "delta", "done"]


async def test_re_attaching_to_nothing_is_not_found_and_a_bad_id_is_refused() -> None:
    w = world()

    with pytest.raises(SessionNotFound):
        await w.attach.execute(NS, "s", idle_seconds=5)
    with pytest.raises(InvalidInput, match="Last-Event-ID"):
        await w.attach.execute(NS, "s", "not-an-id", idle_seconds=5)


async def test_a_reply_whose_producer_died_ends_with_an_error() -> None:
    w = world()
    key = SessionKey(NS, "s")
    events = [reply_event(0, SessionData("s")), reply_event(1, DeltaData("Once"))]
    await w.log.publish([Publication(key, "0123456789abcdef", events, -1)])  # then nothing

    followed = await asyncio.wait_for(
        collect(await w.attach.execute(NS, "s", idle_seconds=5)), timeout=3
    )

    assert followed[:2] == [("session", {"session_id": "s"}), ("delta", {"text": "Once"})]
    assert followed[-1] == ("error", {"status_code": 503, "detail": DIED})


async def test_a_repeated_request_is_replayed_without_asking_the_model() -> None:
    w = world()
    first = await collect(await start(w, key="k1"))

    again = await collect(await start(w, key="k1"))

    assert w.model.calls == 1
    assert text_of(again) == first[-1][1]["response"] == again[-1][1]["response"]
    assert await w.stored("s") == ["hi", "Once upon a time"]


async def test_a_repeat_of_a_running_request_follows_it() -> None:
    w = world()
    w.model.hold_at = 2
    first = await start(w, key="k1")
    await asyncio.sleep(0.15)  # published

    repeat = asyncio.create_task(collect(await start(w, key="k1")))
    w.model.release.set()
    whole = await collect(first)

    assert await asyncio.wait_for(repeat, timeout=2) == whole
    assert w.model.calls == 1


async def test_the_same_key_with_another_message_is_a_conflict() -> None:
    w = world()
    await collect(await start(w, key="k1"))

    with pytest.raises(IdempotencyConflict):
        await start(w, message="something else", key="k1")


async def test_a_failed_request_frees_its_key() -> None:
    w = world()
    w.model.fail_at = 1
    await collect(await start(w, key="k1"))

    w.model.fail_at = None
    events = await collect(await start(w, key="k1"))

    assert events[-1][0] == "done"
    assert w.model.calls == 2


async def test_concurrent_streams_on_one_session_each_store_their_exchange() -> None:
    w = world()

    streams = [await start(w, message=f"q{n}") for n in range(5)]
    await asyncio.gather(*(collect(streamed) for streamed in streams))

    stored = await w.stored("s")
    assert sorted(stored[0::2]) == [f"q{n}" for n in range(5)]
    assert stored[1::2] == ["Once upon a time"] * 5


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=12))
def test_deltas_done_and_the_stored_reply_agree_for_any_chunking(chunks: list[str]) -> None:
    async def check() -> None:
        w = world(StreamingModel(*chunks))
        events = await collect(await start(w))
        assert text_of(events) == events[-1][1]["response"] == "".join(chunks)
        stored = (await w.history.load(SessionKey(NS, "s")))[-1]
        assert stored == Message("assistant", "".join(chunks), stored.created_at, "model-0")

    asyncio.run(check())
