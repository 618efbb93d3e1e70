"""What the use cases tell the telemetry: each model call and how it ended, its cost, each
hand-over to another model, each stream's end, each repeat answered from its receipt."""

import asyncio

import pytest

from adapters.memory_history import MemoryHistory
from adapters.memory_reply_log import MemoryReplyLog
from adapters.memory_telemetry import MemoryTelemetry
from application.answer_unstored import AnswerUnstored
from application.attach_reply import AttachReply
from application.errors import ContextTooLong, ModelTimeout, ModelUnavailable
from application.model_routing import AS_CONFIGURED, ModelRoute
from application.request_leases import RequestLeases
from application.send_message import SendMessage
from application.stop_reply import StopReply
from application.stream_message import OnDisconnect, StreamMessage
from application.telemetry import ModelCall
from domain.answer import Usage
from entrypoints.http.errors import status_of
from tests.unit.fakes import StreamingModel, routed
from tests.unit.test_model_routing import Clock, Model, down, q, router

pytestmark = pytest.mark.unit

NS = "ns"


async def test_a_reply_is_one_call_timed_on_the_routers_clock_with_its_cost() -> None:
    clock, seen = Clock(), MemoryTelemetry()

    class Slow(Model):
        async def reply(self, conversation):  # type: ignore[no-untyped-def]
            clock.now += 1.5
            return await super().reply(conversation)

    answer = await router(Slow("primary"), clock=clock, telemetry=seen).reply([], q())

    assert seen.calls == [ModelCall("primary", "ok", 1.5, None, answer.usage)]
    assert answer.usage is not None
    assert answer.usage.source == "provider"
    assert seen.fallbacks == []


@pytest.mark.parametrize(
    ("failure", "outcome"),
    [
        (down(), "error"),
        (ModelTimeout("timed out"), "timeout"),
        (ContextTooLong("too long"), "context_exceeded"),
    ],
)
async def test_a_failed_call_and_the_hand_over_name_the_failure(
    failure: Exception, outcome: str
) -> None:
    seen = MemoryTelemetry()
    # A context refusal is tried once more, trimmed; a second one hands the request on.
    failures = [failure, failure] if isinstance(failure, ContextTooLong) else [failure]
    models = router(Model("primary", *failures), Model("backup"), telemetry=seen)

    await models.reply([], q())

    assert [(c.model, c.outcome) for c in seen.calls][-2:] == [
        ("primary", outcome),
        ("backup", "ok"),
    ]
    assert seen.fallbacks == [("primary", "backup", outcome)]
    assert [call.usage is not None for call in seen.calls][-2:] == [False, True]


async def test_a_primary_cooling_down_is_a_hand_over_for_cooldown() -> None:
    seen = MemoryTelemetry()
    models = router(Model("primary", down(), down(), down()), Model("backup"), telemetry=seen)
    for _ in range(3):
        await models.reply([], q())
    seen.fallbacks.clear()

    await models.reply([], q())

    assert seen.fallbacks == [("primary", "backup", "cooldown")]


async def test_a_stream_is_one_call_ending_with_its_last_text_and_its_first_token_time() -> None:
    clock, seen = Clock(), MemoryTelemetry()

    class Paced(Model):
        async def stream(self, conversation):  # type: ignore[no-untyped-def]
            async for item in super().stream(conversation):
                clock.now += 0.25
                yield item

    opened = await router(Paced("primary"), clock=clock, telemetry=seen).stream([], q())
    assert seen.calls == []  # still running
    rest = [item async for item in opened.rest]
    clock.now += 5  # its client took a while: the call had ended
    usage = opened.cost(rest[-1] if isinstance(rest[-1], Usage) else None, "primary: hello ")
    await opened.rest.aclose()

    [call] = seen.calls
    assert (call.model, call.outcome, call.first_token_seconds) == ("primary", "ok", 0.25)
    assert call.seconds == 0.75  # two texts and the usage, 0.25 s apart
    assert call.usage == usage


