"""OpenAI-compatible Chat Completions: OpenAI, Mistral, Groq, vLLM, Ollama, TGI Messages API..."""

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, get_args

import httpx
import msgspec

from adapters.llm.http_call import ProviderEndpoint, RetryPolicy, bearer, no_retry_hook
from adapters.llm.provider_error import ProviderRefused, ProviderSaid
from adapters.llm.sse import SseEvent
from adapters.llm.token_limit import TokenLimitParameter
from application.errors import ContextTooLong
from domain.answer import Answer, Usage
from domain.conversation import Conversation

log = logging.getLogger(__name__)

PROVIDER = "the openai-compatible provider"

# Error types and codes, inside a stream, that another attempt may get past: OpenAI's
# server_error and rate limits, vLLM's exception names and status codes.
_RETRYABLE = frozenset(
    {"server_error", "rate_limit_exceeded", "requests", "tokens", "InternalServerError",
     "ServiceUnavailableError", "429", "500", "502", "503", "504"}
)  # fmt: skip


class _Message(msgspec.Struct, gc=False):  # untracked, as domain.message.Message is
    role: str
    content: str


class _StreamOptions(msgspec.Struct):
    include_usage: bool


class _Request(msgspec.Struct, omit_defaults=True):
    messages: list[_Message]
    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    stream: bool = False
    stream_options: _StreamOptions | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def counted(self) -> Usage | None:
        if self.prompt_tokens is None or self.completion_tokens is None:
            return None
        return Usage(self.prompt_tokens, self.completion_tokens, "provider")


class _AnswerMessage(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _AnswerMessage


class _Answer(msgspec.Struct):
    choices: list[_Choice]
    usage: _Usage | None = None


class _Delta(msgspec.Struct):
    content: str | None = None


class _ChunkChoice(msgspec.Struct):
    delta: _Delta | None = None


class _Chunk(msgspec.Struct):
    """A `chat.completion.chunk`; with include_usage, the last one has no choices and the
    usage, and the others `"usage": null`. An error line has only `error`."""

    choices: list[_ChunkChoice] | None = None
    usage: _Usage | None = None
    error: Any = None


def chat_completions_url(api_url: str) -> str:
    """Accept a base URL (`https://api.openai.com/v1`) or the full endpoint."""
    url = api_url.rstrip("/")
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


def _names(said: ProviderSaid, parameter: str) -> bool:
    return said.param == parameter or parameter in said.message


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
    (vLLM, Ollama, llama.cpp, TGI) keep getting `max_tokens`. None is never sent.

    A stream asks for the usage (`stream_options.include_usage`); a server that rejects the
    option (a 400 naming it, whatever max_tokens_parameter says) is asked again without it,
    and never again with it in this process. A server that ignores it sends no usage."""

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
        on_retry: Callable[[], None] = no_retry_hook,
        max_tokens_parameter: TokenLimitParameter = "auto",
    ) -> None:
        if max_tokens_parameter not in get_args(TokenLimitParameter):
            raise ValueError(f"unknown max_tokens_parameter {max_tokens_parameter!r}")
        self._endpoint = ProviderEndpoint(
            transport, url=url, headers=bearer(api_key), policy=policy, provider=PROVIDER,
            model=model, secret=api_key, on_retry=on_retry,
        )  # fmt: skip
        self._model = model or None
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._learns = max_tokens_parameter == "auto"
        self._limit_name = "max_tokens" if self._learns else max_tokens_parameter
        self._sends_temperature = True
        self._asks_usage = True
        self._encode = msgspec.json.Encoder().encode
        self._decoder = msgspec.json.Decoder(_Answer)
        self._chunk_decoder = msgspec.json.Decoder(_Chunk)

    async def reply(self, conversation: Conversation) -> Answer:
        answer = self._endpoint.decode(self._decoder, await self._post(_messages(conversation)))
        usage = answer.usage.counted() if answer.usage else None
        if not answer.choices:
            return Answer(self._endpoint.usable_text(None), usage)
        return Answer(self._endpoint.usable_text(answer.choices[0].message.content), usage)

    async def stream(self, conversation: Conversation) -> AsyncGenerator[str | Usage, None]:
        """A refusal comes before the first delta, so a resend never repeats text."""
        messages = _messages(conversation)
        while True:
            sent = self._request(messages, streaming=True)
            items = self._endpoint.stream(self._encode(sent), self._read)
            try:
                async with aclosing(items):
                    async for item in items:
                        yield item
                return
            except ProviderRefused as refusal:
                if not self._learn(refusal, sent):
                    raise

    async def _read(self, events: AsyncIterator[SseEvent]) -> AsyncGenerator[str | Usage, None]:
        async for event in events:
            if event.data == b"[DONE]":
                return
            chunk = self._endpoint.decode(self._chunk_decoder, event.data)
            if chunk.error is not None:
                raise self._endpoint.reported(event.data, _RETRYABLE)
            if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content
            if chunk.usage is not None and (usage := chunk.usage.counted()) is not None:
                yield usage

    async def _post(self, messages: list[_Message]) -> bytes:
        """Each parameter is learnt at most once, so this resends at most twice."""
        while True:
            sent = self._request(messages)
            try:
                return await self._endpoint.post(self._encode(sent))
            except ProviderRefused as refusal:
                if not self._learn(refusal, sent):
                    raise

    def _request(self, messages: list[_Message], *, streaming: bool = False) -> _Request:
        request = _Request(messages, self._model, stream=streaming)
        if streaming and self._asks_usage:
            request.stream_options = _StreamOptions(include_usage=True)
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
        only the first logs. A context-length refusal names max_tokens too, but leaving it out
        would not shorten the prompt."""
        if refusal.status != 400 or isinstance(refusal, ContextTooLong):
            return False
        learnt = False
        if sent.stream_options is not None and _names(refusal.said, "stream_options"):
            learnt = True
            if self._asks_usage:
                self._asks_usage = False
                log.warning(
                    "%s refuses stream_options%s; streaming without it from now on, and "
                    "estimating the usage of streamed replies",
                    PROVIDER, _for_model(self._model),
                )  # fmt: skip
        if not self._learns:
            return learnt
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


def _messages(conversation: Conversation) -> list[_Message]:
    system = conversation.system_prompt
    turns = [_Message(m.role, m.content) for m in conversation.messages]
    return [_Message("system", system), *turns] if system else turns


def _for_model(model: str | None) -> str:
    return f" for model {model}" if model else ""
