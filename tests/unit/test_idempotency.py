"""SendMessage with an Idempotency-Key: a retried request is answered once, stored once."""

import asyncio
import hashlib
import time
from datetime import UTC, datetime

import msgspec
import pytest

from adapters.memory_history import MemoryHistory
from application.errors import IdempotencyConflict, ModelUnavailable
from application.model_routing import AS_CONFIGURED, TurnOptions
from application.request_leases import RequestLeases
from application.send_message import SendMessage
from domain.errors import InvalidInput
from domain.idempotency import RECEIPT_TTL_SECONDS, Receipt, fingerprint
from domain.message import Message
from domain.session import SessionKey
from tests.unit.fakes import ScriptedModel, routed, unavailable


class Monotonic:
    """A clock that moves only when told to, or when a lease sleeps on it."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> Monotonic:
    return Monotonic()


@pytest.fixture
def history(clock: Monotonic) -> MemoryHistory:
    return MemoryHistory(max_messages=50, ttl_seconds=0, monotonic=clock)


@pytest.fixture
def model() -> ScriptedModel:
    return ScriptedModel()


def sender(
    history: MemoryHistory,
    model: ScriptedModel,
    in_flight: float = 5.0,
    lease: float = 10.0,
    clock: Monotonic | None = None,
) -> SendMessage:
    leases = RequestLeases(
        history,
        in_flight_seconds=in_flight,
        lease_seconds=lease,
        sleep=clock.sleep if clock else asyncio.sleep,
        monotonic=clock or time.monotonic,
    )
    return SendMessage(history, routed(model), max_message_chars=100, leases=leases)


@pytest.fixture
def send(history: MemoryHistory, model: ScriptedModel) -> SendMessage:
    return sender(history, model)


async def stored(history: MemoryHistory, session_id: str, namespace: str = "ns") -> list[str]:
    return [m.content for m in await history.load(SessionKey(namespace, session_id))]


async def test_a_repeat_gets_the_first_reply_without_asking_or_storing_again(
    send: SendMessage, history: MemoryHistory, model: ScriptedModel
) -> None:
    first = await send.execute("ns", "s", "hello", "key-1")
    repeat = await send.execute("ns", "s", "hello", "key-1")

    assert repeat == first
    assert len(model.seen) == 1
    assert await stored(history, "s") == ["hello", "reply-1: hello"]


async def test_a_repeat_of_a_request_that_started_a_session_names_that_session(
    send: SendMessage, model: ScriptedModel
) -> None:
    first = await send.execute("ns", None, "hello", "key-1")

    assert await send.execute("ns", "  ", "hello", "key-1") == first  # blank is "no id" too
    assert len(model.seen) == 1


@pytest.mark.parametrize(
    ("session_id", "text"), [("s", "something else"), ("other", "hello"), (None, "hello")]
)
async def test_the_same_key_for_a_different_request_is_a_conflict_that_changes_nothing(
    send: SendMessage,
    history: MemoryHistory,
    model: ScriptedModel,
    session_id: str | None,
    text: str,
) -> None:
    await send.execute("ns", "s", "hello", "key-1")

    with pytest.raises(IdempotencyConflict, match="different request"):
        await send.execute("ns", session_id, text, "key-1")

    assert len(model.seen) == 1
    assert await stored(history, "s") == ["hello", "reply-1: hello"]
    assert await stored(history, "other") == []


async def test_keys_are_per_namespace_and_without_a_key_nothing_is_deduplicated(
    send: SendMessage, history: MemoryHistory, model: ScriptedModel
) -> None:
    await send.execute("alice", "s", "hello", "key-1")
    await send.execute("bob", "s", "hello", "key-1")
    await send.execute("alice", "s", "hello")

    assert len(model.seen) == 3
    assert await stored(history, "s", "bob") == ["hello", "reply-2: hello"]
    assert len(await stored(history, "s", "alice")) == 4


async def test_a_failed_request_leaves_no_receipt_so_its_repeat_runs_again(
    send: SendMessage, history: MemoryHistory, model: ScriptedModel
) -> None:
    model.failure = unavailable()
    with pytest.raises(ModelUnavailable):
        await send.execute("ns", "s", "hello", "key-1")

    model.failure = None
    reply = await send.execute("ns", "s", "hello", "key-1")

    assert reply.response == "reply-2: hello"
    assert await stored(history, "s") == ["hello", "reply-2: hello"]


async def test_a_cancelled_request_leaves_no_receipt_either(
    send: SendMessage, history: MemoryHistory, model: ScriptedModel
) -> None:
    model.gate = asyncio.Event()
    first = asyncio.create_task(send.execute("ns", "s", "hello", "key-1"))
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first

    model.gate.set()
    reply = await send.execute("ns", "s", "hello", "key-1")

    assert reply.response == "reply-2: hello"
    assert await stored(history, "s") == ["hello", "reply-2: hello"]


async def test_a_repeat_while_the_first_is_in_flight_waits_for_its_reply(
    send: SendMessage, history: MemoryHistory, model: ScriptedModel
) -> None:
    model.gate = asyncio.Event()
    first = asyncio.create_task(send.execute("ns", "s", "hello", "key-1"))
    repeats = [asyncio.create_task(send.execute("ns", "s", "hello", "key-1")) for _ in range(5)]
    await asyncio.sleep(0.1)
    assert not any(task.done() for task in [first, *repeats])

    model.gate.set()
    replies = await asyncio.gather(first, *repeats)

    assert {reply.response for reply in replies} == {"reply-1: hello"}
    assert len(model.seen) == 1
    assert await stored(history, "s") == ["hello", "reply-1: hello"]


async def test_a_repeat_waits_no_longer_than_a_request_can_take(
    history: MemoryHistory, model: ScriptedModel
) -> None:
    send = sender(history, model, in_flight=0.2)
    model.gate = asyncio.Event()
    first = asyncio.create_task(send.execute("ns", "s", "hello", "key-1"))
    await asyncio.sleep(0.01)

    with pytest.raises(IdempotencyConflict, match="still in progress"):
        await send.execute("ns", "s", "hello", "key-1")

    model.gate.set()
    await first
    assert len(model.seen) == 1


async def test_a_receipt_is_kept_for_a_day(
    send: SendMessage, clock: Monotonic, model: ScriptedModel
) -> None:
    await send.execute("ns", "s", "hello", "key-1")

    clock.now += RECEIPT_TTL_SECONDS - 1
    assert (await send.execute("ns", "s", "hello", "key-1")).response == "reply-1: hello"
    clock.now += 2
    assert (await send.execute("ns", "s", "hello", "key-1")).response == "reply-2: hello"


@pytest.mark.parametrize("key", ["", "   ", "k" * 129, "tab\tinside", "é"])
async def test_a_bad_key_is_refused_before_anything_is_asked(
    send: SendMessage, model: ScriptedModel, key: str
) -> None:
    with pytest.raises(InvalidInput, match="Idempotency-Key"):
        await send.execute("ns", "s", "hello", key)

    assert model.seen == []


async def test_a_key_held_by_a_request_whose_process_died_is_free_within_a_lease(
    model: ScriptedModel, history: MemoryHistory, clock: Monotonic
) -> None:
    send = sender(history, model, lease=3.0, clock=clock)
    died = Receipt("ns", "key-1", fingerprint("s", "hello"))
    assert await history.claim(died, ttl_seconds=3.0) is None  # and nobody renews it

    started = clock.now
    reply = await send.execute("ns", "s", "hello", "key-1")

    assert reply.response == "reply-1: hello"
    assert 3.0 <= clock.now - started < 4.0


async def test_a_request_keeps_its_key_while_it_runs_longer_than_a_lease(
    model: ScriptedModel,
) -> None:
    history = MemoryHistory(max_messages=50, ttl_seconds=0)
    send = sender(history, model, lease=0.2)
    model.gate = asyncio.Event()
    first = asyncio.create_task(send.execute("ns", "s", "hello", "key-1"))
    await asyncio.sleep(0.7)  # several leases long
    repeat = asyncio.create_task(send.execute("ns", "s", "hello", "key-1"))
    await asyncio.sleep(0.1)
    assert not repeat.done()

    model.gate.set()

    assert await first == await repeat
    assert len(model.seen) == 1


EARLIER = (Message("user", "earlier", datetime(2026, 11, 30, tzinfo=UTC)),)


@pytest.mark.parametrize(
    ("first", "repeat"),
    [
        (AS_CONFIGURED, TurnOptions(model="model-0")),
        (AS_CONFIGURED, TurnOptions(instructions="Answer in French.")),
        (AS_CONFIGURED, TurnOptions(context=EARLIER)),
        (TurnOptions(instructions="Answer in French."), TurnOptions(instructions="Be brief.")),
        (TurnOptions(context=EARLIER), AS_CONFIGURED),
    ],
    ids=["model", "instructions", "context", "other-instructions", "options-dropped"],
)
async def test_the_same_key_with_other_turn_options_is_a_conflict(
    send: SendMessage, history: MemoryHistory, first: TurnOptions, repeat: TurnOptions
) -> None:
    await send.execute("ns", "s", "hello", "key-1", first)

    with pytest.raises(IdempotencyConflict, match="different request"):
        await send.execute("ns", "s", "hello", "key-1", repeat)

    assert await stored(history, "s") == ["hello", "reply-1: hello"]


async def test_the_same_key_with_the_same_turn_options_is_a_repeat(
    send: SendMessage, model: ScriptedModel
) -> None:
    options = TurnOptions(model="model-0", instructions="Answer in French.", context=EARLIER)
    first = await send.execute("ns", "s", "hello", "key-1", options)
    # The retry's earlier messages are stamped when it arrives: their times do not count.
    resent = (Message("user", "earlier", datetime(2026, 12, 1, tzinfo=UTC)),)
    same = TurnOptions(model="model-0", instructions="Answer in French.", context=resent)

    assert await send.execute("ns", "s", "hello", "key-1", same) == first
    assert len(model.seen) == 1


def test_a_fingerprint_without_options_is_what_it_was_before_options_existed() -> None:
    before = hashlib.sha256(msgspec.msgpack.encode(("s", "hello"))).hexdigest()
    assert fingerprint("s", "hello") == before
    assert fingerprint("s", "hello", *AS_CONFIGURED.identity()) == before
