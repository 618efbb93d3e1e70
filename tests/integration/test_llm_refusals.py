"""A provider's refusal as the user reads it (the 502's detail and the log line are this text):
which status, which configured model, and the provider's own words, cut short and key-free.
Each provider's error shape is played byte for byte by the stand-in."""

import time

import httpx
import pytest

from adapters.llm.anthropic import AnthropicModel, messages_url
from adapters.llm.huggingface import HuggingFaceModel
from adapters.llm.openai import OpenAIChatModel, chat_completions_url
from adapters.llm.provider_error import MESSAGE_CHARS
from application.errors import ModelTimeout, ModelUnavailable
from application.ports import LanguageModel
from domain.answer import Answer
from tests.integration.llm_samples import FAST, sample_conversation
from tests.support.provider_stub import (
    OPENAI_KEY_PAGE,
    ProviderStub,
    Reply,
    anthropic_error,
    cut_mid_body,
    huggingface_error,
    json_reply,
    openai_body,
    openai_context_too_long,
    openai_error,
    openai_rate_limited,
    openai_unknown_model,
    openai_wrong_key,
    trickle,
)

KEY = "sk-proj-Refusal0Test1Key2Abcd3Efgh4Ijkl5Mnop"
OPENAI = "the openai-compatible provider"
ANTHROPIC = "the anthropic provider"
HUGGINGFACE = "the huggingface provider"
HF_MODEL = "/models/mistralai/Mistral-7B-Instruct-v0.3"


def _openai(
    client: httpx.AsyncBaseTransport, base: str, model: str = "gpt-4o-mini"
) -> LanguageModel:
    return OpenAIChatModel(
        client, url=chat_completions_url(f"{base}/v1"), api_key=KEY, model=model,
        max_tokens=64, temperature=0.2, policy=FAST,
    )  # fmt: skip


def _anthropic(client: httpx.AsyncBaseTransport, base: str) -> LanguageModel:
    return AnthropicModel(
        client, url=messages_url(base), api_key=KEY, model="claude-3-5-haiku-latest",
        max_tokens=64, temperature=0.2, policy=FAST,
    )  # fmt: skip


def _huggingface(
    client: httpx.AsyncBaseTransport, base: str, path: str = HF_MODEL
) -> LanguageModel:
    return HuggingFaceModel(
        client, url=f"{base}{path}?wait_for_model=true", api_key=KEY, max_tokens=64,
        temperature=0.2, policy=FAST,
    )  # fmt: skip


async def _refusal(model: LanguageModel) -> str:
    with pytest.raises(ModelUnavailable) as caught:
        await model.reply(sample_conversation())
    assert not isinstance(caught.value, ModelTimeout)  # a 502, not a 504
    return str(caught.value)


# --- each provider's error shape ---------------------------------------------------------------


async def test_openai_wrong_key_says_the_credentials_were_refused_without_the_key(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(openai_wrong_key(KEY))

    report = await _refusal(_openai(provider_client, provider_stub.url))

    assert report == (
        f"{OPENAI} refused the credentials (HTTP 401, model gpt-4o-mini): Incorrect API key "
        f"provided: [redacted]. You can find your API key at {OPENAI_KEY_PAGE}."
    )
    assert len(provider_stub.requests) == 1


async def test_openai_unknown_model_says_the_model_or_url_was_not_found(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(openai_unknown_model("gpt-5-nanno"))

    report = await _refusal(_openai(provider_client, provider_stub.url, model="gpt-5-nanno"))

    assert report == (
        f"{OPENAI} found no such URL or model (HTTP 404, model gpt-5-nanno, URL "
        f"{provider_stub.url}/v1/chat/completions): The model `gpt-5-nanno` does not exist or "
        "you do not have access to it."
    )


async def test_openai_context_overflow_says_what_the_provider_said(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(openai_context_too_long())

    report = await _refusal(_openai(provider_client, provider_stub.url))

    assert report == (
        f"{OPENAI} rejected the request (HTTP 400, model gpt-4o-mini): This model's maximum "
        "context length is 128000 tokens. However, your messages resulted in 130017 tokens. "
        "Please reduce the length of the messages."
    )


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            anthropic_error(401, "authentication_error", "invalid x-api-key"),
            "refused the credentials (HTTP 401, model claude-3-5-haiku-latest): invalid x-api-key",
        ),
        (
            anthropic_error(
                403,
                "permission_error",
                "Your API key does not have permission to use the specified resource.",
            ),
            "refused the credentials (HTTP 403, model claude-3-5-haiku-latest): Your API key "
            "does not have permission to use the specified resource.",
        ),
        (
            anthropic_error(404, "not_found_error", "model: claude-3-5-haiku-latest"),
            "found no such URL or model (HTTP 404, model claude-3-5-haiku-latest, URL "
            "{url}/v1/messages): model: claude-3-5-haiku-latest",
        ),
        (
            anthropic_error(
                400, "invalid_request_error", "prompt is too long: 208310 tokens > 200000 maximum"
            ),
            "rejected the request (HTTP 400, model claude-3-5-haiku-latest): prompt is too long: "
            "208310 tokens > 200000 maximum",
        ),
    ],
    ids=["401", "403", "404", "400-too-long"],
)
async def test_anthropic_refusals_say_what_anthropic_said(
    provider_stub: ProviderStub,
    provider_client: httpx.AsyncBaseTransport,
    reply: Reply,
    expected: str,
) -> None:
    provider_stub.plan(reply)

    report = await _refusal(_anthropic(provider_client, provider_stub.url))

    assert report == f"{ANTHROPIC} {expected.format(url=provider_stub.url)}"


