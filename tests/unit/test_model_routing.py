"""ModelRouter: which model answers, what each is sent, and how a failing one is skipped.

In-memory health on a fake clock; fakes that behave as providers do: they fail, refuse a
prompt over their window with the counts a provider states, and report their usage.
"""

import asyncio
import contextvars
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.memory_model_health import MemoryModelHealth
from application.errors import (
    ContextTooLong,
    ModelNotFound,
    ModelRejected,
    ModelTimeout,
    ModelUnavailable,
)
from application.model_routing import ModelRoute, ModelRouter, TurnOptions
from application.ports import TokenSample
from domain.answer import Answer, Usage
from domain.context_budget import MESSAGE_TOKENS, prompt_size
from domain.conversation import Conversation, prompt_texts
from domain.errors import InvalidMessage
from domain.message import Message

NOW = datetime(2026, 11, 30, tzinfo=UTC)
COOLDOWN = 30.0


def stub_tokens(text: str) -> int:
    """A tokenizer unlike chars/4: words and punctuation, as a real one roughly counts."""
    return len(re.findall(r"\w+|[^\w\s]", text))


class Model:
    """Answers `<name>: <question>`, or raises each of `failures` in turn first. With a
    window, a prompt over it is refused as a provider does, with the counts it states."""

    def __init__(self, name: str, *failures: Exception, window: int = 0, reserve: int = 0):
        self.name = name
        self.failures = list(failures)
        self.window = window
        self.reserve = reserve  # the max_tokens it is sent
        self.seen: list[Conversation] = []
        self.largest = 0

    def tokens(self, conversation: Conversation) -> int:
        return sum(stub_tokens(t) + MESSAGE_TOKENS for t in prompt_texts(conversation))

    def _answer(self, conversation: Conversation) -> str:
        self.seen.append(conversation)
        tokens = self.tokens(conversation)
        if self.window and tokens + self.reserve > self.window:
            raise ContextTooLong(
                "prompt is too long", input_tokens=tokens, limit_tokens=self.window
            )
        self.largest = max(self.largest, tokens)
        if self.failures:
            raise self.failures.pop(0)
        return f"{self.name}: {conversation.last_user_message}"

    async def reply(self, conversation: Conversation) -> Answer:
        text = self._answer(conversation)
        return Answer(text, Usage(self.tokens(conversation), 3))

    async def stream(self, conversation: Conversation) -> AsyncIterator[str | Usage]:
        text = self._answer(conversation)
        for word in text.split(" "):
            yield word + " "
        yield Usage(self.tokens(conversation), 3)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def router(*routes: ModelRoute | Model, clock: Clock | None = None, **kw: object) -> ModelRouter:
    clock = clock or Clock()
    health = MemoryModelHealth(cooldown_seconds=COOLDOWN, cooldown_failures=3, clock=clock)
    built = [
        r if isinstance(r, ModelRoute) else ModelRoute(r.name, r, call_seconds=5) for r in routes
    ]
    return ModelRouter(built, health, clock=clock, **kw)  # type: ignore[arg-type]


def q(text: str = "hello") -> Message:
    return Message("user", text, NOW)


def turns(count: int, words: int = 20) -> list[Message]:
    """count messages, user first, each `words` words long."""
    text = " ".join(["word"] * words)
    return [
        Message("user" if n % 2 == 0 else "assistant", f"{n} {text}", NOW) for n in range(count)
    ]


def down() -> ModelUnavailable:
    return ModelUnavailable("the test provider failed (HTTP 503)")


async def test_the_primary_answers_and_names_itself() -> None:
    primary, backup = Model("primary"), Model("backup")
    answer = await router(primary, backup).reply([], q())
    assert (answer.text, answer.model) == ("primary: hello", "primary")
    assert answer.usage == Usage(primary.tokens(primary.seen[0]), 3)
    assert backup.seen == []


@pytest.mark.parametrize(
    "failure",
    [down(), ModelTimeout("timed out"), ModelUnavailable("unusable answer")],
    ids=["5xx", "timeout", "unusable"],
)
async def test_a_failing_model_hands_the_request_to_the_next(failure: Exception) -> None:
    primary, backup = Model("primary", failure), Model("backup")
    answer = await router(primary, backup).reply([], q())
    assert answer.model == "backup"
    assert len(primary.seen) == len(backup.seen) == 1


