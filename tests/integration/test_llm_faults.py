"""Provider failures as a user meets them: retried when worth it, reported fast, no key leaked.

The retry and deadline rules live in one place (http_call.ProviderEndpoint), but each adapter wires
them up itself, so every fault is played against every provider.
"""

import logging
import socket
import time
import traceback
from datetime import UTC, datetime

import httpx
import msgspec
import pytest

from adapters.llm.http_call import RetryPolicy
from application.errors import ModelTimeout, ModelUnavailable
from application.ports import LanguageModel
from domain.answer import Answer
from domain.conversation import Conversation
from domain.message import Message
from tests.integration.llm_samples import FAST, provider_model
from tests.support.provider_stub import (
    ProviderStub,
    Reply,
    anthropic_body,
    cut_mid_body,
    error_reply,
    garbage_reply,
    huge_reply,
    huggingface_body,
    json_reply,
    no_headers,
    openai_body,
    slow,
    trickle,
)

SECRET = "sk-fault-test-0123456789abcdef"
QUICK_TIMEOUT = msgspec.structs.replace(FAST, timeout_seconds=0.2)
CONVERSATION = Conversation(
    "Be brief.", (Message("user", "What is 2+2?", datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),)
)


def _model(
    provider: str, client: httpx.AsyncBaseTransport, base_url: str, policy: RetryPolicy = FAST
) -> LanguageModel:
    return provider_model(provider, client, base_url, api_key=SECRET, policy=policy)


