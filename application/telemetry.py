"""What the use cases tell an operator as it happens: each model call, the tokens it cost,
each hand-over to a fallback, each stream and how it ended, each request answered again
from its Idempotency-Key. Metrics and traces are made of these (adapters)."""

import asyncio
from typing import Literal, NamedTuple, Protocol, runtime_checkable

from application.errors import ContextTooLong, ModelTimeout
from domain.answer import Usage

# How a call to a model failed.
Failure = Literal["error", "timeout", "context_exceeded"]
# How one call to one model ended; "cancelled": its caller stopped waiting (a client that
# hung up, a stop request, a shutdown).
ModelOutcome = Literal["ok", Failure, "cancelled"]
# Why a request went to another model than the first in line: the failure of the one
# before it, or "cooldown" when the first was skipped as cooling down.
FallbackReason = Literal[Failure, "cooldown"]
# How a streamed reply ended: done, stopped on request (its text so far stored), error
# (nothing stored), or its client hung up and [llm] stream_on_disconnect is cancel.
StreamOutcome = Literal["done", "error", "stopped", "client_gone"]


class ModelCall(NamedTuple):
    """One call to one model, its retries included, from the request to its end: a
    stream's ends with its last text, and `first_token_seconds` is when its first came.
    `usage`: what its reply cost, counted by the provider or estimated (`usage.source`);
    None when it gave no reply to count."""

    model: str
    outcome: ModelOutcome
    seconds: float
    first_token_seconds: float | None = None
    usage: Usage | None = None


@runtime_checkable
class Telemetry(Protocol):
    def model_called(self, call: ModelCall) -> None:
        """Told once per call, when its cost is known (a stream's: once its client has it)."""
        ...

    def fell_back(self, from_model: str, to_model: str, reason: FallbackReason) -> None: ...

    def stream_started(self) -> None: ...

    def stream_ended(self, outcome: StreamOutcome) -> None: ...

    def replayed(self) -> None:
        """A repeated request (same Idempotency-Key) answered without asking a model."""
        ...


def failure_of(error: BaseException) -> Failure:
    if isinstance(error, ContextTooLong):
        return "context_exceeded"
    if isinstance(error, ModelTimeout):
        return "timeout"
    return "error"


def outcome_of(error: BaseException) -> ModelOutcome:
    """How a call that raised `error` ended."""
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "cancelled"
    return failure_of(error)


class Unobserved:
    """Telemetry that tells no one: for use cases built without an operator's view (tests,
    [metrics] enabled = false)."""

    def model_called(self, call: ModelCall) -> None:
        return None

    def fell_back(self, from_model: str, to_model: str, reason: FallbackReason) -> None:
        return None

    def stream_started(self) -> None:
        return None

    def stream_ended(self, outcome: StreamOutcome) -> None:
        return None

    def replayed(self) -> None:
        return None


UNOBSERVED = Unobserved()
