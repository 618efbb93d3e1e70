"""Why a provider call failed, as the model router needs to know it: a context-length refusal
is a ContextTooLong with the counts the provider gave (never retried here), any other
rejected request (a 4xx but 429) a ModelRejected, and a 429 or 5xx after its retries neither.

The real adapters against `windowed` stand-ins, which count prompts with `stub_tokens` and
refuse as each provider does, and against each provider's error shapes byte for byte.
"""

import httpx
import pytest

from adapters.llm.http_call import ReportedInStream
from adapters.llm.openai import OpenAIChatModel, chat_completions_url
from adapters.llm.provider_error import ProviderRefused
from adapters.llm.token_limit import TokenLimitParameter
from application.errors import ContextTooLong, ModelRejected, ModelTimeout, ModelUnavailable
from application.ports import LanguageModel
from domain.answer import Usage
from tests.integration.llm_samples import FAST, provider_model, sample_conversation
from tests.support.provider_stub import (
    ProviderStub,
    Reply,
    anthropic_error,
    huggingface_error,
    json_reply,
    openai_error,
    openai_rate_limited,
    openai_reasoning_model,
    openai_unknown_model,
    openai_wrong_key,
    windowed,
)

KEY = "sk-context-test-0123456789abcdef"
MAX_TOKENS = 32  # what provider_model asks each adapter to send
# sample_conversation() in stub_tokens: four chat messages (the system prompt is one) of
# 3, 1, 2 and 6 tokens plus 4 each; TGI's Mistral prompt, markup and all, has 33.
PROMPT = {"openai": 28, "anthropic": 28, "huggingface": 33}
ANSWER = "Two plus two is four."
ANSWER_TOKENS = 6
WIDE = 100  # a window the sample fits with its max_tokens
NARROW = 40  # one it fits only without them