async def test_a_rejected_request_is_not_handed_on() -> None:
    primary, backup = Model("primary", ModelRejected("HTTP 400: bad request")), Model("backup")
    with pytest.raises(ModelRejected):
        await router(primary, backup).reply([], q())
    assert backup.seen == []


async def test_when_every_model_fails_the_client_hears_of_each() -> None:
    one, two = Model("one", down()), Model("two", ModelTimeout("two timed out"))
    with pytest.raises(ModelUnavailable, match=r"every model failed: one: .*; two: two timed"):
        await router(one, two).reply([], q())


async def test_when_every_model_times_out_it_is_a_timeout() -> None:
    one, two = Model("one", ModelTimeout("a")), Model("two", ModelTimeout("b"))
    with pytest.raises(ModelTimeout, match="every model timed out"):
        await router(one, two).reply([], q())


async def test_a_single_model_failure_is_reported_as_it_was() -> None:
    failure = down()
    with pytest.raises(ModelUnavailable) as raised:
        await router(Model("only", failure)).reply([], q())
    assert raised.value is failure


async def test_a_model_that_keeps_failing_cools_down_then_one_probe_lets_it_back() -> None:
    clock = Clock()
    primary, backup = Model("primary", down(), down(), down()), Model("backup")
    models = router(primary, backup, clock=clock)
    for _ in range(3):
        assert (await models.reply([], q())).model == "backup"
    assert len(primary.seen) == 3

    for _ in range(5):  # cooling down: the primary costs nothing
        assert (await models.reply([], q())).model == "backup"
    assert len(primary.seen) == 3
    assert dict(await models.statuses())["primary"].cooling_seconds == COOLDOWN

    clock.now += COOLDOWN
    assert (await models.reply([], q())).model == "primary"  # the probe, and it recovered
    assert (await models.reply([], q())).model == "primary"
    status = dict(await models.statuses())["primary"]
    assert (status.cooling_seconds, status.probing, status.failures) == (0, False, 0)


async def test_a_failed_probe_cools_the_model_down_again() -> None:
    clock = Clock()
    primary, backup = Model("primary", *[down()] * 4), Model("backup")
    models = router(primary, backup, clock=clock)
    for _ in range(3):
        await models.reply([], q())
    clock.now += COOLDOWN
    assert (await models.reply([], q())).model == "backup"
    assert len(primary.seen) == 4
    await models.reply([], q())
    assert len(primary.seen) == 4
    assert dict(await models.statuses())["primary"].cooling_seconds == COOLDOWN


async def test_only_one_request_at_a_time_probes() -> None:
    clock = Clock()
    gate = asyncio.Event()

    class Slow(Model):
        async def reply(self, conversation: Conversation) -> Answer:
            await gate.wait()
            return await super().reply(conversation)

    primary, backup = Slow("primary", down(), down(), down()), Model("backup")
    models = router(primary, backup, clock=clock)
    gate.set()
    for _ in range(3):
        await models.reply([], q())
    gate.clear()
    clock.now += COOLDOWN
    await models.statuses()
    probe = asyncio.create_task(models.reply([], q()))
    await asyncio.sleep(0)
    others = [await models.reply([], q()) for _ in range(3)]
    assert {a.model for a in others} == {"backup"}
    gate.set()
    assert (await probe).model == "primary"
    assert len(primary.seen) == 4


async def test_a_cooling_model_is_still_asked_when_no_other_answers() -> None:
    clock = Clock()
    primary, backup = Model("primary", *[down()] * 4), Model("backup", *[down()] * 5)
    models = router(primary, backup, clock=clock)
    for _ in range(3):
        with pytest.raises(ModelUnavailable):
            await models.reply([], q())
    assert dict(await models.statuses())["primary"].cooling_seconds == COOLDOWN
    # Both cool down: each is still asked, the cooling ones last, and an answer gets through.
    with pytest.raises(ModelUnavailable, match="every model failed"):
        await models.reply([], q())
    answer = await models.reply([], q())
    assert answer.model == "primary"
    assert (len(primary.seen), len(backup.seen)) == (5, 4)


