"""Hugging Face text generation (Inference API model URL or a TGI `/generate` endpoint).

The prompt is the Mistral-Instruct chat template; that template has no system role, so
the system prompt goes in front of the first user turn.
"""

import re
from urllib.parse import urlsplit

import httpx
import msgspec

from adapters.llm.http_call import ProviderEndpoint, RetryPolicy, bearer
from domain.conversation import Conversation

PROVIDER = "the huggingface provider"

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


class _Request(msgspec.Struct):
    inputs: str
    parameters: _Parameters


class _Generated(msgspec.Struct):
    generated_text: str


class HuggingFaceModel:
    """max_tokens and temperature None are not sent: the server's defaults apply. The model is
    named by the URL, so its path stands for the model in error reports."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        url: str,
        api_key: str,
        max_tokens: int | None,
        temperature: float | None,
        policy: RetryPolicy,
    ) -> None:
        self._endpoint = ProviderEndpoint(
            transport, url=url, headers=bearer(api_key), policy=policy, provider=PROVIDER,
            model=urlsplit(url).path, secret=api_key,
        )  # fmt: skip
        self._parameters = _Parameters(False, max_new_tokens=max_tokens)
        if temperature is not None:
            # TGI rejects temperature 0; greedy decoding is what 0 means.
            self._parameters.do_sample = temperature > 0
            self._parameters.temperature = temperature if temperature > 0 else None
        self._encode = msgspec.json.Encoder().encode
        self._decoder = msgspec.json.Decoder(list[_Generated] | _Generated)

    async def reply(self, conversation: Conversation) -> str:
        prompt = mistral_prompt(conversation)
        raw = await self._endpoint.post(self._encode(_Request(prompt, self._parameters)))
        answer = self._endpoint.decode(self._decoder, raw)
        if isinstance(answer, list):
            if not answer:
                return self._endpoint.usable_text(None)
            answer = answer[0]
        # Some servers ignore return_full_text and echo the prompt first.
        return self._endpoint.usable_text(answer.generated_text.removeprefix(prompt).strip())
