"""Hugging Face text generation (Inference API model URL or a TGI `/generate` endpoint).

The prompt is the Mistral-Instruct chat template; that template has no system role, so
the system prompt goes in front of the first user turn.
"""

import re

import httpx
import msgspec

from adapters.llm.http_call import RetryPolicy, decode_answer, post_json, usable_text
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
    max_new_tokens: int
    return_full_text: bool  # required, so always sent: the Inference API defaults to true
    temperature: float | None = None
    do_sample: bool | None = None


class _Request(msgspec.Struct):
    inputs: str
    parameters: _Parameters


class _Generated(msgspec.Struct):
    generated_text: str


class HuggingFaceModel:
    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        url: str,
        api_key: str,
        max_tokens: int,
        temperature: float,
        policy: RetryPolicy,
    ) -> None:
        self._transport = transport
        self._url = url
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        # TGI rejects temperature 0; greedy decoding is what 0 means.
        self._parameters = (
            _Parameters(max_tokens, False, temperature=temperature, do_sample=True)
            if temperature > 0
            else _Parameters(max_tokens, False, do_sample=False)
        )
        self._policy = policy
        self._encode = msgspec.json.Encoder().encode
        self._decoder = msgspec.json.Decoder(list[_Generated] | _Generated)

    async def reply(self, conversation: Conversation) -> str:
        prompt = mistral_prompt(conversation)
        raw = await post_json(
            self._transport, self._url, body=self._encode(_Request(prompt, self._parameters)),
            headers=self._headers, policy=self._policy, provider=PROVIDER,
        )  # fmt: skip
        answer = decode_answer(self._decoder, raw, PROVIDER)
        if isinstance(answer, list):
            if not answer:
                return usable_text(None, PROVIDER)
            answer = answer[0]
        text = answer.generated_text
        # Some servers ignore return_full_text and echo the prompt first.
        return usable_text(text.removeprefix(prompt).strip(), PROVIDER)