def _answer(provider: str, text: str) -> Reply:
    if provider == "openai":
        return json_reply(openai_body(text))
    if provider == "anthropic":
        return json_reply(anthropic_body(text))
    return json_reply(huggingface_body(text))


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture(params=["openai", "anthropic", "huggingface"])
def provider(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.mark.parametrize("status", [500, 503])
async def test_a_server_error_then_success_is_retried(
    provider: str,
    provider_stub: ProviderStub,
    provider_client: httpx.AsyncBaseTransport,
    status: int,
) -> None:
    provider_stub.plan(error_reply(status), _answer(provider, "4"))

    model = _model(provider, provider_client, provider_stub.url)
    assert await model.reply(CONVERSATION) == Answer("4")
    assert len(provider_stub.requests) == 2


async def test_too_many_requests_waits_for_retry_after_then_succeeds(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(error_reply(429, retry_after="1"), _answer("openai", "4"))
    model = _model("openai", provider_client, provider_stub.url)

    started = time.monotonic()
    assert await model.reply(CONVERSATION) == Answer("4")

    assert time.monotonic() - started >= 0.95
    assert len(provider_stub.requests) == 2


async def test_a_huge_retry_after_is_capped(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(error_reply(429, retry_after="3600"), _answer("openai", "4"))
    policy = msgspec.structs.replace(FAST, retry_after_cap=0.05)
    model = _model("openai", provider_client, provider_stub.url, policy)

    started = time.monotonic()
    assert await model.reply(CONVERSATION) == Answer("4")

    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_a_rejected_request_is_not_retried(
    provider: str,
    provider_stub: ProviderStub,
    provider_client: httpx.AsyncBaseTransport,
    status: int,
) -> None:
    provider_stub.plan(error_reply(status), _answer(provider, "never sent"))

    with pytest.raises(ModelUnavailable, match=f"HTTP {status}") as caught:
        await _model(provider, provider_client, provider_stub.url).reply(CONVERSATION)

    assert not isinstance(caught.value, ModelTimeout)  # a 502, not a 504
    assert len(provider_stub.requests) == 1


@pytest.mark.parametrize("max_retries", [0, 1, 3])
async def test_when_retries_run_out_the_model_is_unavailable(
    provider: str,
    provider_stub: ProviderStub,
    provider_client: httpx.AsyncBaseTransport,
    max_retries: int,
) -> None:
    provider_stub.default = error_reply(503)
    policy = msgspec.structs.replace(FAST, max_retries=max_retries)

    with pytest.raises(ModelUnavailable, match="HTTP 503") as caught:
        await _model(provider, provider_client, provider_stub.url, policy).reply(CONVERSATION)

    assert not isinstance(caught.value, ModelTimeout)  # a 502, not a 504
    assert len(provider_stub.requests) == max_retries + 1


@pytest.mark.parametrize(
    "reply",
    [garbage_reply(), json_reply({"unexpected": True}), json_reply([1, 2])],
    ids=["not-json", "wrong-object", "wrong-array"],
)
async def test_an_unusable_body_is_unavailable_and_not_retried(
    provider: str,
    provider_stub: ProviderStub,
    provider_client: httpx.AsyncBaseTransport,
    reply: Reply,
) -> None:
    provider_stub.plan(reply, _answer(provider, "never sent"))

    with pytest.raises(ModelUnavailable) as caught:
        await _model(provider, provider_client, provider_stub.url).reply(CONVERSATION)

    assert not isinstance(caught.value, ModelTimeout)  # a 502, not a 504
    assert len(provider_stub.requests) == 1


@pytest.mark.parametrize("text", ["", "  \n "], ids=["empty", "blank"])
async def test_an_empty_reply_is_unavailable(
    provider: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport, text: str
) -> None:
    provider_stub.plan(_answer(provider, text))

    with pytest.raises(ModelUnavailable, match="empty reply"):
        await _model(provider, provider_client, provider_stub.url).reply(CONVERSATION)


@pytest.mark.parametrize(
    "reply",
    [
        slow(_answer("openai", "late"), 5.0),
        no_headers(),
        trickle(_answer("openai", "late " * 20), interval=0.1, chunk_size=8),
    ],
    ids=["headers-late", "headers-never", "body-trickles"],
)
async def test_a_provider_too_slow_times_out_after_the_deadline_and_not_retried(
    provider: str,
    provider_stub: ProviderStub,
    provider_client: httpx.AsyncBaseTransport,
    reply: Reply,
) -> None:
    """Each attempt has a total deadline; retrying a timeout would multiply the user's wait."""
    provider_stub.plan(reply)
    model = _model(provider, provider_client, provider_stub.url, QUICK_TIMEOUT)

    started = time.monotonic()
    with pytest.raises(ModelTimeout):
        await model.reply(CONVERSATION)

    assert time.monotonic() - started < 1.5
    # Not retried. (On a busy machine the deadline can pass before the stub has read the
    # one request, and the client's hang-up then drops it unread: at most one.)
    assert len(provider_stub.requests) <= 1


async def test_nothing_listening_is_unavailable_after_the_retries(
    provider: str, provider_client: httpx.AsyncBaseTransport
) -> None:
    model = _model(provider, provider_client, f"http://127.0.0.1:{_unused_port()}")

    with pytest.raises(ModelUnavailable, match="could not reach") as caught:
        await model.reply(CONVERSATION)

    assert not isinstance(caught.value, ModelTimeout)  # a 502, not a 504


async def test_a_connection_reset_mid_body_is_retried(
    provider: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(cut_mid_body(_answer(provider, "lost " * 10)), _answer(provider, "4"))

    model = _model(provider, provider_client, provider_stub.url)
    assert await model.reply(CONVERSATION) == Answer("4")
    assert len(provider_stub.requests) == 2


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_over_the_size_cap_is_unavailable(
    provider: str,
    provider_stub: ProviderStub,
    provider_client: httpx.AsyncBaseTransport,
    chunked: bool,
) -> None:
    provider_stub.plan(huge_reply(200_000, chunked=chunked))
    policy = msgspec.structs.replace(FAST, max_response_bytes=1024)

    with pytest.raises(ModelUnavailable, match="over 1024 bytes") as caught:
        await _model(provider, provider_client, provider_stub.url, policy).reply(CONVERSATION)

    assert not isinstance(caught.value, ModelTimeout)  # a 502, not a 504
    assert len(provider_stub.requests) == 1


@pytest.mark.parametrize(
    "fault",
    ["rejected", "exhausted", "not-json", "wrong-shape", "timeout", "refused"],
)
async def test_the_api_key_never_appears_in_an_error_or_a_log(
    provider: str,
    provider_stub: ProviderStub,
    provider_client: httpx.AsyncBaseTransport,
    caplog: pytest.LogCaptureFixture,
    fault: str,
) -> None:
    """Providers echo a bad key back in their error bodies; none of that may reach our logs."""
    echoed = {"error": {"message": f"Incorrect API key provided: {SECRET}"}}
    base_url = provider_stub.url
    if fault == "rejected":
        provider_stub.plan(json_reply(echoed, 401))
    elif fault == "exhausted":
        provider_stub.default = json_reply(echoed, 503)
    elif fault == "not-json":
        provider_stub.plan(Reply(200, f"<html>bad key {SECRET}</html>".encode()))
    elif fault == "wrong-shape":
        provider_stub.plan(json_reply({"choices": SECRET, "content": SECRET, "x": SECRET}))
    elif fault == "timeout":
        provider_stub.plan(slow(json_reply(echoed), 5.0))
    else:
        base_url = f"http://127.0.0.1:{_unused_port()}"
    caplog.set_level(logging.DEBUG)

    with pytest.raises(ModelUnavailable) as caught:
        await _model(provider, provider_client, base_url, QUICK_TIMEOUT).reply(CONVERSATION)

    assert SECRET not in "".join(traceback.format_exception(caught.value))
    assert SECRET not in caplog.text
