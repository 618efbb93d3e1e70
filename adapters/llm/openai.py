"""OpenAI-compatible Chat Completions: OpenAI, Mistral, Groq, vLLM, Ollama, TGI Messages API..."""

import httpx
import msgspec

from adapters.llm.http_call import RetryPolicy, decode_answer, post_json, usable_text
from domain.conversation import Conversation

PROVIDER = "the openai-compatible provider"


class _Message(msgspec.Struct):
    role: str
    content: str


class _Request(msgspec.Struct, omit_defaults=True):
    messages: list[_Message]
    model: str | None = None
    max_tokens: int | None = None
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


class OpenAIChatModel:
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
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._model = model or None
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._policy = policy
        self._encode = msgspec.json.Encoder().encode
        self._decoder = msgspec.json.Decoder(_Answer)

    async def reply(self, conversation: Conversation) -> str:
        messages = (
            [_Message("system", conversation.system_prompt)] if conversation.system_prompt else []
        )
        messages += [_Message(m.role, m.content) for m in conversation.messages]
        body = self._encode(_Request(messages, self._model, self._max_tokens, self._temperature))
        raw = await post_json(
            self._transport, self._url, body=body, headers=self._headers, policy=self._policy,
            provider=PROVIDER,
        )  # fmt: skip
        answer = decode_answer(self._decoder, raw, PROVIDER)
        if not answer.choices:
            return usable_text(None, PROVIDER)
        return usable_text(answer.choices[0].message.content, PROVIDER)