@pytest.mark.parametrize(
    ("path", "reply", "expected"),
    [
        (
            HF_MODEL,
            huggingface_error(401, "Invalid username or password."),
            f"refused the credentials (HTTP 401, model {HF_MODEL}): Invalid username or password.",
        ),
        (
            "/generate",
            huggingface_error(
                422,
                "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. "
                "Given: 4000 `inputs` tokens and 512 `max_new_tokens`",
                "validation",
            ),
            "rejected the request (HTTP 422, model /generate): Input validation error: `inputs` "
            "tokens + `max_new_tokens` must be <= 4096. Given: 4000 `inputs` tokens and 512 "
            "`max_new_tokens`",
        ),
        (
            HF_MODEL,
            huggingface_error(
                400,
                [
                    "Error in `parameters.max_new_tokens`: ensure this value is less than or "
                    "equal to 250",
                    "Error in `parameters.top_k`: ensure this value is greater than 0",
                ],
            ),
            f"rejected the request (HTTP 400, model {HF_MODEL}): Error in "
            "`parameters.max_new_tokens`: ensure this value is less than or equal to 250; "
            "Error in `parameters.top_k`: ensure this value is greater than 0",
        ),
    ],
    ids=["inference-api-401", "tgi-422", "error-list"],
)
async def test_hugging_face_refusals_name_the_model_url_path_and_say_what_it_said(
    provider_stub: ProviderStub,
    provider_client: httpx.AsyncBaseTransport,
    path: str,
    reply: Reply,
    expected: str,
) -> None:
    provider_stub.plan(reply)

    report = await _refusal(_huggingface(provider_client, provider_stub.url, path))

    assert report == f"{HUGGINGFACE} {expected}"  # the URL's query is not part of the model


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            Reply(403, b"Forbidden: blocked by egress policy\n", {"content-type": "text/plain"}),
            "refused the credentials (HTTP 403, model gpt-4o-mini): Forbidden: blocked by egress "
            "policy",
        ),
        (
            Reply(
                404,
                b"<html><head><title>404 Not Found</title></head><body><center><h1>404 Not "
                b"Found</h1></center><hr><center>nginx</center></body></html>",
                {"content-type": "text/html"},
            ),
            "found no such URL or model (HTTP 404, model gpt-4o-mini, URL "
            "{url}/v1/chat/completions): 404 Not Found",
        ),
        (Reply(400), "rejected the request (HTTP 400, model gpt-4o-mini)"),
        (
            Reply(301, headers={"location": "https://api.example.com/v1/chat/completions"}),
            "redirected the request elsewhere (HTTP 301, model gpt-4o-mini, URL "
            "{url}/v1/chat/completions)",
        ),
    ],
    ids=["plain-text", "html-page", "empty", "redirect"],
)
async def test_a_proxy_in_front_of_the_provider_is_reported_as_plainly(
    provider_stub: ProviderStub,
    provider_client: httpx.AsyncBaseTransport,
    reply: Reply,
    expected: str,
) -> None:
    provider_stub.plan(reply)

    report = await _refusal(_openai(provider_client, provider_stub.url))

    assert report == f"{OPENAI} {expected.format(url=provider_stub.url)}"


# --- once the retries are spent ----------------------------------------------------------------


