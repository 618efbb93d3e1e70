"""OpenAI's API as a client built for OpenAI relies on it (README "OpenAI's API"), through the
official SDK with strict response validation: a body that lacks a field the SDK's types
require fails the test, so the SDK is the authority on the wire shapes.

Two services share the module: `service` answers with the echo model (whose replies name the
question and how many earlier messages it was shown, so a reply proves what the model saw),
with two tokens and a fallback `stubbed` (the OpenAI-format stand-in); `stub_service` has the
stand-in as its only model, for what the provider was sent and for provider failures.
Streaming has its own file, test_openai_streaming.py.
"""

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from redis import Redis

from tests.e2e.conftest import (
    DEFAULT_ANSWER,
    Service,
    ServiceLauncher,
    assert_paired,
    chat,
    echo_reply,
    openai_config,
    stored_messages,
)
from tests.support.provider_stub import (
    ProviderStub,
    error_reply,
    json_reply,
    openai_answering,
    openai_body,
)
from tests.support.redis_server import RedisServer

ALICE, BOB = "tok-openai-alice", "tok-openai-bob"
PRIMARY, FALLBACK = "parrot", "stubbed"  # the echo service's model names
STUB_PREFIX = "openai-stub"
SYSTEM_PROMPT = "You are the stand-in's guest."  # stub_service's configured system prompt


def sdk(service: Service, token: str) -> OpenAI:
    return OpenAI(
        base_url=f"{service.url}/v1",
        api_key=token,
        max_retries=0,
        timeout=15,
        _strict_response_validation=True,
    )


@pytest.fixture(scope="module")
def service(
    module_launch: ServiceLauncher, module_redis: RedisServer, module_stub: ProviderStub
) -> Service:
    return module_launch(
        {
            "auth": {"tokens": f"{ALICE},{BOB}"},
            "redis": {"url": module_redis.url, "key_prefix": "openai-api"},
            "llm": {"name": PRIMARY, "echo_word_seconds": "0", "fallbacks": FALLBACK},
            f"llm.{FALLBACK}": openai_config(module_stub),
        }
    )


@pytest.fixture(scope="module")
def stub_service(
    module_launch: ServiceLauncher, module_redis: RedisServer, module_stub: ProviderStub
) -> Service:
    return module_launch(
        {
            "redis": {"url": module_redis.url, "key_prefix": STUB_PREFIX},
            "llm": openai_config(module_stub, timeout_seconds="5", system_prompt=SYSTEM_PROMPT),
        }
    )


@pytest.fixture(scope="module")
def fallback_service(
    module_launch: ServiceLauncher, module_redis: RedisServer, module_stub: ProviderStub
) -> Service:
    """The stand-in first ("lead"), the echo model ("spare") when it fails."""
    lead = openai_config(module_stub, name="lead", fallbacks="spare", cooldown_failures="1000")
    return module_launch(
        {
            "redis": {"url": module_redis.url, "key_prefix": "openai-fallback"},
            "llm": lead,
            "llm.spare": {"provider": "echo", "echo_word_seconds": "0"},
        }
    )


@pytest.fixture
def stub(module_stub: ProviderStub) -> Iterator[ProviderStub]:
    """The module's stand-in answering DEFAULT_ANSWER, nothing recorded or left planned."""
    module_stub.default = openai_answering(DEFAULT_ANSWER)
    module_stub.reset()
    yield module_stub
    left = module_stub.planned
    module_stub.reset()
    assert left == 0, f"{left} planned replies were never asked for"


@pytest.fixture
def alice(service: Service) -> Iterator[OpenAI]:
    with sdk(service, ALICE) as client:
        yield client


@pytest.fixture
def bob(service: Service) -> Iterator[OpenAI]:
    with sdk(service, BOB) as client:
        yield client


@pytest.fixture
def http(service: Service) -> Iterator[httpx.Client]:
    """Alice's plain HTTP client, for /chat/ and raw checks."""
    with service.client(ALICE) as client:
        yield client


@pytest.fixture
def plain(stub_service: Service) -> Iterator[OpenAI]:
    with sdk(stub_service, "anything") as client:
        yield client


