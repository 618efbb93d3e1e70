"""OpenAI's streams as the official SDK reads them (README "OpenAI's API"): the Responses event
stream (sync helper, async client, raw events) and Chat Completions chunks, with and without a
session. What a client relies on in every test: the deltas joined == the final text == what
GET /chat/{id} stores, once.

`service` answers with the echo model (its reply names the question and how many earlier
messages it saw); `stub_service` with the OpenAI-format stand-in, for a provider that fails
mid-stream. Clients validate every event strictly against the SDK's types.
"""

import json
from collections.abc import AsyncIterator, Iterator

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.e2e.conftest import (
    Service,
    ServiceLauncher,
    echo_reply,
    openai_config,
    stored_messages,
    wait_until,
)
from tests.e2e.sse import check_whole, read_events, text_of
from tests.support.provider_stub import (
    ProviderStub,
    error_reply,
    openai_stream,
    openai_stream_error,
    streamed,
)
from tests.support.redis_server import RedisServer

TOKEN = "tok-openai-streaming"
PRIMARY = "parrot"
OPENING = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
CLOSING = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]
DELTA = "response.output_text.delta"


def _options(service: Service, token: str) -> dict[str, object]:
    return {
        "base_url": f"{service.url}/v1",
        "api_key": token,
        "max_retries": 0,
        "timeout": 15,
        "_strict_response_validation": True,
    }


@pytest.fixture(scope="module")
def service(module_launch: ServiceLauncher, module_redis: RedisServer) -> Service:
    return module_launch(
        {
            "auth": {"tokens": TOKEN},
            "redis": {"url": module_redis.url, "key_prefix": "openai-streaming"},
            "llm": {"name": PRIMARY, "echo_word_seconds": "0.01"},
        }
    )


@pytest.fixture(scope="module")
def stub_service(
    module_launch: ServiceLauncher, module_redis: RedisServer, module_stub: ProviderStub
) -> Service:
    return module_launch(
        {
            "redis": {"url": module_redis.url, "key_prefix": "openai-streaming-stub"},
            "llm": openai_config(module_stub, timeout_seconds="5"),
        }
    )


@pytest.fixture
def client(service: Service) -> Iterator[OpenAI]:
    with OpenAI(**_options(service, TOKEN)) as sdk:  # type: ignore[arg-type]
        yield sdk


@pytest.fixture
async def aclient(service: Service) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(**_options(service, TOKEN)) as sdk:  # type: ignore[arg-type]
        yield sdk


@pytest.fixture
def http(service: Service) -> Iterator[httpx.Client]:
    with service.client(TOKEN) as raw:
        yield raw


def collapsed(types: list[str]) -> list[str]:
    """Event types with each run of text deltas shown once."""
    shown: list[str] = []
    for kind in types:
        if not (kind == DELTA and shown and shown[-1] == DELTA):
            shown.append(kind)
    return shown


# --- Responses ------------------------------------------------------------------------------


def test_the_stream_helper_deltas_join_to_the_final_response_and_the_stored_reply(
    service: Service, client: OpenAI, http: httpx.Client
) -> None:
    conv = client.conversations.create()
    with client.responses.stream(model="default", conversation=conv.id, input="Stream it") as s:
        events = list(s)
        final = s.get_final_response()

    deltas = "".join(event.delta for event in events if event.type == DELTA)
    assert deltas == final.output_text == echo_reply("Stream it")
    assert sum(event.type == DELTA for event in events) > 1, "the reply came in one piece"
    assert final.status == "completed"
    assert final.model == PRIMARY
    assert final.conversation is not None
    assert final.conversation.id == conv.id
    assert stored_messages(service, http, conv.id) == [
        ("user", "Stream it"),
        ("assistant", final.output_text),
    ]


