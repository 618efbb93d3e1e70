"""Anthropic's Messages API: system prompt as a top-level field, text content blocks."""

from collections.abc import AsyncGenerator, AsyncIterator, Callable

import httpx
import msgspec

from adapters.llm.http_call import ProviderEndpoint, RetryPolicy, no_retry_hook
from adapters.llm.sse import SseEvent
from domain.answer import Answer, Usage
from domain.conversation import Conversation

PROVIDER = "the anthropic provider"
API_VERSION = "2023-06-01"

# Error types, inside a stream, that another attempt may get past (529, 429 and 500 outside).
_RETRYABLE = frozenset({"overloaded_error", "rate_limit_error", "api_error"})


class _Message(msgspec.Struct, gc=False):  # untracked, as domain.message.Message is
    role: str
    content: str


class _Request(msgspec.Struct, omit_defaults=True):
    model: str
    max_tokens: int
    messages: list[_Message]
    system: str | None = None
    temperature: float | None = None
    stream: bool = False


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None


class _Block(msgspec.Struct):
    type: str
    text: str = ""


class _Answer(msgspec.Struct):
    content: list[_Block]
    usage: _Usage | None = None


# --- the stream's events: only the fields read here; the others are skipped -----------------


class _Kind(msgspec.Struct):
    type: str = ""


class _Started(msgspec.Struct):
    usage: _Usage | None = None


class _MessageStart(msgspec.Struct):
    message: _Started


class _TextDelta(msgspec.Struct):
    type: str
    text: str = ""


class _BlockDelta(msgspec.Struct):
    delta: _TextDelta


class _MessageDelta(msgspec.Struct):
    usage: _Usage | None = None


def _counted(input_tokens: int | None, output_tokens: int | None) -> Usage | None:
    if input_tokens is None or output_tokens is None:
        return None
    return Usage(input_tokens, output_tokens, "provider")


def messages_url(api_url: str) -> str:
    """Accept `https://api.anthropic.com`, `.../v1` or the full `.../v1/messages`."""
    url = api_url.rstrip("/")
    if url.endswith("/v1/messages"):
        return url
    return f"{url}/messages" if url.endswith("/v1") else f"{url}/v1/messages"


class AnthropicModel:
    """The Messages API requires max_tokens, so it is always sent; temperature None is not.

    A stream's input tokens come in message_start, its output tokens (a running total) in
    message_delta; text comes from text_delta deltas only (not tool input or thinking).
    Event types added later are skipped, as Anthropic's versioning policy asks."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        url: str,
        api_key: str,
        model: str,
        max_tokens: int,
        temperature: float | None,
        policy: RetryPolicy,
        on_retry: Callable[[], None] = no_retry_hook,
    ) -> None:
        self._endpoint = ProviderEndpoint(
            transport, url=url, headers={"x-api-key": api_key, "anthropic-version": API_VERSION},
            policy=policy, provider=PROVIDER, model=model, secret=api_key, on_retry=on_retry,
        )  # fmt: skip
        self._model = model
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._encode = msgspec.json.Encoder().encode
        self._decoder = msgspec.json.Decoder(_Answer)
        self._kind = msgspec.json.Decoder(_Kind)
        self._start = msgspec.json.Decoder(_MessageStart)
        self._block_delta = msgspec.json.Decoder(_BlockDelta)
        self._message_delta = msgspec.json.Decoder(_MessageDelta)

    async def reply(self, conversation: Conversation) -> Answer:
        raw = await self._endpoint.post(self._encode(self._request(conversation)))
        answer = self._endpoint.decode(self._decoder, raw)
        text = self._endpoint.usable_text(
            "".join(b.text for b in answer.content if b.type == "text")
        )
        usage = answer.usage or _Usage()
        return Answer(text, _counted(usage.input_tokens, usage.output_tokens))

    def stream(self, conversation: Conversation) -> AsyncGenerator[str | Usage, None]:
        body = self._encode(self._request(conversation, streaming=True))
        return self._endpoint.stream(body, self._read)

    def _request(self, conversation: Conversation, *, streaming: bool = False) -> _Request:
        return _Request(
            model=self._model,
            max_tokens=self._max_tokens,
            messages=[_Message(m.role, m.content) for m in conversation.messages],
            system=conversation.system_prompt,
            temperature=self._temperature,
            stream=streaming,
        )

    async def _read(self, events: AsyncIterator[SseEvent]) -> AsyncGenerator[str | Usage, None]:
        decode = self._endpoint.decode
        input_tokens = output_tokens = None
        async for event in events:
            # Anthropic names every event; a proxy that drops the names leaves the data's type.
            kind = event.name if event.name != "message" else decode(self._kind, event.data).type
            if kind == "content_block_delta":
                delta = decode(self._block_delta, event.data).delta
                if delta.type == "text_delta" and delta.text:
                    yield delta.text
            elif kind == "message_start":
                started = decode(self._start, event.data).message.usage
                input_tokens = started.input_tokens if started else None
            elif kind == "message_delta":
                usage = decode(self._message_delta, event.data).usage
                output_tokens = usage.output_tokens if usage else output_tokens
            elif kind == "error":
                raise self._endpoint.reported(event.data, _RETRYABLE)
            elif kind == "message_stop":
                break
        if (counted := _counted(input_tokens, output_tokens)) is not None:
            yield counted
