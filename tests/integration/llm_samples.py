"""What the provider tests send: a short conversation, retries fast enough for a test, and
each remote provider's adapter pointed at a stand-in."""

from datetime import UTC, datetime

import httpx

from adapters.llm.anthropic import AnthropicModel, messages_url
from adapters.llm.http_call import RetryPolicy
from adapters.llm.huggingface import HuggingFaceModel
from adapters.llm.openai import OpenAIChatModel, chat_completions_url
from application.ports import LanguageModel
from domain.conversation import Conversation
from domain.message import Message

FAST = RetryPolicy(max_retries=2, timeout_seconds=2.0, backoff_base=0.01, backoff_cap=0.05)
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def sample_conversation(system: str | None = "Be brief.") -> Conversation:
    return Conversation(
        system,
        (
            Message("user", "Hi", NOW),
            Message("assistant", "Hello!", NOW),
            Message("user", "What is 2+2?", NOW),
        ),
    )


def provider_model(
    provider: str,
    client: httpx.AsyncBaseTransport,
    base_url: str,
    *,
    api_key: str,
    policy: RetryPolicy = FAST,
) -> LanguageModel:
    """`provider`'s adapter (openai, anthropic, or huggingface at a TGI /generate) on base_url."""
    if provider == "openai":
        return OpenAIChatModel(
            client, url=chat_completions_url(base_url), api_key=api_key, model="gpt-4o-mini",
            max_tokens=32, temperature=0.2, policy=policy,
        )  # fmt: skip
    if provider == "anthropic":
        return AnthropicModel(
            client, url=messages_url(base_url), api_key=api_key, model="claude-3-5-haiku-latest",
            max_tokens=32, temperature=0.2, policy=policy,
        )  # fmt: skip
    return HuggingFaceModel(
        client, url=f"{base_url}/generate", api_key=api_key, max_tokens=32, temperature=0.2,
        policy=policy,
    )  # fmt: skip