async def test_raw_async_events_come_in_the_readmes_order_with_rising_sequence_numbers(
    service: Service, aclient: AsyncOpenAI, http: httpx.Client
) -> None:
    conv = await aclient.conversations.create()
    stream = await aclient.responses.create(
        model="default", conversation=conv.id, input="raw events", stream=True
    )
    events = [event async for event in stream]

    assert collapsed([event.type for event in events]) == [*OPENING, DELTA, *CLOSING]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    completed = events[-1]
    assert completed.type == "response.completed"
    deltas = "".join(event.delta for event in events if event.type == DELTA)
    done = next(event for event in events if event.type == "response.output_text.done")
    assert deltas == done.text == completed.response.output_text == echo_reply("raw events")
    assert events[0].type == "response.created"
    assert events[0].response.id == completed.response.id
    assert events[0].response.status == "in_progress"
    assert completed.response.status == "completed"
    places = {(e.item_id, e.output_index, e.content_index) for e in events if e.type == DELTA}
    assert places == {(completed.response.output[0].id, 0, 0)}
    assert stored_messages(service, http, conv.id) == [
        ("user", "raw events"),
        ("assistant", deltas),
    ]


async def test_the_async_client_creates_and_streams_on_one_conversation(
    aclient: AsyncOpenAI,
) -> None:
    conv = await aclient.conversations.create(metadata={"client": "async"})
    first = await aclient.responses.create(model="default", conversation=conv.id, input="one")
    async with aclient.responses.stream(
        model="default", conversation=conv.id, input="two"
    ) as stream:
        deltas = [event.delta async for event in stream if event.type == DELTA]
        final = await stream.get_final_response()

    assert first.output_text == echo_reply("one")
    assert "".join(deltas) == final.output_text == echo_reply("two", 2)
    items = await aclient.conversations.items.list(conv.id, order="asc")
    assert [item.role for item in items.data] == ["user", "assistant", "user", "assistant"]


def test_a_stream_with_store_false_stores_nothing_yet_sees_the_history(client: OpenAI) -> None:
    conv = client.conversations.create()
    client.responses.create(model="default", conversation=conv.id, input="kept")
    with client.responses.stream(
        model="default", conversation=conv.id, input="not kept", store=False
    ) as s:
        final = s.get_final_response()
    assert final.output_text == echo_reply("not kept", 2)
    assert len(client.conversations.items.list(conv.id).data) == 2


def test_a_stream_repeated_with_its_idempotency_key_replays_one_stored_turn(
    client: OpenAI,
) -> None:
    conv = client.conversations.create()
    key = {"Idempotency-Key": f"stream-{conv.id}"}
    finals = []
    for _ in range(2):
        with client.responses.stream(
            model="default", conversation=conv.id, input="only once", extra_headers=key
        ) as s:
            finals.append(s.get_final_response())
    assert finals[1].output_text == finals[0].output_text == echo_reply("only once")
    assert finals[1].id == finals[0].id
    assert len(client.conversations.items.list(conv.id).data) == 2


def test_a_streamed_response_is_continued_by_its_response_id(client: OpenAI) -> None:
    with client.responses.stream(model="default", input="streamed first") as s:
        first = s.get_final_response()
    second = client.responses.create(
        model="default", previous_response_id=first.id, input="then this"
    )
    assert first.output_text == echo_reply("streamed first")
    assert second.output_text == echo_reply("then this", 2)


def test_a_provider_failing_after_the_first_text_ends_with_error_then_failed_nothing_stored(
    stub_service: Service, module_stub: ProviderStub
) -> None:
    module_stub.reset()
    module_stub.plan(
        streamed(
            [openai_stream("half ", end=False), openai_stream_error("The server had an error")],
            pause=0.05,
        )
    )
    with OpenAI(**_options(stub_service, "anything")) as sdk:  # type: ignore[arg-type]
        conv = sdk.conversations.create()
        stream = sdk.responses.create(
            model="default", conversation=conv.id, input="fail midway", stream=True
        )
        events = list(stream)
        items = sdk.conversations.items.list(conv.id)

    types = [event.type for event in events]
    assert types[-2:] == ["error", "response.failed"], types
    assert "".join(event.delta for event in events if event.type == DELTA) == "half "
    assert "response.completed" not in types
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed"
    assert items.data == []
    assert module_stub.planned == 0