async def test_a_lone_model_is_tried_by_every_request_while_it_cools_down() -> None:
    only = Model("only", *[down()] * 5)
    models = router(only)
    for _ in range(5):
        with pytest.raises(ModelUnavailable):
            await models.reply([], q())
    assert (await models.reply([], q())).model == "only"
    assert len(only.seen) == 6


async def test_a_stream_is_handed_on_before_its_first_text_only() -> None:
    primary, backup = Model("primary", down()), Model("backup")
    opened = await router(primary, backup).stream([], q())
    assert (opened.model, opened.first) == ("backup", "backup: ")
    rest = [item async for item in opened.rest]
    assert rest[:-1] == ["hello "]


async def test_a_stream_that_fails_after_its_first_text_is_not_handed_on() -> None:
    class Breaks(Model):
        async def stream(self, conversation: Conversation) -> AsyncIterator[str | Usage]:
            yield "partial"
            raise down()

    backup = Model("backup")
    opened = await router(Breaks("primary"), backup).stream([], q())
    assert opened.model == "primary"
    with pytest.raises(ModelUnavailable):
        async for _ in opened.rest:
            pass
    assert backup.seen == []


async def test_a_window_gets_the_newest_turns_that_fit_starting_on_a_user_turn() -> None:
    small = Model("small", window=300, reserve=50)
    route = ModelRoute("small", small, context_tokens=300, max_tokens=50)
    history = turns(40)
    answer = await router(route, system_prompt="Be brief.").reply(history, q("new"))
    sent = small.seen[-1]
    assert answer.model == "small"
    assert sent.system_prompt == "Be brief."
    assert sent.messages[0].role == "user"
    assert sent.messages[-1].content == "new"
    assert 2 < len(sent.messages) < len(history)
    assert [m.content for m in sent.messages[:-1]] == [
        m.content for m in history[-(len(sent.messages) - 1) :]
    ]


async def test_a_context_refusal_is_retried_trimmed_to_the_providers_count() -> None:
    # Its window is unknown to the config: the provider's refusal states it.
    small, backup = Model("small", window=400, reserve=50), Model("backup")
    models = router(ModelRoute("small", small, max_tokens=50), backup)
    answer = await models.reply(turns(60), q())
    assert answer.model == "small"
    assert len(small.seen) == 2
    assert small.tokens(small.seen[1]) <= 400
    # What it said is remembered: the next turn fits at once.
    await models.reply(turns(60), q())
    assert len(small.seen) == 3


async def test_a_second_context_refusal_hands_the_request_on() -> None:
    refusal = ContextTooLong("the prompt is too long")  # no counts stated: trimmed to half
    stubborn, backup = Model("stubborn", refusal, refusal), Model("backup")
    models = router(stubborn, backup)
    answer = await models.reply(turns(10), q())
    assert answer.model == "backup"
    assert [len(sent.messages) for sent in stubborn.seen] == [11, 5]
    status = dict(await models.statuses())["stubborn"]
    assert status.failures == 0  # the request's size, not the model's health


async def test_a_message_no_model_could_take_is_refused_before_any_is_asked() -> None:
    small = ModelRoute("small", Model("small"), context_tokens=600, max_tokens=100)
    smaller = ModelRoute("smaller", Model("smaller"), context_tokens=300, max_tokens=100)
    models = router(small, smaller)
    models.check_fits("x" * 1000)  # fits the first
    with pytest.raises(InvalidMessage, match=r"too long for every configured model.*room for \d+"):
        models.check_fits("x" * 3000)


async def test_a_model_of_unknown_window_takes_any_message() -> None:
    router(ModelRoute("small", Model("small"), context_tokens=300), Model("any")).check_fits(
        "x" * 100_000
    )


async def test_a_message_too_long_for_the_primary_goes_to_a_model_it_fits() -> None:
    small = Model("small")
    big = Model("big")
    models = router(
        ModelRoute("small", small, context_tokens=300, max_tokens=100),
        ModelRoute("big", big, context_tokens=100_000, max_tokens=100),
    )
    answer = await models.reply([], q("x " * 400))
    assert answer.model == "big"
    assert small.seen == []