def texts(client: OpenAI, conversation_id: str, **params: Any) -> list[tuple[str, str, str]]:
    """(role, content type, text) of each item the SDK's auto-paging yields."""
    items = client.conversations.items.list(conversation_id, **params)
    return [
        (item.role, part.type, part.text)
        for item in items
        if item.type == "message"
        for part in item.content
        if part.type in ("input_text", "output_text")
    ]


def history_keys(redis: RedisServer, prefix: str) -> int:
    with Redis.from_url(redis.url) as client:
        return sum(1 for _ in client.scan_iter(match=f"{prefix}:history:*"))


def two_turns(client: OpenAI, conversation_id: str) -> None:
    client.responses.create(model="default", conversation=conversation_id, input="one")
    client.responses.create(model="default", conversation=conversation_id, input="two")


TWO_TURNS = [
    ("user", "input_text", "one"),
    ("assistant", "output_text", echo_reply("one")),
    ("user", "input_text", "two"),
    ("assistant", "output_text", echo_reply("two", 2)),
]


# --- the README's example ------------------------------------------------------------------


def readme_example(client: OpenAI) -> tuple[str, list[str]]:
    """The README's example as printed; returns the conversation and the three replies."""
    conv = client.conversations.create()
    r = client.responses.create(model="default", conversation=conv.id, input="Hello")
    first = r.output_text
    r = client.responses.create(model="default", conversation=conv.id, input="And again?")
    second = r.output_text
    with client.responses.stream(model="default", conversation=conv.id, input="Stream it") as s:
        deltas = [event.delta for event in s if event.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert "".join(deltas) == final.output_text
    return conv.id, [first, second, final.output_text]


def test_the_readme_example_as_printed(service: Service, alice: OpenAI, http: httpx.Client) -> None:
    conversation_id, replies = readme_example(alice)

    assert replies == [
        echo_reply("Hello"),
        echo_reply("And again?", 2),
        echo_reply("Stream it", 4),
    ]
    assert [content for _, content in stored_messages(service, http, conversation_id)] == [
        "Hello",
        replies[0],
        "And again?",
        replies[1],
        "Stream it",
        replies[2],
    ]


def test_the_readme_example_on_the_embedded_defaults(launch: ServiceLauncher) -> None:
    defaults = launch({}, base={})  # an empty config file: echo model, embedded Redis, no auth
    with sdk(defaults, "not-a-token") as client:
        _, replies = readme_example(client)
        assert [model.id for model in client.models.list()] == ["default", "primary"]
    assert replies == [echo_reply("Hello"), echo_reply("And again?", 2), echo_reply("Stream it", 4)]
    # And the README's own text, run as printed (only the port is this service's).
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    example = readme.split("## OpenAI's API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    run = subprocess.run(
        [sys.executable, "-c", example.replace("127.0.0.1:8000", defaults.url.split("//")[1])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert echo_reply("Hello") in run.stdout


# --- responses -------------------------------------------------------------------------------


def test_a_response_on_a_conversation_has_the_promised_shape(alice: OpenAI) -> None:
    conv = alice.conversations.create()
    r = alice.responses.create(
        model="default", conversation={"id": conv.id}, input="shape", metadata={"k": "v"}
    )

    assert r.id.startswith("resp_")
    assert r.status == "completed"
    assert r.model == PRIMARY
    assert [(item.type, [part.type for part in item.content]) for item in r.output] == [
        ("message", ["output_text"])
    ]
    assert r.output_text == echo_reply("shape")
    assert r.usage is not None
    assert r.usage.output_tokens > 0
    assert r.conversation is not None
    assert r.conversation.id == conv.id
    assert r.previous_response_id is None
    assert r.metadata == {"k": "v"}


def test_usage_is_the_providers_counts(plain: OpenAI, stub: ProviderStub) -> None:
    stub.plan(json_reply(openai_body("counted", usage=(11, 7))))
    r = plain.responses.create(model="default", input="count")
    assert r.output_text == "counted"
    assert r.usage is not None
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (11, 7, 18)


def test_previous_response_id_chains_responses_into_one_session(alice: OpenAI) -> None:
    first = alice.responses.create(model="default", input="first")
    second = alice.responses.create(model="default", previous_response_id=first.id, input="second")
    third = alice.responses.create(model="default", previous_response_id=second.id, input="third")

    assert first.conversation is None
    assert second.conversation is None
    assert second.previous_response_id == first.id
    assert [first.output_text, second.output_text, third.output_text] == [
        echo_reply("first"),
        echo_reply("second", 2),
        echo_reply("third", 4),
    ]


@pytest.mark.parametrize(
    "response_id", ["resp_0000000000000000", "resp_forged-" + "x" * 40, "not-a-response-id"]
)
def test_an_unknown_previous_response_id_is_not_found(alice: OpenAI, response_id: str) -> None:
    with pytest.raises(openai.NotFoundError):
        alice.responses.create(model="default", previous_response_id=response_id, input="hi")


def test_a_response_id_of_a_conversation_continues_that_conversation(alice: OpenAI) -> None:
    conv = alice.conversations.create()
    first = alice.responses.create(model="default", conversation=conv.id, input="in conv")
    second = alice.responses.create(model="default", previous_response_id=first.id, input="next")

    assert second.output_text == echo_reply("next", 2)
    assert [text for role, _, text in texts(alice, conv.id, order="asc") if role == "user"] == [
        "in conv",
        "next",
    ]


def test_any_response_id_of_a_session_continues_it_from_its_latest_turn(alice: OpenAI) -> None:
    """A session is a line, not a tree (README): OpenAI would branch from the named response."""
    first = alice.responses.create(model="default", input="root")
    alice.responses.create(model="default", previous_response_id=first.id, input="second")
    again = alice.responses.create(model="default", previous_response_id=first.id, input="third")
    assert again.output_text == echo_reply("third", 4)


def test_conversation_and_previous_response_id_together_are_a_bad_request(alice: OpenAI) -> None:
    conv = alice.conversations.create()
    first = alice.responses.create(model="default", conversation=conv.id, input="first")
    with pytest.raises(openai.BadRequestError):
        alice.responses.create(
            model="default", conversation=conv.id, previous_response_id=first.id, input="both"
        )
    assert len(texts(alice, conv.id)) == 2


def test_store_false_stores_nothing_yet_the_model_sees_the_history(alice: OpenAI) -> None:
    conv = alice.conversations.create()
    alice.responses.create(model="default", conversation=conv.id, input="kept")

    unstored = alice.responses.create(
        model="default", conversation=conv.id, input="forgotten", store=False
    )
    assert unstored.output_text == echo_reply("forgotten", 2)
    assert [text for _, _, text in texts(alice, conv.id, order="asc")] == [
        "kept",
        echo_reply("kept"),
    ]
    after = alice.responses.create(model="default", conversation=conv.id, input="next")
    assert after.output_text == echo_reply("next", 2)
    with pytest.raises(openai.NotFoundError):  # its response id names no session
        alice.responses.create(model="default", previous_response_id=unstored.id, input="on")


def test_store_false_on_a_new_conversation_leaves_it_empty(alice: OpenAI) -> None:
    conv = alice.conversations.create()
    r = alice.responses.create(model="default", conversation=conv.id, input="hush", store=False)
    assert r.output_text == echo_reply("hush")
    assert texts(alice, conv.id) == []


def test_earlier_messages_of_input_are_shown_for_this_turn_only(alice: OpenAI) -> None:
    conv = alice.conversations.create()
    r = alice.responses.create(
        model="default",
        conversation=conv.id,
        input=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "earlier question"},
            {"role": "assistant", "content": "earlier answer"},
            {"role": "user", "content": [{"type": "input_text", "text": "in parts"}]},
        ],
    )
    assert r.output_text == echo_reply("in parts", 2)
    assert texts(alice, conv.id, order="asc") == [
        ("user", "input_text", "in parts"),
        ("assistant", "output_text", r.output_text),
    ]


def test_input_whose_last_message_is_not_the_users_is_a_bad_request(alice: OpenAI) -> None:
    conv = alice.conversations.create()
    with pytest.raises(openai.BadRequestError):
        alice.responses.create(
            model="default",
            conversation=conv.id,
            input=[
                {"role": "user", "content": "question"},
                {"role": "assistant", "content": "the model's line, put last"},
            ],
        )
    assert texts(alice, conv.id) == []


def system_texts(request_body: dict[str, Any]) -> str:
    """Everything the stand-in was given as system (or developer) text."""
    parts = []
    for message in request_body["messages"]:
        if message["role"] in ("system", "developer"):
            content = message["content"]
            parts.append(content if isinstance(content, str) else str(content))
    return "\n".join(parts)


def test_instructions_and_system_input_reach_the_model_for_this_turn_only(
    plain: OpenAI, stub: ProviderStub
) -> None:
    first = plain.responses.create(
        model="default",
        instructions="Answer in French.",
        input=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    )
    plain.responses.create(model="default", previous_response_id=first.id, input="again")

    assert first.output_text == DEFAULT_ANSWER
    sent_first, sent_second = (request.json for request in stub.requests)
    system = system_texts(sent_first)
    assert "Be brief." in system
    assert SYSTEM_PROMPT in system
    assert system.index(SYSTEM_PROMPT) < system.index("Answer in French.")
    assert system_texts(sent_second) == SYSTEM_PROMPT
    assert sent_first["messages"][-1] == {"role": "user", "content": "hi"}
    assert [m["content"] for m in sent_second["messages"] if m["role"] != "system"] == [
        "hi",
        DEFAULT_ANSWER,
        "again",
    ]


# --- models ----------------------------------------------------------------------------------


def test_models_list_default_first_then_every_configured_model(alice: OpenAI) -> None:
    models = list(alice.models.list())
    assert [model.id for model in models] == ["default", PRIMARY, FALLBACK]
    assert {model.owned_by for model in models} == {"chat-service"}


def test_a_model_is_retrieved_by_name_and_an_unknown_one_is_not_found(alice: OpenAI) -> None:
    assert [alice.models.retrieve(name).id for name in ("default", PRIMARY, FALLBACK)] == [
        "default",
        PRIMARY,
        FALLBACK,
    ]
    with pytest.raises(openai.NotFoundError) as raised:
        alice.models.retrieve("gpt-4o")
    assert raised.value.code == "model_not_found"


def test_the_default_model_is_the_configured_order_also_when_left_out(alice: OpenAI) -> None:
    assert alice.responses.create(model="default", input="which?").model == PRIMARY
    assert alice.responses.create(input="which?").model == PRIMARY


def test_a_configured_model_asked_by_name_answers_alone(alice: OpenAI, stub: ProviderStub) -> None:
    r = alice.responses.create(model=FALLBACK, input="you, please")
    assert (r.model, r.output_text) == (FALLBACK, DEFAULT_ANSWER)
    assert len(stub.requests) == 1


def test_default_falls_back_to_the_next_model_and_a_named_model_does_not(
    fallback_service: Service, stub: ProviderStub
) -> None:
    stub.plan(error_reply(500), error_reply(500), error_reply(500))
    with sdk(fallback_service, "anything") as client:
        conv = client.conversations.create()
        r = client.responses.create(model="default", conversation=conv.id, input="anyone?")
        assert (r.model, r.output_text) == ("spare", echo_reply("anyone?"))

        with pytest.raises(openai.InternalServerError):
            client.responses.create(model="lead", conversation=conv.id, input="lead only")
        assert len(texts(client, conv.id)) == 2

        completion = client.chat.completions.create(
            model="default",
            messages=[
                {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "q2"},
            ],
        )
    assert completion.model == "spare"
    assert completion.choices[0].message.content == echo_reply("q2", 2)
    assert len(stub.requests) == 3


def test_an_unknown_model_is_not_found_with_code_model_not_found(alice: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        alice.responses.create(model="gpt-4o", input="hello")
    assert raised.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as raised:
        alice.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hello"}]
        )
    assert raised.value.code == "model_not_found"


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("temperature", 0.5),
        ("tools", [{"type": "function", "name": "f", "parameters": {}, "strict": False}]),
    ],
)
def test_an_unsupported_parameter_is_a_bad_request_naming_it(
    alice: OpenAI, param: str, value: object
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        alice.responses.create(model="default", input="hello", **{param: value})  # type: ignore[call-overload]
    assert (raised.value.code, raised.value.param) == ("unsupported_parameter", param)


def test_chat_completions_with_n_above_1_is_unsupported(alice: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        alice.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}], n=2
        )
    assert (raised.value.code, raised.value.param) == ("unsupported_parameter", "n")