def test_each_event_on_the_wire_is_named_by_its_type(service: Service, http: httpx.Client) -> None:
    body = {"model": "default", "input": "on the wire", "stream": True}
    with http.stream("POST", "/v1/responses", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        blocks = "".join(response.iter_text()).strip().split("\n\n")

    named = []
    for block in blocks:
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        named.append((fields["event"], json.loads(fields["data"])["type"]))
    assert all(event == kind for event, kind in named), named
    assert collapsed([event for event, _ in named]) == [*OPENING, DELTA, *CLOSING]


def test_a_stored_turn_runs_to_its_end_when_the_client_hangs_up_and_chat_re_attaches(
    service: Service, client: OpenAI, http: httpx.Client
) -> None:
    conv = client.conversations.create()
    question = " ".join(f"w{n}" for n in range(60))  # 0.75 s of reply at 0.01 s a word
    stream = client.responses.create(
        model="default", conversation=conv.id, input=question, stream=True
    )
    deltas = 0
    for event in stream:
        deltas += event.type == DELTA
        if deltas == 5:
            break
    stream.close()

    with http.stream("GET", f"/chat/{conv.id}/stream") as response:
        assert response.status_code == 200
        events = read_events(response)
    done = check_whole(events)
    assert done.name == "done", done
    assert text_of(events) == echo_reply(question)
    wait_until(lambda: len(stored_messages(service, http, conv.id)) == 2, 5, "the turn stored")
    assert stored_messages(service, http, conv.id)[1] == ("assistant", echo_reply(question))


def test_a_provider_failing_before_any_text_refuses_both_streams_with_502(
    stub_service: Service, module_stub: ProviderStub
) -> None:
    module_stub.reset()
    module_stub.plan(error_reply(500), error_reply(500))
    with OpenAI(**_options(stub_service, "anything")) as sdk:  # type: ignore[arg-type]
        conv = sdk.conversations.create()
        with pytest.raises(openai.InternalServerError) as raised:
            sdk.responses.create(model="default", conversation=conv.id, input="no", stream=True)
        assert raised.value.status_code == 502
        with pytest.raises(openai.InternalServerError) as raised:
            sdk.chat.completions.create(
                model="default", messages=[{"role": "user", "content": "no"}], stream=True
            )
        assert raised.value.status_code == 502
        assert sdk.conversations.items.list(conv.id).data == []
    assert module_stub.planned == 0


# --- Chat Completions ------------------------------------------------------------------------


def test_chat_completion_chunks_join_to_the_answer_without_a_session(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="default",
            messages=[
                {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "q2"},
            ],
            stream=True,
        )
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == echo_reply("q2", 2)
    assert len(chunks) > 2
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None for chunk in chunks)


def test_chat_completion_streams_with_a_session_store_each_turn(
    service: Service, client: OpenAI, http: httpx.Client, sid: str
) -> None:
    header = {"X-Session-ID": sid}
    answers = []
    for question in ("one", "two"):
        with client.chat.completions.with_streaming_response.create(
            model="default",
            messages=[{"role": "user", "content": question}],
            stream=True,
            extra_headers=header,
        ) as raw:
            assert raw.headers["x-session-id"] == sid
            chunks = list(raw.parse())
        answers.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))

    assert answers == [echo_reply("one"), echo_reply("two", 2)]
    assert stored_messages(service, http, sid) == [
        ("user", "one"),
        ("assistant", answers[0]),
        ("user", "two"),
        ("assistant", answers[1]),
    ]


async def test_the_async_client_streams_chunks_into_a_session(
    service: Service, aclient: AsyncOpenAI, http: httpx.Client, sid: str
) -> None:
    stream = await aclient.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "async chunks"}],
        stream=True,
        extra_headers={"X-Session-ID": sid},
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == echo_reply("async chunks")
    assert stored_messages(service, http, sid) == [("user", "async chunks"), ("assistant", text)]


def test_a_chunk_stream_ends_with_done_on_the_wire(http: httpx.Client) -> None:
    body = {"model": "default", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


@pytest.mark.parametrize("session", [False, True], ids=["no-session", "session"])
def test_include_usage_adds_a_last_chunk_with_the_usage(
    client: OpenAI, sid: str, session: bool
) -> None:
    chunks = list(
        client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "count me"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"X-Session-ID": sid} if session else None,
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(chunk.usage is None for chunk in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == echo_reply("count me")


def test_a_stream_of_an_unknown_model_or_response_is_refused_before_it_starts(
    client: OpenAI,
) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="hi", stream=True)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(previous_response_id="resp_unknown", input="hi", stream=True)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "hi"}], stream=True
        )


def test_a_chunk_stream_with_a_blank_session_header_is_a_bad_request(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers={"X-Session-ID": ""},
        )
