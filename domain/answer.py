"""What a model answers: the text, and what it cost in tokens."""

from collections.abc import Iterable
from typing import Literal

import msgspec

# A rough rule for English text; counted on text, not on a model's own tokenizer.
CHARS_PER_TOKEN = 4

UsageSource = Literal["provider", "estimate"]


class Usage(msgspec.Struct, frozen=True):
    input_tokens: int
    output_tokens: int
    source: UsageSource = "provider"


class Answer(msgspec.Struct, frozen=True):
    """A whole reply; `usage` is None when the provider did not count it. `model` names the
    configured model that answered, once the routing knows it."""

    text: str
    usage: Usage | None = None
    model: str | None = None


def estimate_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def estimate_usage(prompt: Iterable[str], reply: str) -> Usage:
    """Used where the provider sends no counts, and always for a stopped reply."""
    return Usage(sum(estimate_tokens(t) for t in prompt), estimate_tokens(reply), "estimate")