@pytest.mark.parametrize(
    ("token", "path", "body", "status"),
    [
        (ALICE, "/v1/responses", {"model": "nope", "input": "x"}, 404),
        (ALICE, "/v1/responses", {"model": "default", "input": "x", "top_p": 0.5}, 400),
        (ALICE, "/v1/conversations/conv_unknown", None, 404),
        ("wrong-token", "/v1/models", None, 401),
        (None, "/v1/conversations", {}, 401),
    ],
    ids=["unknown-model", "unsupported", "unknown-conversation", "wrong-token", "no-token"],
)
def test_an_error_body_is_exactly_openais_shape(
    service: Service, token: str | None, path: str, body: dict[str, Any] | None, status: int
) -> None:
    with service.client(token) as raw:
        response = raw.post(path, json=body) if body is not None else raw.get(path)
    shown = service.expect(response, status)
    assert list(shown) == ["error"]
    assert set(shown["error"]) == {"message", "type", "param", "code"}
    assert isinstance(shown["error"]["message"], str)
    assert shown["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/responses/resp_0000000000000000", 404),
        ("POST", "/v1/embeddings", 404),
        ("POST", "/v1/conversations/conv_0000", 405),  # the SDK's conversations.update
    ],
    ids=["retrieve-response", "embeddings", "update-conversation"],
)
def test_a_v1_route_the_service_lacks_answers_in_openais_error_shape(
    service: Service, http: httpx.Client, method: str, path: str, status: int
) -> None:
    response = http.request(method, path, json={} if method == "POST" else None)
    assert response.status_code == status
    assert list(response.json()) == ["error"], response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_initial_items_of_a_conversation_are_an_unsupported_parameter(alice: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        alice.conversations.create(items=[{"type": "message", "role": "user", "content": "hi"}])
    assert (raised.value.code, raised.value.param) == ("unsupported_parameter", "items")


# --- conversations ---------------------------------------------------------------------------


def test_a_conversation_is_created_with_metadata_and_retrieved(alice: OpenAI) -> None:
    conv = alice.conversations.create(metadata={"topic": "tests", "owner": "alice"})
    again = alice.conversations.retrieve(conv.id)

    assert conv.id.startswith("conv_")
    assert abs(conv.created_at - time.time()) < 60
    assert conv.object == "conversation"
    assert (again.id, again.created_at, again.metadata) == (
        conv.id,
        conv.created_at,
        {"topic": "tests", "owner": "alice"},
    )
    two_turns(alice, conv.id)
    assert alice.conversations.retrieve(conv.id).metadata == {"topic": "tests", "owner": "alice"}


def test_items_are_newest_first_by_default_and_oldest_first_on_request(alice: OpenAI) -> None:
    conv = alice.conversations.create()
    two_turns(alice, conv.id)

    page = alice.conversations.items.list(conv.id)
    assert page.has_more is False
    assert all(item.id.startswith("msg_") and item.status == "completed" for item in page.data)
    assert texts(alice, conv.id) == TWO_TURNS[::-1]
    assert texts(alice, conv.id, order="asc") == TWO_TURNS


def test_items_page_one_at_a_time_through_the_sdks_auto_paging(alice: OpenAI) -> None:
    conv = alice.conversations.create()
    two_turns(alice, conv.id)

    first = alice.conversations.items.list(conv.id, limit=1, order="asc")
    assert len(first.data) == 1
    assert first.has_more is True
    assert first.first_id == first.last_id == first.data[0].id
    assert texts(alice, conv.id, limit=1, order="asc") == TWO_TURNS
    assert texts(alice, conv.id, limit=1) == TWO_TURNS[::-1]
    assert texts(alice, conv.id, limit=3) == TWO_TURNS[::-1]
    ids = [item.id for item in alice.conversations.items.list(conv.id, order="asc").data]
    rest = alice.conversations.items.list(conv.id, limit=3, order="asc", after=first.last_id)
    assert [item.id for item in rest.data] == ids[1:]
    assert rest.has_more is False


def test_a_deleted_conversation_is_gone(
    service: Service, alice: OpenAI, http: httpx.Client
) -> None:
    conv = alice.conversations.create()
    r = alice.responses.create(model="default", conversation=conv.id, input="soon gone")

    deleted = alice.conversations.delete(conv.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (conv.id, True, "conversation.deleted")
    with pytest.raises(openai.NotFoundError):
        alice.conversations.retrieve(conv.id)
    with pytest.raises(openai.NotFoundError):
        alice.conversations.items.list(conv.id)
    with pytest.raises(openai.NotFoundError):
        alice.conversations.delete(conv.id)
    with pytest.raises(openai.NotFoundError):  # the session its response named is gone
        alice.responses.create(model="default", previous_response_id=r.id, input="still?")
    assert stored_messages(service, http, conv.id) == []


def test_an_unknown_conversation_is_not_found(alice: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        alice.responses.create(model="default", conversation="conv_neverexisted", input="hi")
    with pytest.raises(openai.NotFoundError):
        alice.conversations.retrieve("conv_neverexisted")
    with pytest.raises(openai.NotFoundError):
        alice.conversations.items.list("conv_neverexisted")


def test_a_conversation_continued_through_chat_and_back(
    service: Service, alice: OpenAI, http: httpx.Client
) -> None:
    conv = alice.conversations.create()
    alice.responses.create(model="default", conversation=conv.id, input="from the sdk")
    service.expect(http.post("/chat/", json=chat(conv.id, "from chat")), 200)

    r = alice.responses.create(model="default", conversation=conv.id, input="back again")

    assert r.output_text == echo_reply("back again", 4)
    assert [content for _, content in stored_messages(service, http, conv.id)] == [
        "from the sdk",
        echo_reply("from the sdk"),
        "from chat",
        echo_reply("from chat", 2),
        "back again",
        r.output_text,
    ]
    assert [text for role, _, text in texts(alice, conv.id, order="asc") if role == "user"] == [
        "from the sdk",
        "from chat",
        "back again",
    ]


async def test_concurrent_turns_on_one_conversation_are_each_stored_whole(
    service: Service,
) -> None:
    questions = [f"concurrent {n}" for n in range(8)]
    async with AsyncOpenAI(
        base_url=f"{service.url}/v1", api_key=ALICE, max_retries=0, _strict_response_validation=True
    ) as client:
        conv = await client.conversations.create()
        replies = await asyncio.gather(
            *(
                client.responses.create(model="default", conversation=conv.id, input=question)
                for question in questions
            )
        )
    assert all(r.conversation is not None and r.conversation.id == conv.id for r in replies)
    async with service.async_client(ALICE) as http:
        shown = service.expect(await http.get(f"/chat/{conv.id}"), 200)
    assert_paired(shown["messages"], questions)


def test_a_session_started_by_chat_is_a_conversation(
    service: Service, alice: OpenAI, http: httpx.Client, sid: str
) -> None:
    service.expect(http.post("/chat/", json=chat(sid, "plain chat")), 200)

    shown = alice.conversations.retrieve(sid)
    assert shown.id == sid
    assert abs(shown.created_at - time.time()) < 60
    assert texts(alice, sid, order="asc") == [
        ("user", "input_text", "plain chat"),
        ("assistant", "output_text", echo_reply("plain chat")),
    ]
    r = alice.responses.create(model="default", conversation=sid, input="via responses")
    assert r.output_text == echo_reply("via responses", 2)


# --- chat completions ------------------------------------------------------------------------


def test_chat_completions_without_a_session_answer_from_the_whole_list(alice: OpenAI) -> None:
    raw = alice.chat.completions.with_raw_response.create(
        model="default",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": [{"type": "text", "text": "q2"}]},
        ],
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == echo_reply("q2", 2)
    assert completion.model == PRIMARY
    assert "x-session-id" not in raw.headers


def test_chat_completions_without_a_session_pass_through_and_store_nothing(
    plain: OpenAI, stub: ProviderStub, module_redis: RedisServer
) -> None:
    before = history_keys(module_redis, STUB_PREFIX)
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    completion = plain.chat.completions.create(model="default", messages=messages)

    assert completion.choices[0].message.content == DEFAULT_ANSWER
    sent = stub.requests[-1].json["messages"]
    assert [(m["role"], m["content"]) for m in sent if m["role"] != "system"] == [
        ("user", "q1"),
        ("assistant", "a1"),
        ("user", "q2"),
    ]
    assert "Be brief." in system_texts(stub.requests[-1].json)
    assert history_keys(module_redis, STUB_PREFIX) == before


def test_chat_completions_with_a_session_keep_its_history(
    service: Service, alice: OpenAI, http: httpx.Client, sid: str
) -> None:
    header = {"X-Session-ID": sid}
    first = alice.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "one"}], extra_headers=header
    )
    answer = first.parse().choices[0].message.content
    # A front end resends the whole conversation; the session is what the model sees.
    second = alice.chat.completions.create(
        model="default",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "two"},
        ],
        extra_headers=header,
    )

    assert first.headers["x-session-id"] == sid
    assert answer == echo_reply("one")
    assert second.choices[0].message.content == echo_reply("two", 2)
    assert stored_messages(service, http, sid) == [
        ("user", "one"),
        ("assistant", echo_reply("one")),
        ("user", "two"),
        ("assistant", echo_reply("two", 2)),
    ]


