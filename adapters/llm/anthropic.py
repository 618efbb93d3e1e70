"""Anthropic's Messages API: system prompt as a top-level field, text content blocks."""

import httpx
import msgspec

from adapters.llm.http_call import RetryPolicy, decode_answer, post_json, usable_text
from domain.conversation import Conversation

PROVIDER = "the anthropic provider"
API_VERSION = "2023-06-01"


class _Message(msgspec.Struct):
    role: str
    content: str


class _Request(msgspec.Struct, omit_defaults=True):
    model: str
    max_tokens: int
    messages: list[_Message]
    system: str | None = None
    temperature: float | None = None


class _Block(msgspec.Struct):
    type: str
    text: str = ""


class _Answer(msgspec.Struct):
    content: list[_Block]


def messages_url(api_url: str) -> str:
    """Accept `https://api.anthropic.com`, `.../v1` or the full `.../v1/messages`."""
    url = api_url.rstrip("/")
    if url.endswith("/v1/messages"):
        return url
    return f"{url}/messages" if url.endswith("/v1") else f"{url}/v1/messages"


class AnthropicModel:
    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        url: str,
        api_key: str,
        model: str,
        max_tokens: int,
        temperature: float,
        policy: RetryPolicy,
    ) -> None:
        self._transport = transport
        self._url = url
        self._headers = {"x-api-key": api_key, "anthropic-version": API_VERSION}
        self._model = model
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._policy = policy
        self._encode = msgspec.json.Encoder().encode
        self._decoder = msgspec.json.Decoder(_Answer)

    async def reply(self, conversation: Conversation) -> str:
        request = _Request(
            model=self._model,
            max_tokens=self._max_tokens,
            messages=[_Message(m.role, m.content) for m in conversation.messages],
            system=conversation.system_prompt,
            temperature=self._temperature,
        )
        raw = await post_json(
            self._transport, self._url, body=self._encode(request), headers=self._headers,
            policy=self._policy, provider=PROVIDER,
        )  # fmt: skip
        answer = decode_answer(self._decoder, raw, PROVIDER)
        return usable_text("".join(b.text for b in answer.content if b.type == "text"), PROVIDER)
