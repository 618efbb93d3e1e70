"""The names an OpenAI-compatible server may take the reply's token limit under. Apart from
the adapter, so that reading the config imports no HTTP client."""

from typing import Literal

# "auto" sends max_tokens until the provider refuses it, then max_completion_tokens.
TokenLimitParameter = Literal["auto", "max_tokens", "max_completion_tokens"]