def test_chat_completions_with_a_session_show_the_model_the_session_not_the_list(
    plain: OpenAI, stub: ProviderStub, sid: str
) -> None:
    header = {"X-Session-ID": sid}
    plain.chat.completions.create(
        model="default",
        messages=[
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "content": "made-up question"},
            {"role": "assistant", "content": "made-up answer"},
            {"role": "user", "content": "one"},
        ],
        extra_headers=header,
    )
    plain.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "two"}], extra_headers=header
    )

    sent_first, sent_second = (request.json for request in stub.requests)
    assert "Be terse." in system_texts(sent_first)
    assert [m["content"] for m in sent_first["messages"] if m["role"] != "system"] == ["one"]
    assert "Be terse." not in system_texts(sent_second)
    assert [m["content"] for m in sent_second["messages"] if m["role"] != "system"] == [
        "one",
        DEFAULT_ANSWER,
        "two",
    ]


def test_chat_completions_by_model_name_with_a_user_field(
    alice: OpenAI, stub: ProviderStub
) -> None:
    completion = alice.chat.completions.create(
        model=FALLBACK, messages=[{"role": "user", "content": "hi"}], user="end-user-7"
    )
    assert (completion.model, completion.choices[0].message.content) == (FALLBACK, DEFAULT_ANSWER)
    assert completion.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("session_id", ["has space", "a/b", "x" * 129, ""])
