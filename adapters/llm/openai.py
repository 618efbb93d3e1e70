"""OpenAI-compatible Chat Completions: OpenAI, Mistral, Groq, vLLM, Ollama, TGI Messages API..."""

import logging
from typing import get_args

import httpx
import msgspec

from adapters.llm.http_call import ProviderEndpoint, RetryPolicy, bearer
from adapters.llm.provider_error import ProviderRefused, ProviderSaid
from adapters.llm.token_limit import TokenLimitParameter
from domain.conversation import Conversation

log = logging.getLogger(__name__)

PROVIDER = "the openai-compatible provider"


class _Message(msgspec.Struct):
    role: str
    content: str


class _Request(msgspec.Struct, omit_defaults=True):
    messages: list[_Message]
    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None


class _AnswerMessage(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _AnswerMessage


class _Answer(msgspec.Struct):
    choices: list[_Choice]


def chat_completions_url(api_url: str) -> str:
    """Accept a base URL (`https://api.openai.com/v1`) or the full endpoint."""
    url = api_url.rstrip("/")
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


def _refuses(said: ProviderSaid, parameter: str) -> bool:
    """The provider says it does not take `parameter` (or this value of it), as OpenAI words
    it: `param` names it and `code` is unsupported_parameter or unsupported_value. An
    out-of-range value ("max_tokens is too large") is the user's to fix, not a refusal."""
    named = said.param == parameter or f"'{parameter}'" in said.message
    return named and (
        (said.code or "").startswith("unsupported") or "supported" in said.message.lower()
    )


class OpenAIChatModel:
    """OpenAI's reasoning models (o-series, GPT-5) refuse `max_tokens` (they take
    `max_completion_tokens`) and any temperature but their default. With max_tokens_parameter
    "auto" the first such refusal is answered at once by a resend that leaves the refused
    parameter out, and that is remembered for the process; servers that never refuse
    (vLLM, Ollama, llama.cpp, TGI) keep getting `max_tokens`. None is never sent."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        url: str,
        api_key: str,
        model: str,
        max_tokens: int | None,
        temperature: float | None,
        policy: RetryPolicy,
        max_tokens_parameter: TokenLimitParameter = "auto",
    ) -> None:
        if max_tokens_parameter not in get_args(TokenLimitParameter):
            raise ValueError(f"unknown max_tokens_parameter {max_tokens_parameter!r}")
        self._endpoint = ProviderEndpoint(
            transport, url=url, headers=bearer(api_key), policy=policy, provider=PROVIDER,
            model=model, secret=api_key,
        )  # fmt: skip
        self._model = model or None
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._learns = max_tokens_parameter == "auto"
        self._limit_name = "max_tokens" if self._learns else max_tokens_parameter
        self._sends_temperature = True
        self._encode = msgspec.json.Encoder().encode
        self._decoder = msgspec.json.Decoder(_Answer)

    async def reply(self, conversation: Conversation) -> str:
        messages = (
            [_Message("system", conversation.system_prompt)] if conversation.system_prompt else []
        )
        messages += [_Message(m.role, m.content) for m in conversation.messages]
        answer = self._endpoint.decode(self._decoder, await self._post(messages))
        if not answer.choices:
            return self._endpoint.usable_text(None)
        return self._endpoint.usable_text(answer.choices[0].message.content)

    async def _post(self, messages: list[_Message]) -> bytes:
        """Each parameter is learnt at most once, so this resends at most twice."""
        while True:
            sent = self._request(messages)
            try:
                return await self._endpoint.post(self._encode(sent))
            except ProviderRefused as refusal:
                if not self._learn(refusal, sent):
                    raise

    def _request(self, messages: list[_Message]) -> _Request:
        request = _Request(messages, self._model)
        if self._limit_name == "max_tokens":
            request.max_tokens = self._max_tokens
        else:
            request.max_completion_tokens = self._max_tokens
        if self._sends_temperature:
            request.temperature = self._temperature
        return request

    def _learn(self, refusal: ProviderRefused, sent: _Request) -> bool:
        """Whether `sent` carried a parameter the provider refuses; from now on it is left out.
        Concurrent requests may all be refused before the first learns: each resends, and
        only the first logs."""
        if not self._learns or refusal.status != 400:
            return False
        learnt = False
        if sent.max_tokens is not None and _refuses(refusal.said, "max_tokens"):
            learnt = True
            if self._limit_name == "max_tokens":
                self._limit_name = "max_completion_tokens"
                log.warning(
                    "%s refuses max_tokens%s; sending max_completion_tokens from now on. Set "
                    "max_tokens_parameter = max_completion_tokens in [llm] of config.ini to "
                    "skip this first refusal",
                    PROVIDER, _for_model(self._model),
                )  # fmt: skip
        if sent.temperature is not None and _refuses(refusal.said, "temperature"):
            learnt = True
            if self._sends_temperature:
                self._sends_temperature = False
                log.warning(
                    "%s refuses temperature %g%s; sending none from now on (the model's "
                    "default). Leave temperature empty in [llm] of config.ini to skip this "
                    "first refusal",
                    PROVIDER, sent.temperature, _for_model(self._model),
                )  # fmt: skip
        return learnt


def _for_model(model: str | None) -> str:
    return f" for model {model}" if model else ""
