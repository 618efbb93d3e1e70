"""Failures a use case reports; each names what failed, never a secret."""


class SessionNotFound(LookupError):
    pass


class ModelNotFound(LookupError):
    """A request named a model that is not configured."""


class HistoryUnavailable(RuntimeError):
    """The history store did not answer in time; nothing was changed."""


class ModelUnavailable(RuntimeError):
    """The model's provider failed or answered something unusable."""


class ModelTimeout(ModelUnavailable):
    """The model's provider did not answer within the configured timeout."""


class ModelRejected(ModelUnavailable):
    """The provider rejected the request itself (a 4xx other than 429): the request or this
    model's configuration is wrong, so the next model is not asked and the client is told."""


class ContextTooLong(ModelUnavailable):
    """The provider said the prompt and max_tokens exceed the model's window. What it said
    of the counts, where it said them: the prompt's tokens and the window's."""

    def __init__(
        self, message: str, *, input_tokens: int | None = None, limit_tokens: int | None = None
    ) -> None:
        super().__init__(message)
        self.input_tokens = input_tokens
        self.limit_tokens = limit_tokens


class IdempotencyConflict(RuntimeError):
    """An Idempotency-Key reused for a different request, or its first request still runs."""