def test_a_session_header_outside_chats_rules_is_a_bad_request(
    alice: OpenAI, session_id: str
) -> None:
    with pytest.raises(openai.BadRequestError):
        alice.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Session-ID": session_id},
        )


@pytest.mark.parametrize("session", [False, True], ids=["no-session", "session"])
def test_chat_completions_whose_last_message_is_not_the_users_are_a_bad_request(
    service: Service, alice: OpenAI, http: httpx.Client, sid: str, session: bool
) -> None:
    with pytest.raises(openai.BadRequestError):
        alice.chat.completions.create(
            model="default",
            messages=[
                {"role": "user", "content": "question"},
                {"role": "assistant", "content": "answer, put last"},
            ],
            extra_headers={"X-Session-ID": sid} if session else None,
        )
    assert stored_messages(service, http, sid) == []


# --- auth, isolation, rate limit -------------------------------------------------------------


def test_a_wrong_api_key_is_an_authentication_error(service: Service) -> None:
    with sdk(service, "not-a-token") as stranger:
        with pytest.raises(openai.AuthenticationError):
            stranger.models.list()
        with pytest.raises(openai.AuthenticationError):
            stranger.responses.create(model="default", input="let me in")


def test_another_tokens_conversation_does_not_exist_for_it(alice: OpenAI, bob: OpenAI) -> None:
    conv = alice.conversations.create()
    r = alice.responses.create(model="default", conversation=conv.id, input="private")

    with pytest.raises(openai.NotFoundError):
        bob.conversations.retrieve(conv.id)
    with pytest.raises(openai.NotFoundError):
        bob.conversations.items.list(conv.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.create(model="default", previous_response_id=r.id, input="mine now")
    with pytest.raises(openai.NotFoundError):
        bob.conversations.delete(conv.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.create(model="default", conversation=conv.id, input="intruding")
    # A session id in Bob's header names Bob's own session, new to him.
    own = bob.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "intruding too"}],
        extra_headers={"X-Session-ID": conv.id},
    )
    assert own.choices[0].message.content == echo_reply("intruding too")
    assert texts(alice, conv.id, order="asc") == [
        ("user", "input_text", "private"),
        ("assistant", "output_text", echo_reply("private")),
    ]