async def test_rate_limited_to_the_last_retry_says_what_the_provider_said(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.default = openai_rate_limited("gpt-4o-mini")

    report = await _refusal(_openai(provider_client, provider_stub.url))

    assert report.startswith(
        f"{OPENAI} refused more requests for now (HTTP 429, model gpt-4o-mini): Rate limit "
        "reached for gpt-4o-mini in organization org-Stub0rg4n1zat10nId on requests per min"
    )
    assert len(provider_stub.requests) == FAST.max_retries + 1


async def test_overloaded_to_the_last_retry_says_what_the_provider_said(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.default = anthropic_error(529, "overloaded_error", "Overloaded")

    report = await _refusal(_anthropic(provider_client, provider_stub.url))

    assert report == f"{ANTHROPIC} failed (HTTP 529, model claude-3-5-haiku-latest): Overloaded"
    assert len(provider_stub.requests) == FAST.max_retries + 1


# --- no key, one short line ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "leaked",
    [
        KEY,  # the configured key itself
        KEY[:24],  # its leading part, as a provider that cuts it echoes it
        "sk-proj-********************************************abcd",  # OpenAI's masked form
        "sk-Vkm1s***************************************wjh3",
        "sk-ant-api03-R2D2C3P0r2d2c3p0R2D2C3P0r2d2c3p0-AbCdEfGhIjKl",
        "hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567",
        "gsk_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdef",
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0",
        "d41d8cd98f00b204e9800998ecf8427e3b1f2c8a",  # a key without a known prefix
    ],
    ids=[
        "configured",
        "leading-part",
        "masked-proj",
        "masked",
        "anthropic",
        "hugging-face",
        "groq",
        "bearer",
        "unprefixed",
    ],
)
async def test_anything_key_like_is_removed_from_the_providers_words(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport, leaked: str
) -> None:
    provider_stub.plan(openai_error(401, f"The key '{leaked}' was revoked. Ask your admin."))

    report = await _refusal(_openai(provider_client, provider_stub.url))

    assert report.endswith("): The key '[redacted]' was revoked. Ask your admin.")
    assert leaked not in report


@pytest.mark.parametrize(
    "message",
    [
        "Rate limit for org-9f8e7d6c in region us-east-1; see https://status.example.com/api-keys",
        "max_tokens must be at most 4096 for model meta-llama/Meta-Llama-3.1-8B-Instruct",
        "Bearer token missing from the Authorization header; risk-free retry",
    ],
)
async def test_words_that_only_resemble_keys_stay(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport, message: str
) -> None:
    provider_stub.plan(openai_error(400, message))

    report = await _refusal(_openai(provider_client, provider_stub.url))

    assert report.endswith(f"): {message}")


async def test_a_long_or_multi_line_message_becomes_one_short_line(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    message = "first line\r\n\tsecond\x1b[31m line " + "very long " * 500
    provider_stub.plan(openai_error(400, message))

    report = await _refusal(_openai(provider_client, provider_stub.url))

    said = report.split("): ", 1)[1]
    assert said.startswith("first line second [31m line very long very long")
    assert len(said) == MESSAGE_CHARS
    assert said.endswith("…")


# --- the error body is read within bounds --------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_10_mib_error_body_is_read_only_in_part(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport, chunked: bool
) -> None:
    body = b'{"error": {"message": "' + b"x" * (10 * 1024 * 1024) + b'"}}'
    provider_stub.plan(Reply(400, body, {"content-type": "application/json"}, chunked=chunked))

    started = time.monotonic()
    report = await _refusal(_openai(provider_client, provider_stub.url))

    assert time.monotonic() - started < 1.0
    assert report.startswith(f"{OPENAI} rejected the request (HTTP 400, model gpt-4o-mini): ")
    assert len(report) < 2 * MESSAGE_CHARS


async def test_a_trickling_error_body_reports_the_status_with_what_arrived(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """The status is known at once; its explanation is not worth the whole deadline."""
    provider_stub.plan(trickle(openai_context_too_long(), interval=0.1, chunk_size=8))

    started = time.monotonic()
    report = await _refusal(_openai(provider_client, provider_stub.url))

    assert time.monotonic() - started < FAST.timeout_seconds
    assert report.startswith(f'{OPENAI} rejected the request (HTTP 400, model gpt-4o-mini): {{ "')
    assert len(provider_stub.requests) == 1


async def test_an_error_body_cut_by_a_reset_reports_the_status(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(cut_mid_body(openai_context_too_long()))

    report = await _refusal(_openai(provider_client, provider_stub.url))

    assert report.startswith(f"{OPENAI} rejected the request (HTTP 400, model gpt-4o-mini)")
    assert len(provider_stub.requests) == 1


async def test_a_5xx_cut_by_a_reset_is_still_retried(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(
        cut_mid_body(openai_error(503, "upstream busy", kind="server_error")),
        json_reply(openai_body("4")),
    )

    model = _openai(provider_client, provider_stub.url)
    assert await model.reply(sample_conversation()) == Answer("4")
    assert len(provider_stub.requests) == 2


async def test_an_error_body_that_is_not_utf_8_is_still_reported(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.plan(Reply(400, b'{"error": {"message": "caf\xe9 is \xc3"}}'))

    report = await _refusal(_openai(provider_client, provider_stub.url))

    assert report.endswith("(HTTP 400, model gpt-4o-mini): caf\ufffd is \ufffd")
