"""OpenAI-compatible Chat Completions, against the stub provider over loopback."""

import httpx
import pytest

from adapters.llm.openai import OpenAIChatModel, chat_completions_url
from application.errors import ModelUnavailable
from tests.integration.llm_samples import FAST, sample_conversation
from tests.support.provider_stub import ProviderStub, Reply, json_reply, openai_body


def _model(
    client: httpx.AsyncBaseTransport,
    url: str,
    *,
    api_key: str = "sk-test-secret",
    model: str = "gpt-4o-mini",
    temperature: float = 0.3,
) -> OpenAIChatModel:
    return OpenAIChatModel(
        client, url=url, api_key=api_key, model=model, max_tokens=128,
        temperature=temperature, policy=FAST,
    )  # fmt: skip


async def test_sends_a_chat_completion_request_and_returns_the_answer(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(json_reply(openai_body("4")))
    model = _model(provider_client, chat_completions_url(f"{provider_stub.url}/v1"))

    assert await model.reply(sample_conversation()) == "4"

    [request] = provider_stub.requests
    assert request.method == "POST"
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test-secret"
    assert request.headers["content-type"] == "application/json"
    assert request.json == {
        "model": "gpt-4o-mini",
        "max_tokens": 128,
        "temperature": 0.3,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "What is 2+2?"},
        ],
    }


@pytest.mark.parametrize(
    ("configured", "path"),
    [
        ("/v1", "/v1/chat/completions"),
        ("/v1/", "/v1/chat/completions"),
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/v1/chat/completions/", "/v1/chat/completions"),
        ("/api/openai/v1", "/api/openai/v1/chat/completions"),
    ],
)
async def test_accepts_a_base_url_or_the_full_endpoint(
    provider_stub: ProviderStub,
    provider_client: httpx.AsyncBaseTransport,
    configured: str,
    path: str,
) -> None:
    provider_stub.plan(json_reply(openai_body("ok")))
    model = _model(provider_client, chat_completions_url(provider_stub.url + configured))

    await model.reply(sample_conversation())

    assert [r.path for r in provider_stub.requests] == [path]


async def test_without_a_system_prompt_sends_only_the_turns(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(json_reply(openai_body("4")))
    model = _model(provider_client, chat_completions_url(provider_stub.url))

    await model.reply(sample_conversation(system=None))

    assert [m["role"] for m in provider_stub.requests[0].json["messages"]] == [
        "user",
        "assistant",
        "user",
    ]


async def test_a_local_server_needs_no_key_and_no_model_name(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """vLLM, Ollama and TGI serve one model and often run without auth."""
    provider_stub.plan(json_reply(openai_body("ok")))
    model = _model(provider_client, chat_completions_url(provider_stub.url), api_key="", model="")

    await model.reply(sample_conversation())

    [request] = provider_stub.requests
    assert "authorization" not in request.headers
    assert "model" not in request.json


async def test_temperature_zero_is_sent_not_dropped(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(json_reply(openai_body("ok")))
    model = _model(provider_client, chat_completions_url(provider_stub.url), temperature=0.0)

    await model.reply(sample_conversation())

    assert provider_stub.requests[0].json["temperature"] == 0


@pytest.mark.parametrize(
    "payload",
    [
        {"choices": []},
        {"choices": [{"message": {"role": "assistant", "content": None}}]},
        {"choices": [{"message": {"role": "assistant"}}]},
        {"error": {"message": "model overloaded"}},
        {"choices": "none"},
    ],
    ids=["no-choices", "null-content", "missing-content", "error-object", "wrong-type"],
)
async def test_an_answer_without_text_is_model_unavailable(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport, payload: object
) -> None:
    provider_stub.plan(json_reply(payload))
    model = _model(provider_client, chat_completions_url(provider_stub.url))

    with pytest.raises(ModelUnavailable, match="openai-compatible provider"):
        await model.reply(sample_conversation())
    assert len(provider_stub.requests) == 1


async def test_a_body_that_does_not_match_its_encoding_is_model_unavailable(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(Reply(200, b"not gzip at all", {"content-encoding": "gzip"}))
    model = _model(provider_client, chat_completions_url(provider_stub.url))

    with pytest.raises(ModelUnavailable, match="unreadable"):
        await model.reply(sample_conversation())
    assert len(provider_stub.requests) == 1


async def test_successive_replies_reuse_one_pooled_connection(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(json_reply(openai_body("one")), json_reply(openai_body("two")))
    model = _model(provider_client, chat_completions_url(provider_stub.url))

    assert [await model.reply(sample_conversation()), await model.reply(sample_conversation())] == [
        "one",
        "two",
    ]
    assert [r.connection for r in provider_stub.requests] == [1, 1]


async def test_replies_from_a_stub_serving_from_its_own_thread(
    provider_stub_thread: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """How the end-to-end tests run it, beside a service in a subprocess."""
    provider_stub_thread.plan(json_reply(openai_body("from the thread")))
    model = _model(provider_client, chat_completions_url(provider_stub_thread.url))

    assert await model.reply(sample_conversation()) == "from the thread"
    assert len(provider_stub_thread.requests) == 1