def test_over_the_rate_limit_is_a_rate_limit_error(
    launch: ServiceLauncher, module_redis: RedisServer
) -> None:
    limited = launch(
        {
            "auth": {"tokens": ALICE, "rate_limit": "3/hour"},
            "redis": {"url": module_redis.url, "key_prefix": "openai-limited"},
            "llm": {"echo_word_seconds": "0"},
        }
    )
    statuses: list[int] = []
    with sdk(limited, ALICE) as client:
        for _ in range(10):  # an hour's window could roll over once, not twice
            try:
                client.responses.create(model="default", input="again")
            except openai.RateLimitError as error:
                statuses.append(error.status_code)
                break
            statuses.append(200)
    assert statuses[-1] == 429, statuses
    assert 3 <= statuses.count(200) <= 6, statuses


# --- idempotency and failures ----------------------------------------------------------------


def test_a_repeated_idempotency_key_answers_once_and_stores_once(alice: OpenAI) -> None:
    conv = alice.conversations.create()
    key = {"Idempotency-Key": f"k1-{conv.id}"}
    first = alice.responses.create(
        model="default", conversation=conv.id, input="once", extra_headers=key
    )
    repeat = alice.responses.create(
        model="default", conversation=conv.id, input="once", extra_headers=key
    )

    assert repeat.output_text == first.output_text == echo_reply("once")
    assert len(texts(alice, conv.id)) == 2