async def test_usage_reports_calibrate_the_estimate_shared_through_the_health() -> None:
    clock = Clock()
    health = MemoryModelHealth(cooldown_seconds=COOLDOWN, cooldown_failures=3, clock=clock)
    model = Model("m")
    route = ModelRoute("m", model, context_tokens=100_000, max_tokens=100)
    worker_a = ModelRouter([route], health, clock=clock)
    worker_b = ModelRouter([route], health, clock=clock)
    history = turns(20, words=50)
    for _ in range(5):
        await worker_a.reply(history, q())
    await worker_a.statuses()  # sends its samples
    learnt = dict(await worker_b.statuses())["m"].tokens_per_char
    chars, messages = prompt_size(model.seen[-1])
    real = (model.tokens(model.seen[-1]) - MESSAGE_TOKENS * messages) / chars
    assert learnt == pytest.approx(real, rel=0.01)


async def test_closing_hands_the_store_the_samples_not_yet_sent() -> None:
    clock = Clock()
    health = MemoryModelHealth(cooldown_seconds=COOLDOWN, cooldown_failures=3, clock=clock)
    model = Model("m")
    worker = ModelRouter([ModelRoute("m", model)], health, clock=clock)
    await worker.statuses()
    await worker.reply(turns(4), q())  # a usage report, not yet sent: the view is fresh
    assert (await health.statuses(["m"], {}))["m"].tokens_per_char is None
    await worker.close()
    assert (await health.statuses(["m"], {}))["m"].tokens_per_char is not None


async def test_a_process_idle_for_a_while_refreshes_its_view_before_it_asks() -> None:
    clock = Clock()
    health = MemoryModelHealth(cooldown_seconds=COOLDOWN, cooldown_failures=3, clock=clock)
    primary, backup = Model("primary", *[down()] * 3), Model("backup")
    routes = [ModelRoute("primary", primary), ModelRoute("backup", backup)]
    busy, idle = (ModelRouter(routes, health, clock=clock) for _ in range(2))
    await idle.statuses()  # its view: every model up
    for _ in range(3):
        await busy.reply([], q())
    clock.now += 11  # longer than a view stays usable, shorter than the cooldown

    assert (await idle.reply([], q())).model == "backup"
    assert len(primary.seen) == 3


async def test_its_own_usage_reports_calibrate_a_process_before_the_shared_rate_arrives() -> None:
    model = Model("m")
    models = router(ModelRoute("m", model, context_tokens=1000, max_tokens=100))
    await models.statuses()
    long = "word " * 600  # 3,000 characters, 600 tokens to the model
    with pytest.raises(InvalidMessage):  # by the first guess, a third of a token a character
        models.check_fits(long)
    await models.reply([], q("word " * 100))
    models.check_fits(long)


async def test_a_lone_model_of_unknown_window_costs_the_store_nothing_per_request() -> None:
    class Counting(MemoryModelHealth):
        reads = 0

        async def statuses(self, names: Sequence[str], samples: Mapping[str, TokenSample]) -> Any:
            Counting.reads += 1
            return await super().statuses(names, samples)

    clock = Clock()
    health = Counting(cooldown_seconds=COOLDOWN, cooldown_failures=3, clock=clock)
    lone = ModelRouter([ModelRoute("m", Model("m"))], health, clock=clock)
    windowed = ModelRouter([ModelRoute("w", Model("w"), context_tokens=8000)], health, clock=clock)
    for _ in range(3):
        clock.now += 2
        await lone.reply([], q())
    assert Counting.reads == 0
    for _ in range(3):
        clock.now += 2
        await windowed.reply([], q())
        await asyncio.sleep(0)
    assert Counting.reads == 3


# --- a turn's options (OpenAI's API): one named model, instructions, earlier messages ---------


