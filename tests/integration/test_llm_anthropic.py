"""Anthropic's Messages API, against the stub provider over loopback."""

import httpx
import pytest

from adapters.llm.anthropic import AnthropicModel, messages_url
from application.errors import ModelUnavailable
from domain.answer import Answer, Usage
from tests.integration.llm_samples import FAST, sample_conversation
from tests.support.provider_stub import (
    ProviderStub,
    anthropic_body,
    error_reply,
    json_reply,
)


def _model(
    client: httpx.AsyncBaseTransport, url: str, temperature: float | None = 0.5
) -> AnthropicModel:
    return AnthropicModel(
        client, url=url, api_key="sk-ant-test-secret", model="claude-3-5-haiku-latest",
        max_tokens=256, temperature=temperature, policy=FAST,
    )  # fmt: skip


async def test_sends_a_messages_request_and_returns_the_answer(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(json_reply(anthropic_body("4")))
    model = _model(provider_client, messages_url(provider_stub.url))

    assert await model.reply(sample_conversation()) == Answer("4")

    [request] = provider_stub.requests
    assert request.method == "POST"
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == "sk-ant-test-secret"
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    assert request.headers["content-type"] == "application/json"
    assert request.json == {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 256,
        "temperature": 0.5,
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "What is 2+2?"},
        ],
    }


@pytest.mark.parametrize("configured", ["", "/", "/v1", "/v1/", "/v1/messages", "/v1/messages/"])
async def test_accepts_the_host_the_v1_base_or_the_full_endpoint(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport, configured: str
) -> None:
    provider_stub.plan(json_reply(anthropic_body("ok")))
    model = _model(provider_client, messages_url(provider_stub.url + configured))

    await model.reply(sample_conversation())

    assert [r.path for r in provider_stub.requests] == ["/v1/messages"]


async def test_without_a_system_prompt_sends_no_system_field(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """The API rejects `"system": null`; the field must be absent."""
    provider_stub.plan(json_reply(anthropic_body("4")))
    model = _model(provider_client, messages_url(provider_stub.url))

    await model.reply(sample_conversation(system=None))

    assert "system" not in provider_stub.requests[0].json


async def test_temperature_none_is_not_sent_and_max_tokens_always_is(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """The Messages API requires max_tokens; temperature left out means the model's default."""
    provider_stub.plan(json_reply(anthropic_body("4")))
    model = _model(provider_client, messages_url(provider_stub.url), temperature=None)

    await model.reply(sample_conversation())

    sent = provider_stub.requests[0].json
    assert "temperature" not in sent
    assert sent["max_tokens"] == 256


async def test_joins_the_text_blocks_and_skips_the_others(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    payload = anthropic_body("Two plus two ", "is four.")
    payload["content"].insert(1, {"type": "tool_use", "id": "t1", "name": "calc", "input": {}})
    provider_stub.plan(json_reply(payload))
    model = _model(provider_client, messages_url(provider_stub.url))

    assert await model.reply(sample_conversation()) == Answer("Two plus two is four.")


@pytest.mark.parametrize(
    "payload",
    [
        anthropic_body(),
        {"content": [{"type": "tool_use", "id": "t1", "name": "calc", "input": {}}]},
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        {"content": "4"},
    ],
    ids=["no-blocks", "no-text-block", "error-object", "wrong-type"],
)
async def test_an_answer_without_text_is_model_unavailable(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport, payload: object
) -> None:
    provider_stub.plan(json_reply(payload))
    model = _model(provider_client, messages_url(provider_stub.url))

    with pytest.raises(ModelUnavailable, match="anthropic provider"):
        await model.reply(sample_conversation())
    assert len(provider_stub.requests) == 1


async def test_overloaded_529_is_retried(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(error_reply(529), json_reply(anthropic_body("4")))
    model = _model(provider_client, messages_url(provider_stub.url))

    assert await model.reply(sample_conversation()) == Answer("4")
    assert len(provider_stub.requests) == 2


async def test_the_answer_carries_the_providers_token_counts(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(json_reply(anthropic_body("4", usage=(27, 5))))
    model = _model(provider_client, messages_url(provider_stub.url))

    assert await model.reply(sample_conversation()) == Answer("4", Usage(27, 5, "provider"))
