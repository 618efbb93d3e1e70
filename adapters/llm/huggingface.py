"""Hugging Face text generation (Inference API model URL or a TGI `/generate` endpoint).

The prompt is the Mistral-Instruct chat template; that template has no system role, so
the system prompt goes in front of the first user turn.

A streamed reply goes to the streaming twin of the configured URL: a TGI URL ending in
`/generate` becomes `/generate_stream` (TGI's own streaming route, same body); any other
URL (an Inference API model URL, a TGI root, whose `/` route reads the same field) is
posted to as configured, with `"stream": true` in the body. Both answer TGI's events.
"""

import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec

from adapters.llm.http_call import ProviderEndpoint, RetryPolicy, bearer, no_retry_hook
from adapters.llm.sse import SseEvent
from domain.answer import Answer, Usage
from domain.conversation import Conversation

PROVIDER = "the huggingface provider"

# TGI's error types, inside a stream, that another attempt may get past: a full queue, and a
# shard that failed mid-generation.
_RETRYABLE = frozenset({"overloaded", "incomplete_generation"})

_CONTROL_TOKEN = re.compile(r"</?s>|\[/?INST\]", re.IGNORECASE)


def _neutralise(text: str) -> str:
    """Turn template control tokens typed by a user into look-alikes the model reads as text."""
    return _CONTROL_TOKEN.sub(lambda m: m.group().translate(str.maketrans("[]<>", "()()")), text)


def mistral_prompt(conversation: Conversation) -> str:
    """`<s>[INST] u1 [/INST] a1</s>[INST] u2 [/INST]`, the conversation ending on a user turn."""
    parts = ["<s>"]
    system = conversation.system_prompt
    for message in conversation.messages:
        content = _neutralise(message.content)
        if message.role == "user":
            if system:
                content, system = f"{system}\n\n{content}", None
            parts.append(f"[INST] {content} [/INST]")
        else:
            parts.append(f" {content}</s>")
    return "".join(parts)


class _Parameters(msgspec.Struct, omit_defaults=True):
    return_full_text: bool  # required, so always sent: the Inference API defaults to true
    max_new_tokens: int | None = None
    temperature: float | None = None
    do_sample: bool | None = None


class _Request(msgspec.Struct, omit_defaults=True):
    inputs: str
    parameters: _Parameters
    stream: bool = False


class _Details(msgspec.Struct):
    """TGI counts the generated tokens; the prompt's only in some versions and forks."""

    generated_tokens: int | None = None
    input_length: int | None = None
    prompt_tokens: int | None = None

    def counted(self) -> Usage | None:
        prompt = self.input_length if self.input_length is not None else self.prompt_tokens
        if prompt is None or self.generated_tokens is None:
            return None
        return Usage(prompt, self.generated_tokens, "provider")


class _Generated(msgspec.Struct):
    generated_text: str
    details: _Details | None = None


class _Token(msgspec.Struct):
    text: str = ""
    special: bool = False


class _StreamEvent(msgspec.Struct):
    """One generated token; the last event also has the whole `generated_text` and
    `details`. An error has `error` and `error_type` instead."""

    token: _Token | None = None
    details: _Details | None = None
    error: Any = None


def stream_url(url: str) -> str | None:
    """TGI's `/generate_stream` for a `/generate` URL; None: the URL itself, with "stream"."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if not path.endswith("/generate"):
        return None
    return urlunsplit(parts._replace(path=f"{path}_stream"))


class HuggingFaceModel:
    """max_tokens and temperature None are not sent: the server's defaults apply. The model is
    named by the URL, so its path stands for the model in error reports. Usage is the
    server's only when it counts both prompt and reply (some TGI versions, in a stream's
    last event); otherwise there is none, and the service estimates it."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        url: str,
        api_key: str,
        max_tokens: int | None,
        temperature: float | None,
        policy: RetryPolicy,
        on_retry: Callable[[], None] = no_retry_hook,
    ) -> None:
        streams_to = stream_url(url)
        self._endpoint = ProviderEndpoint(
            transport, url=url, headers=bearer(api_key), policy=policy, provider=PROVIDER,
            model=urlsplit(url).path, secret=api_key, on_retry=on_retry, stream_url=streams_to,
        )  # fmt: skip
        self._asks_stream = streams_to is None  # /generate_stream streams without being asked
        self._parameters = _Parameters(False, max_new_tokens=max_tokens)
        if temperature is not None:
            # TGI rejects temperature 0; greedy decoding is what 0 means.
            self._parameters.do_sample = temperature > 0
            self._parameters.temperature = temperature if temperature > 0 else None
        self._encode = msgspec.json.Encoder().encode
        self._decoder = msgspec.json.Decoder(list[_Generated] | _Generated)
        self._event = msgspec.json.Decoder(_StreamEvent)

    async def reply(self, conversation: Conversation) -> Answer:
        prompt = mistral_prompt(conversation)
        raw = await self._endpoint.post(self._encode(_Request(prompt, self._parameters)))
        answer = self._endpoint.decode(self._decoder, raw)
        if isinstance(answer, list):
            if not answer:
                return Answer(self._endpoint.usable_text(None))
            answer = answer[0]
        # Some servers ignore return_full_text and echo the prompt first.
        text = self._endpoint.usable_text(answer.generated_text.removeprefix(prompt).strip())
        return Answer(text, answer.details.counted() if answer.details else None)

    def stream(self, conversation: Conversation) -> AsyncGenerator[str | Usage, None]:
        request = _Request(mistral_prompt(conversation), self._parameters, self._asks_stream)
        return self._endpoint.stream(self._encode(request), self._read)

    async def _read(self, events: AsyncIterator[SseEvent]) -> AsyncGenerator[str | Usage, None]:
        """Special tokens (`</s>`) are not text; the reply starts at its first visible
        character, as the whole reply is stripped."""
        started = False
        async for event in events:
            data = self._endpoint.decode(self._event, event.data)
            if data.error is not None:
                raise self._endpoint.reported(event.data, _RETRYABLE)
            if data.token is not None and not data.token.special:
                text = data.token.text if started else data.token.text.lstrip()
                if text:
                    started = True
                    yield text
            if data.details is not None:
                if (usage := data.details.counted()) is not None:
                    yield usage
                return
