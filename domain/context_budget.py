"""What of a conversation a model is sent: the newest part that fits its context window.

Tokens are estimated from characters at a rate each model's own usage reports calibrate, so
the estimate converges on the model's tokenizer without shipping one. Counting is one len()
per message: it never holds the event loop, however long the history.
"""

import math
from collections.abc import Sequence
from typing import NamedTuple

from domain.conversation import Conversation, build_conversation, prompt_texts
from domain.message import Message

# Until a provider's counts calibrate it: more tokens per character than English text has
# (about 1/4), so that a first guess sends a little less rather than too much.
DEFAULT_TOKENS_PER_CHAR = 1 / 3
MESSAGE_TOKENS = 4  # a message's role and delimiters, as chat formats and templates add them
MARGIN_FRACTION = 0.03  # of the window, for the estimate's error on one conversation
UNSET_REPLY_TOKENS = 512  # room kept for the reply when max_tokens is not sent


class TokenEstimate(NamedTuple):
    tokens_per_char: float = DEFAULT_TOKENS_PER_CHAR

    def of(self, text: str) -> int:
        """One message's tokens."""
        return math.ceil(len(text) * self.tokens_per_char) + MESSAGE_TOKENS

    def of_conversation(self, conversation: Conversation) -> int:
        return sum(self.of(text) for text in prompt_texts(conversation))


def input_budget(context_tokens: int, max_tokens: int | None) -> int | None:
    """The tokens a prompt may take in a window of context_tokens (None: unknown, no limit):
    what the reply and a margin leave. It may be zero or less: nothing fits."""
    if context_tokens <= 0:
        return None
    margin = math.ceil(context_tokens * MARGIN_FRACTION)
    reply = max_tokens if max_tokens is not None else UNSET_REPLY_TOKENS
    return context_tokens - reply - margin


def fit_conversation(
    system_prompt: str | None,
    history: Sequence[Message],
    question: Message,
    *,
    budget: int | None,
    estimate: TokenEstimate,
) -> Conversation | None:
    """The system prompt, the newest stored messages that fit `budget` with it and the
    question, starting on a user turn, then the question; None when the system prompt and
    the question alone do not fit. The stored history itself is never changed."""
    if budget is None:
        return build_conversation(system_prompt, history, question)
    used = estimate.of(question.content) + (estimate.of(system_prompt) if system_prompt else 0)
    if used > budget:
        return None
    start = len(history)
    while start > 0:
        used += estimate.of(history[start - 1].content)
        if used > budget:
            break
        start -= 1
    return build_conversation(system_prompt, history[start:], question)


def prompt_size(conversation: Conversation) -> tuple[int, int]:
    """(characters, messages) of what a model reads, to calibrate tokens per character
    from the input tokens a provider counted for it."""
    texts = list(prompt_texts(conversation))
    return sum(len(text) for text in texts), len(texts)
