"""OpenAI-compatible Chat Completions, against the stub provider over loopback."""

import asyncio
import logging

import httpx
import pytest

from adapters.llm.openai import OpenAIChatModel, chat_completions_url
from adapters.llm.provider_error import ProviderRefused
from adapters.llm.token_limit import TokenLimitParameter
from application.errors import ModelUnavailable
from domain.answer import Answer, Usage
from tests.integration.llm_samples import FAST, sample_conversation
from tests.support.provider_stub import (
    ProviderStub,
    Reply,
    json_reply,
    openai_body,
    openai_error,
    openai_max_tokens_refused,
    openai_reasoning_model,
    openai_temperature_unknown,
)


def _model(
    client: httpx.AsyncBaseTransport,
    url: str,
    *,
    api_key: str = "sk-test-secret",
    model: str = "gpt-4o-mini",
    max_tokens: int | None = 128,
    temperature: float | None = 0.3,
    max_tokens_parameter: TokenLimitParameter = "auto",
) -> OpenAIChatModel:
    return OpenAIChatModel(
        client, url=url, api_key=api_key, model=model, max_tokens=max_tokens,
        temperature=temperature, policy=FAST, max_tokens_parameter=max_tokens_parameter,
    )  # fmt: skip


async def test_sends_a_chat_completion_request_and_returns_the_answer(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(json_reply(openai_body("4")))
    model = _model(provider_client, chat_completions_url(f"{provider_stub.url}/v1"))

    assert await model.reply(sample_conversation()) == Answer("4")

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

    first = await model.reply(sample_conversation())
    second = await model.reply(sample_conversation())
    assert [first.text, second.text] == ["one", "two"]
    assert [r.connection for r in provider_stub.requests] == [1, 1]


async def test_replies_from_a_stub_serving_from_its_own_thread(
    provider_stub_thread: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """How the end-to-end tests run it, beside a service in a subprocess."""
    provider_stub_thread.plan(json_reply(openai_body("from the thread")))
    model = _model(provider_client, chat_completions_url(provider_stub_thread.url))

    assert await model.reply(sample_conversation()) == Answer("from the thread")
    assert len(provider_stub_thread.requests) == 1


async def test_none_for_max_tokens_and_temperature_sends_neither(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """Leaves both to the model's defaults: what a reasoning model needs."""
    provider_stub.plan(json_reply(openai_body("ok")))
    model = _model(
        provider_client, chat_completions_url(provider_stub.url), max_tokens=None, temperature=None
    )

    await model.reply(sample_conversation())

    assert provider_stub.requests[0].json.keys() == {"model", "messages"}


# --- reasoning models (o-series, GPT-5): max_completion_tokens, the default temperature ----------

MAX_TOKENS_HINT = "max_tokens_parameter = max_completion_tokens in [llm] of config.ini"
TEMPERATURE_HINT = "Leave temperature empty in [llm] of config.ini"


def _sampling(request_json: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in request_json.items() if k not in ("model", "messages")}


async def test_auto_learns_a_reasoning_models_parameters_from_its_refusals_once(
    provider_stub: ProviderStub,
    provider_client: httpx.AsyncBaseTransport,
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider_stub.default = openai_reasoning_model("4")
    model = _model(provider_client, chat_completions_url(provider_stub.url), model="gpt-5-mini")

    assert await model.reply(sample_conversation()) == Answer("4")
    assert await model.reply(sample_conversation()) == Answer("4")

    assert [_sampling(r.json) for r in provider_stub.requests] == [
        {"max_tokens": 128, "temperature": 0.3},  # refused: max_tokens
        {"max_completion_tokens": 128, "temperature": 0.3},  # refused: temperature
        {"max_completion_tokens": 128},
        {"max_completion_tokens": 128},  # the next turn asks right the first time
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert MAX_TOKENS_HINT in warnings[0]
    assert "gpt-5-mini" in warnings[0]
    assert TEMPERATURE_HINT in warnings[1]


async def test_concurrent_turns_all_resend_and_the_lesson_is_logged_once(
    provider_stub: ProviderStub,
    provider_client: httpx.AsyncBaseTransport,
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider_stub.default = openai_reasoning_model("4")
    model = _model(provider_client, chat_completions_url(provider_stub.url))

    answers = await asyncio.gather(*(model.reply(sample_conversation()) for _ in range(5)))

    assert answers == [Answer("4")] * 5
    assert [_sampling(r.json) for r in provider_stub.requests].count(
        {"max_completion_tokens": 128}
    ) == 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum(MAX_TOKENS_HINT in w for w in warnings) == 1, warnings
    assert sum(TEMPERATURE_HINT in w for w in warnings) == 1, warnings


async def test_auto_drops_a_temperature_the_model_does_not_take_at_all(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """o1 and o3-mini refuse the parameter itself, not only its value."""
    provider_stub.plan(openai_temperature_unknown(), json_reply(openai_body("ok")))
    model = _model(provider_client, chat_completions_url(provider_stub.url), max_tokens=None)

    assert await model.reply(sample_conversation()) == Answer("ok")

    assert [_sampling(r.json) for r in provider_stub.requests] == [{"temperature": 0.3}, {}]


async def test_max_completion_tokens_when_configured_is_sent_from_the_first_request(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.default = openai_reasoning_model("ok")
    model = _model(
        provider_client,
        chat_completions_url(provider_stub.url),
        temperature=None,
        max_tokens_parameter="max_completion_tokens",
    )

    assert await model.reply(sample_conversation()) == Answer("ok")

    assert [_sampling(r.json) for r in provider_stub.requests] == [{"max_completion_tokens": 128}]


async def test_max_tokens_when_configured_is_never_switched(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """A server that wants max_tokens said so in config; its refusal is reported as is."""
    provider_stub.plan(openai_max_tokens_refused(), json_reply(openai_body("never sent")))
    model = _model(
        provider_client, chat_completions_url(provider_stub.url), max_tokens_parameter="max_tokens"
    )

    with pytest.raises(ProviderRefused, match="Unsupported parameter: 'max_tokens'"):
        await model.reply(sample_conversation())

    assert len(provider_stub.requests) == 1


async def test_a_max_tokens_out_of_range_is_reported_not_switched(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """The value is the user's to fix; max_completion_tokens would be refused the same."""
    too_large = (
        "max_tokens is too large: 100000. This model supports at most 16384 completion tokens, "
        "whereas you provided 100000."
    )
    provider_stub.plan(openai_error(400, too_large, param="max_tokens"))
    model = _model(provider_client, chat_completions_url(provider_stub.url))

    with pytest.raises(ProviderRefused, match="max_tokens is too large"):
        await model.reply(sample_conversation())

    assert len(provider_stub.requests) == 1


async def test_a_server_that_takes_max_tokens_keeps_getting_it(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """vLLM, Ollama, llama.cpp and TGI never refuse it, so auto never switches."""
    provider_stub.default = json_reply(openai_body("ok"))
    model = _model(provider_client, chat_completions_url(provider_stub.url))

    for _ in range(3):
        await model.reply(sample_conversation())

    assert [_sampling(r.json) for r in provider_stub.requests] == [
        {"max_tokens": 128, "temperature": 0.3}
    ] * 3


async def test_the_answer_carries_the_providers_token_counts(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(json_reply(openai_body("4", usage=(31, 1))))
    model = _model(provider_client, chat_completions_url(provider_stub.url))

    assert await model.reply(sample_conversation()) == Answer("4", Usage(31, 1, "provider"))