PROVIDERS = ["openai", "anthropic", "huggingface"]
CALLS = ["reply", "stream"]


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(params=CALLS)
def call(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def _model(provider: str, client: httpx.AsyncBaseTransport, base_url: str) -> LanguageModel:
    return provider_model(provider, client, base_url, api_key=KEY)


async def _ask(model: LanguageModel, call: str) -> tuple[str, Usage | None]:
    """The reply's text and usage, by reply() or by stream()."""
    if call == "reply":
        answer = await model.reply(sample_conversation())
        return answer.text, answer.usage
    deltas: list[str] = []
    usage = None
    async for item in model.stream(sample_conversation()):
        if isinstance(item, Usage):
            usage = item
        else:
            deltas.append(item)
    return "".join(deltas), usage


async def _failure(model: LanguageModel, call: str) -> ModelUnavailable:
    with pytest.raises(ModelUnavailable) as caught:
        await _ask(model, call)
    assert not isinstance(caught.value, ModelTimeout)
    return caught.value


# --- the window: refused as too long, once, with the counts --------------------------------


async def test_an_over_window_request_is_context_too_long_after_one_request(
    provider: str,
    call: str,
    provider_stub: ProviderStub,
    provider_client: httpx.AsyncBaseTransport,
) -> None:
    stand_in = windowed(provider, NARROW)
    provider_stub.default = stand_in

    failure = await _failure(_model(provider, provider_client, provider_stub.url), call)

    assert isinstance(failure, ContextTooLong)
    assert isinstance(failure, ProviderRefused)  # the status and the provider's words
    assert not isinstance(failure, ModelRejected)
    assert (failure.input_tokens, failure.limit_tokens) == (PROMPT[provider], NARROW)
    assert stand_in.largest_prompt == PROMPT[provider]
    assert (stand_in.refused, len(provider_stub.requests)) == (1, 1)


async def test_a_context_refusal_reads_as_before(
    provider: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """The 502's detail is the provider's own sentence, with the real counts in it."""
    provider_stub.default = windowed(provider, NARROW)

    failure = await _failure(_model(provider, provider_client, provider_stub.url), "reply")

    prompt = PROMPT[provider]
    said = {
        "openai": f"the openai-compatible provider rejected the request (HTTP 400, model "
        f"gpt-4o-mini): This model's maximum context length is {NARROW} tokens. However, you "
        f"requested {prompt + MAX_TOKENS} tokens ({prompt} in the messages, {MAX_TOKENS} in "
        "the completion). Please reduce the length of the messages or completion.",
        "anthropic": "the anthropic provider rejected the request (HTTP 400, model "
        f"claude-3-5-haiku-latest): input length and `max_tokens` exceed context limit: "
        f"{prompt} + {MAX_TOKENS} > {NARROW}, decrease input length or `max_tokens` and try "
        "again",
        "huggingface": "the huggingface provider rejected the request (HTTP 422, model "
        "/generate): Input validation error: `inputs` tokens + `max_new_tokens` must be <= "
        f"{NARROW}. Given: {prompt} `inputs` tokens and {MAX_TOKENS} `max_new_tokens`",
    }
    assert str(failure) == said[provider]


async def test_an_over_window_stream_refused_in_band_is_context_too_long(
    provider: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """TGI reports a validation error as the first event of a 200 stream."""
    stand_in = windowed(provider, NARROW, in_band=True)
    provider_stub.default = stand_in

    failure = await _failure(_model(provider, provider_client, provider_stub.url), "stream")

    assert isinstance(failure, ContextTooLong)
    assert isinstance(failure, ReportedInStream)
    assert not isinstance(failure, ModelRejected)
    assert "reported an error in its stream" in str(failure)
    assert (failure.input_tokens, failure.limit_tokens) == (PROMPT[provider], NARROW)
    assert len(provider_stub.requests) == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_prompt_alone_over_the_window_is_worded_apart_and_still_counted(
    provider: str, call: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """OpenAI without max_tokens: "your messages resulted in"; Anthropic: "prompt is too long"."""
    window = 20
    provider_stub.default = windowed(provider, window)
    if provider == "openai":
        model: LanguageModel = OpenAIChatModel(
            provider_client, url=chat_completions_url(provider_stub.url), api_key=KEY,
            model="gpt-4o-mini", max_tokens=None, temperature=None, policy=FAST,
        )  # fmt: skip
    else:
        model = _model(provider, provider_client, provider_stub.url)

    failure = await _failure(model, call)

    wording = {"openai": "your messages resulted in 28 tokens", "anthropic": "prompt is too long"}
    assert wording[provider] in str(failure)
    assert isinstance(failure, ContextTooLong)
    assert (failure.input_tokens, failure.limit_tokens) == (PROMPT[provider], window)
    assert len(provider_stub.requests) == 1


async def test_a_request_within_the_window_is_answered_with_the_stand_ins_counts(
    provider: str,
    call: str,
    provider_stub: ProviderStub,
    provider_client: httpx.AsyncBaseTransport,
) -> None:
    stand_in = windowed(provider, WIDE, answer=ANSWER)
    provider_stub.default = stand_in

    text, usage = await _ask(_model(provider, provider_client, provider_stub.url), call)

    assert text == ANSWER
    if provider == "huggingface" and call == "reply":
        assert usage is None  # TGI counts nothing in a whole answer it was not asked details of
    elif provider == "huggingface":
        assert usage == Usage(PROMPT[provider], ANSWER_TOKENS + 1)  # with the end-of-sequence
    else:
        assert usage == Usage(PROMPT[provider], ANSWER_TOKENS)
    assert stand_in.largest_prompt + MAX_TOKENS <= WIDE
    assert stand_in.refused == 0


# --- the wordings each provider uses ------------------------------------------------------------


def _vllm_top_level(message: str) -> Reply:
    """vLLM's older error body: the message at the top level, code the status."""
    body = {
        "object": "error",
        "message": message,
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
    return json_reply(body, 400)


def _vllm(message: str) -> Reply:
    return openai_error(400, message, kind="BadRequestError")


@pytest.mark.parametrize(
    ("provider", "reply", "counts"),
    [
        (
            "openai",
            _vllm_top_level(
                "This model's maximum context length is 8192 tokens. However, your request has "
                "9000 input tokens. Please reduce the length of the input messages."
            ),
            (9000, 8192),
        ),
        (
            "openai",
            _vllm(
                "'max_tokens' or 'max_completion_tokens' is too large: 500. This model's maximum "
                "context length is 8192 tokens and your request has 7800 input tokens (500 > "
                "8192 - 7800)."
            ),
            (7800, 8192),
        ),
        (
            "openai",
            _vllm(
                "You passed 9000 input tokens and requested 500 output tokens. However, the "
                "model's context length is only 8192 tokens, resulting in a maximum input length "
                "of 7692 tokens. Please reduce the length of the input prompt. "
                "(parameter=input_tokens, value=9000)"
            ),
            (9000, 8192),
        ),
        (
            "openai",
            openai_error(
                400,
                "This endpoint's maximum context length is 8192 tokens. However, you requested "
                "about 12000 tokens (10000 of text input, 2000 in the output). Please reduce the "
                'length of either one, or use the "middle-out" transform to compress your prompt '
                "automatically.",
                code="400",
            ),
            (10000, 8192),
        ),
        (
            "openai",
            openai_error(400, "Too many tokens in the request.", code="context_length_exceeded"),
            (None, None),
        ),
        (
            "anthropic",
            anthropic_error(
                400, "invalid_request_error", "prompt is too long: 208310 tokens > 200000 maximum"
            ),
            (208310, 200000),
        ),
        (
            "huggingface",
            huggingface_error(
                422,
                "Input validation error: `inputs` must have less than 4096 tokens. Given: 4545",
                "validation",
            ),
            (4545, 4096),
        ),
    ],
    ids=[
        "vllm-input",
        "vllm-max-tokens",
        "vllm-passed",
        "openrouter",
        "openai-code-only",
        "anthropic-prompt",
        "tgi-input-length",
    ],
)
async def test_each_known_wording_is_context_too_long_with_its_counts(
    provider: str,
    reply: Reply,
    counts: tuple[int | None, int | None],
    provider_stub: ProviderStub,
    provider_client: httpx.AsyncBaseTransport,
) -> None:
    provider_stub.default = reply

    failure = await _failure(_model(provider, provider_client, provider_stub.url), "reply")

    assert isinstance(failure, ContextTooLong)
    assert (failure.input_tokens, failure.limit_tokens) == counts
    assert len(provider_stub.requests) == 1


# --- rejected: the request itself, not the moment --------------------------------------------

REJECTIONS: dict[str, dict[int, Reply]] = {
    "openai": {
        400: openai_error(
            400,
            "Invalid value: 'robot'. Supported values are: 'system', 'assistant', 'user', "
            "'function', 'tool', and 'developer'.",
            param="messages[1].role",
            code="invalid_value",
        ),
        401: openai_wrong_key(KEY),
        404: openai_unknown_model("gpt-4o-mini"),
    },
    "anthropic": {
        400: anthropic_error(
            400,
            "invalid_request_error",
            'messages: roles must alternate between "user" and '
            '"assistant", but found multiple "user" roles in a row',
        ),
        401: anthropic_error(401, "authentication_error", "invalid x-api-key"),
        404: anthropic_error(404, "not_found_error", "model: claude-3-5-haiku-latest"),
    },
    "huggingface": {
        400: huggingface_error(
            422, "Input validation error: `temperature` must be strictly positive", "validation"
        ),
        401: huggingface_error(401, "Invalid username or password."),
        404: huggingface_error(404, "Model mistralai/Mistral-7B-Instruct-v0.9 does not exist"),
    },
}


@pytest.mark.parametrize("status", [400, 401, 404], ids=["invalid", "401", "404"])
async def test_a_rejected_request_is_model_rejected_after_one_request(
    provider: str,
    call: str,
    status: int,
    provider_stub: ProviderStub,
    provider_client: httpx.AsyncBaseTransport,
) -> None:
    provider_stub.default = REJECTIONS[provider][status]

    failure = await _failure(_model(provider, provider_client, provider_stub.url), call)

    assert isinstance(failure, ModelRejected)
    assert isinstance(failure, ProviderRefused)
    assert not isinstance(failure, ContextTooLong)
    assert len(provider_stub.requests) == 1


def _busy(provider: str, status: int) -> Reply:
    if provider == "openai":
        if status == 429:
            return openai_rate_limited("gpt-4o-mini")
        said = "The server had an error while processing your request."
        return openai_error(500, said, kind="server_error")
    if provider == "anthropic":
        if status == 429:
            said = "Number of request tokens has exceeded your per-minute rate limit"
            return anthropic_error(429, "rate_limit_error", said)
        return anthropic_error(500, "api_error", "Internal server error")
    if status == 429:
        return huggingface_error(429, "Rate limit reached. Please try again later.")
    return huggingface_error(500, "Request failed during generation: Server error", "generation")


@pytest.mark.parametrize("status", [429, 500])
async def test_rate_limits_and_server_errors_are_unavailable_after_retries_not_rejected(
    provider: str,
    call: str,
    status: int,
    provider_stub: ProviderStub,
    provider_client: httpx.AsyncBaseTransport,
) -> None:
    provider_stub.default = _busy(provider, status)

    failure = await _failure(_model(provider, provider_client, provider_stub.url), call)

    assert isinstance(failure, ProviderRefused)
    assert failure.status == status
    assert not isinstance(failure, ModelRejected)
    assert not isinstance(failure, ContextTooLong)
    assert len(provider_stub.requests) == FAST.max_retries + 1


# --- OpenAI's learnt refusals -----------------------------------------------------------------


def _reasoning_model(
    client: httpx.AsyncBaseTransport, base_url: str, parameter: TokenLimitParameter
) -> LanguageModel:
    return OpenAIChatModel(
        client, url=chat_completions_url(base_url), api_key=KEY, model="o3-mini",
        max_tokens=MAX_TOKENS, temperature=None, policy=FAST, max_tokens_parameter=parameter,
    )  # fmt: skip


async def test_a_refusal_learnt_from_is_resent_not_rejected(
    provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    provider_stub.default = openai_reasoning_model("reasoned answer")
    model = _reasoning_model(provider_client, provider_stub.url, "auto")

    text, _ = await _ask(model, "reply")

    assert text == "reasoned answer"
    assert len(provider_stub.requests) == 2


async def test_the_same_refusal_not_learnt_from_is_rejected(
    call: str, provider_stub: ProviderStub, provider_client: httpx.AsyncBaseTransport
) -> None:
    """max_tokens set in config: the refusal is the configuration's fault, reported as is."""
    provider_stub.default = openai_reasoning_model("never sent")
    model = _reasoning_model(provider_client, provider_stub.url, "max_tokens")

    failure = await _failure(model, call)

    assert isinstance(failure, ModelRejected)
    assert "Unsupported parameter: 'max_tokens'" in str(failure)
    assert len(provider_stub.requests) == 1