async def test_a_stream_broken_off_or_closed_early_ends_its_call_so() -> None:
    seen = MemoryTelemetry()
    model = StreamingModel("Once", " upon", " a time")
    model.fail_at = 2
    models = router(ModelRoute("primary", model), telemetry=seen)

    opened = await models.stream([], q())
    with pytest.raises(ModelUnavailable):
        async for _ in opened.rest:
            pass
    await opened.rest.aclose()  # as every consumer does, however the stream ended
    opened = await models.stream([], q())
    await opened.rest.aclose()

    assert [c.outcome for c in seen.calls] == ["error", "cancelled"]
    assert all(c.first_token_seconds is not None for c in seen.calls)


def streams(
    seen: MemoryTelemetry, model: StreamingModel, on_disconnect: OnDisconnect = "continue"
) -> tuple[StreamMessage, MemoryReplyLog]:
    history = MemoryHistory(max_messages=50, ttl_seconds=0)
    log = MemoryReplyLog(keep_seconds=60, lease_seconds=0.5)
    use_case = StreamMessage(
        history,
        routed(ModelRoute("model-0", model)),
        log,
        max_message_chars=100,
        failure_status=status_of,
        attach=AttachReply(log, wait_seconds=0.05),
        on_disconnect=on_disconnect,
        leases=RequestLeases(history, in_flight_seconds=5, telemetry=seen),
        telemetry=seen,
    )
    return use_case, log


async def read_all(use_case: StreamMessage, key: str | None = None) -> None:
    streamed = await use_case.start(NS, "s", "hi", key, idle_seconds=5)
    async for _ in streamed.events:
        pass


async def test_stream_outcomes_done_error_stopped_and_client_gone() -> None:
    seen = MemoryTelemetry()

    await read_all(streams(seen, StreamingModel())[0])
    assert (seen.stream_outcomes, seen.streams_active) == (["done"], 0)

    failing = StreamingModel()
    failing.fail_at = 2
    await read_all(streams(seen, failing)[0])
    assert seen.stream_outcomes[-1] == "error"

    held = StreamingModel()
    held.hold_at = 2
    use_case, log = streams(seen, held)
    streamed = await use_case.start(NS, "s", "hi", idle_seconds=5)
    assert seen.streams_active == 1
    await asyncio.sleep(0.15)  # the first batch is published: the stop finds the reply
    await StopReply(log).execute(NS, "s")
    async for _ in streamed.events:
        pass
    assert seen.stream_outcomes[-1] == "stopped"

    held = StreamingModel()
    held.hold_at = 2
    use_case, _ = streams(seen, held, on_disconnect="cancel")
    streamed = await use_case.start(NS, "s", "hi", idle_seconds=5)
    streamed.client_gone()
    await use_case.drain(5)
    assert (seen.stream_outcomes[-1], seen.streams_active) == ("client_gone", 0)


async def test_a_repeated_request_is_a_replay_streamed_or_not() -> None:
    seen = MemoryTelemetry()
    use_case, _ = streams(seen, StreamingModel())
    await read_all(use_case, key="k-1")
    await read_all(use_case, key="k-1")
    assert seen.replays == 1

    history = MemoryHistory(max_messages=50, ttl_seconds=0)
    send = SendMessage(
        history,
        routed(StreamingModel()),
        max_message_chars=100,
        leases=RequestLeases(history, in_flight_seconds=5, telemetry=seen),
    )
    first = await send.execute(NS, "s", "hi", "k-2")
    assert await send.execute(NS, "s", "hi", "k-2") == first
    assert seen.replays == 2


async def test_an_unstored_stream_read_to_its_end_is_done_and_one_left_is_client_gone() -> None:
    seen = MemoryTelemetry()
    history = MemoryHistory(max_messages=50, ttl_seconds=0)
    answers = AnswerUnstored(
        history, routed(StreamingModel()), max_message_chars=100, telemetry=seen
    )

    stream = await answers.stream(NS, None, "hi", AS_CONFIGURED)
    assert "".join([t async for t in stream.texts()]) == "Once upon a time"
    assert seen.stream_outcomes == ["done"]

    stream = await answers.stream(NS, None, "hi", AS_CONFIGURED)
    texts = stream.texts()
    await anext(texts)
    await texts.aclose()
    assert (seen.stream_outcomes, seen.streams_active) == (["done", "client_gone"], 0)
