"""Anthropic's Messages API: system prompt as a top-level field, text content blocks."""

import httpx
import msgspec

from adapters.llm.http_call import ProviderEndpoint, RetryPolicy
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
    """The Messages API requires max_tokens, so it is always sent; temperature None is not."""

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
    ) -> None:
        self._endpoint = ProviderEndpoint(
            transport, url=url, headers={"x-api-key": api_key, "anthropic-version": API_VERSION},
            policy=policy, provider=PROVIDER, model=model, secret=api_key,
        )  # fmt: skip
        self._model = model
        self._max_tokens = max_tokens
        self._temperature = temperature
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
        raw = await self._endpoint.post(self._encode(request))
        answer = self._endpoint.decode(self._decoder, raw)
        return self._endpoint.usable_text(
            "".join(b.text for b in answer.content if b.type == "text")
        )