@pytest.mark.parametrize("call", ["reply", "stream"])
async def test_a_named_model_alone_is_asked_and_its_failure_reaches_the_caller(call: str) -> None:
    failure = down()
    primary, backup = Model("primary"), Model("backup", failure)
    models = router(primary, backup)
    with pytest.raises(ModelUnavailable) as raised:
        await getattr(models, call)([], q(), TurnOptions(model="backup"))
    assert raised.value is failure
    assert (len(primary.seen), len(backup.seen)) == (0, 1)


async def test_a_named_model_answers_in_place_of_the_first() -> None:
    primary, backup = Model("primary"), Model("backup")
    answer = await router(primary, backup).reply([], q(), TurnOptions(model="backup"))
    assert answer.model == "backup"
    assert primary.seen == []


@pytest.mark.parametrize("call", ["reply", "stream"])
async def test_an_unknown_model_name_is_refused_naming_the_configured_ones(call: str) -> None:
    primary, backup = Model("primary"), Model("backup")
    with pytest.raises(ModelNotFound, match=r"'gpt-9'.*primary, backup"):
        await getattr(router(primary, backup), call)([], q(), TurnOptions(model="gpt-9"))
    assert primary.seen == backup.seen == []


def test_check_fits_refuses_an_unknown_model_name_too() -> None:
    models = router(Model("primary"), Model("backup"))
    with pytest.raises(ModelNotFound, match=r"'gpt-9'.*primary, backup"):
        models.check_fits("hello", TurnOptions(model="gpt-9"))


async def test_instructions_follow_the_system_prompt_for_their_turn_only() -> None:
    model = Model("m")
    models = router(model, system_prompt="Be brief.")
    await models.reply([], q(), TurnOptions(instructions="Answer in French."))
    await models.reply([], q())
    assert [sent.system_prompt for sent in model.seen] == [
        "Be brief.\n\nAnswer in French.",
        "Be brief.",
    ]


async def test_instructions_alone_are_the_system_prompt_when_none_is_configured() -> None:
    model = Model("m")
    await router(model).reply([], q(), TurnOptions(instructions="Answer in French."))
    assert model.seen[0].system_prompt == "Answer in French."


@pytest.mark.parametrize("call", ["reply", "stream"])
async def test_context_messages_come_after_the_history_and_before_the_question(
    call: str,
) -> None:
    model = Model("m")
    history = [Message("user", "stored q", NOW), Message("assistant", "stored a", NOW)]
    context = (Message("user", "earlier q", NOW), Message("assistant", "earlier a", NOW))
    await getattr(router(model), call)(history, q("new"), TurnOptions(context=context))
    assert [m.content for m in model.seen[0].messages] == [
        "stored q",
        "stored a",
        "earlier q",
        "earlier a",
        "new",
    ]


async def test_check_fits_counts_the_instructions() -> None:
    route = ModelRoute("small", Model("small"), context_tokens=600, max_tokens=100)
    models = router(route, system_prompt="Be brief.")
    models.check_fits("x" * 1000)
    models.check_fits("x" * 1000, TurnOptions(instructions="Answer in French."))
    with pytest.raises(InvalidMessage, match="too long for every configured model"):
        models.check_fits("x" * 1000, TurnOptions(instructions="y" * 1000))


def test_names_lists_the_configured_models_in_order() -> None:
    models = router(Model("primary"), Model("backup"), Model("last"))
    assert models.names == ["primary", "backup", "last"]
    models.names.append("mutated")
    assert models.names == ["primary", "backup", "last"]


async def test_the_shared_refresh_runs_outside_the_request_that_started_it() -> None:
    """Its log lines and its store calls are no one request's (request id, trace)."""
    served: contextvars.ContextVar[str] = contextvars.ContextVar("served", default="none")
    seen = []

    class Watched(MemoryModelHealth):
        async def statuses(self, *args: Any, **kwargs: Any) -> Any:
            seen.append(served.get())
            return await super().statuses(*args, **kwargs)

    clock = Clock()
    health = Watched(cooldown_seconds=COOLDOWN, cooldown_failures=3, clock=clock)
    routes = [ModelRoute(m.name, m) for m in (Model("primary"), Model("backup"))]
    models = ModelRouter(routes, health, clock=clock)
    served.set("request-1")
    await models.reply([], q())
    await asyncio.sleep(0)
    assert seen == ["none"]