def test_an_idempotency_key_on_a_chat_completion_with_a_session_stores_once(
    service: Service, alice: OpenAI, http: httpx.Client, sid: str
) -> None:
    headers = {"X-Session-ID": sid, "Idempotency-Key": f"k3-{sid}"}
    answers = [
        alice.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "once"}], extra_headers=headers
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert answers == [echo_reply("once")] * 2
    assert stored_messages(service, http, sid) == [("user", "once"), ("assistant", answers[0])]


def test_a_repeated_idempotency_key_without_a_conversation_is_the_same_response(
    alice: OpenAI,
) -> None:
    key = {"Idempotency-Key": f"k4-{time.monotonic_ns()}"}
    first = alice.responses.create(model="default", input="new session", extra_headers=key)
    repeat = alice.responses.create(model="default", input="new session", extra_headers=key)
    assert (repeat.id, repeat.output_text) == (first.id, first.output_text)
    after = alice.responses.create(model="default", previous_response_id=repeat.id, input="on")
    assert after.output_text == echo_reply("on", 2)


def test_the_same_idempotency_key_for_another_input_is_a_conflict(alice: OpenAI) -> None:
    conv = alice.conversations.create()
    key = {"Idempotency-Key": f"k2-{conv.id}"}
    alice.responses.create(model="default", conversation=conv.id, input="first", extra_headers=key)
    with pytest.raises(openai.ConflictError):
        alice.responses.create(
            model="default", conversation=conv.id, input="second", extra_headers=key
        )
    with pytest.raises(openai.ConflictError):  # the same input, other turn options
        alice.responses.create(
            model="default",
            conversation=conv.id,
            input="first",
            instructions="Be brief.",
            extra_headers=key,
        )
    assert [text for _, _, text in texts(alice, conv.id, order="asc")] == [
        "first",
        echo_reply("first"),
    ]


def test_a_failing_provider_is_a_502_and_nothing_is_stored(
    stub_service: Service, plain: OpenAI, stub: ProviderStub, sid: str
) -> None:
    stub.plan(error_reply(500), error_reply(500))
    conv = plain.conversations.create()
    with pytest.raises(openai.InternalServerError) as raised:
        plain.responses.create(model="default", conversation=conv.id, input="doomed")
    assert raised.value.status_code == 502
    assert texts(plain, conv.id) == []

    with pytest.raises(openai.APIStatusError) as raised_chat:
        plain.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "doomed too"}],
            extra_headers={"X-Session-ID": sid},
        )
    assert raised_chat.value.status_code == 502
    with stub_service.client() as http:
        assert stored_messages(stub_service, http, sid) == []
