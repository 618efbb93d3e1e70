"""What the provider tests send: a short conversation, and retries fast enough for a test."""

from datetime import UTC, datetime

from adapters.llm.http_call import RetryPolicy
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
