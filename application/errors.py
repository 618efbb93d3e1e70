"""Failures a use case reports; each names what failed, never a secret."""


class SessionNotFound(LookupError):
    pass


class HistoryUnavailable(RuntimeError):
    """The history store did not answer in time; nothing was changed."""


class ModelUnavailable(RuntimeError):
    """The model's provider failed or answered something unusable."""


class ModelTimeout(ModelUnavailable):
    """The model's provider did not answer within the configured timeout."""


class IdempotencyConflict(RuntimeError):
    """An Idempotency-Key reused for a different request, or its first request still runs."""
