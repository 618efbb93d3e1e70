"""The configured models in order of preference: which one is asked, and what it is sent."""

import asyncio
import contextlib
import contextvars
import functools
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from application.errors import (
    ContextTooLong,
    HistoryUnavailable,
    ModelNotFound,
    ModelRejected,
    ModelTimeout,
    ModelUnavailable,
)
from application.ports import LanguageModel, ModelHealth, ModelStatus, TokenSample
from application.telemetry import (
    UNOBSERVED,
    FallbackReason,
    ModelCall,
    ModelOutcome,
    Telemetry,
    failure_of,
    outcome_of,
)
from domain.answer import Answer, Usage, estimate_usage
from domain.context_budget import (
    MESSAGE_TOKENS,
    TokenEstimate,
    fit_conversation,
    input_budget,
    prompt_size,
)
from domain.conversation import Conversation, prompt_texts
from domain.errors import InvalidMessage
from domain.message import Message

log = logging.getLogger(__name__)

T = TypeVar("T")

REFRESH_SECONDS = 1.0  # how stale this process's view of the shared health may get
STALE_SECONDS = 10.0  # a view this old (the process was idle) is refreshed before it is used


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """A configured model: its name (as replies report it), the adapter, its window
    (0: unknown) and reply limit, and how long one call may take (a probe's claim)."""

    name: str
    model: LanguageModel
    context_tokens: int = 0
    max_tokens: int | None = None
    call_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class TurnOptions:
    """What a client may ask of one turn besides its message (OpenAI's API does): one
    configured model alone rather than the configured order; instructions, sent after the
    system prompt; and earlier messages, sent after the stored history. For this turn only:
    none of them is stored."""

    model: str | None = None
    instructions: str | None = None
    context: tuple[Message, ...] = ()

    def identity(self) -> tuple[object, ...]:
        """What tells two turns of one message apart, for an Idempotency-Key's fingerprint:
        nothing when every option is left as configured."""
        if self == AS_CONFIGURED:
            return ()
        earlier = [(m.role, m.content) for m in self.context]
        return (self.model, self.instructions, earlier)


AS_CONFIGURED = TurnOptions()


class OpenedStream(NamedTuple):
    """A stream whose first text has arrived: the model that writes it, what it was sent,
    that text, and the rest straight from the adapter (texts, then the provider's Usage if
    it counts one), and `counted`, to be told what the whole reply cost (`cost` tells it)."""

    model: str
    conversation: Conversation
    first: str
    rest: AsyncGenerator[str | Usage, None]
    counted: Callable[[Usage], None]

    def cost(self, reported: Usage | None, text: str) -> Usage:
        """What the reply `text` cost: the provider's count, which calibrates the model's
        estimate, or an estimate when it sent none."""
        usage = reported or estimate_usage(prompt_texts(self.conversation), text)
        self.counted(usage)
        return usage


class _Seen(NamedTuple):
    """A model's shared status as this process last saw it, on its own clock."""

    cooling_until: float | None  # None: up (no cooldown since its last success)
    failures: int
    tokens_per_char: float | None


_UP = _Seen(None, 0, None)


class ModelRouter:
    """Rules:
    - Each model is sent the system prompt, then the newest stored messages that fit its
      window (context_tokens less max_tokens and a margin, by an estimate calibrated from
      that model's own usage reports), starting on a user turn, then the new message. A
      model of unknown window (0) is sent the whole stored history.
    - A message that no model could take even alone is refused before any is asked.
    - Models are asked in order. One whose call failed after its own retries (a timeout, a
      connection error, a 429, a 5xx, an unusable answer) hands the request to the next.
      A context-length refusal is retried once on the same model, trimmed to what the
      provider counted, then handed on. A request the provider rejected as such (another
      4xx) is not: no model is asked again, and the client is told.
    - A stream is handed on only before its first text: the client shows it from then on.
    - A model that keeps failing goes to the end of the line while it cools down
      (ModelHealth, shared by every worker): asked only once every other model has failed,
      so a dead primary costs nothing while a fallback answers, and a lone model is still
      tried by every request. After the cooldown, one request at a time probes it in its
      place, and a success puts it back.
    - Each call is told to the telemetry as it ends (a stream's with its last text), with
      what the reply cost, and each hand-over to another model with its reason.
    - This process's view of the shared health and calibration is refreshed in the
      background at most every refresh_seconds, so that under load no request waits for
      it; only the first request after STALE_SECONDS without any waits for one (a
      process's very first requests take every model as up until its first view lands).
      A store that fails leaves the last view in place. A lone model of unknown window
      needs no view (nothing to choose, nothing to count): then nothing is read.
    - Until the shared calibration has a model's rate, this process's own reports set it.
    - A turn may name one configured model: then it alone is asked (with its own retries,
      no fallback). Its instructions follow the system prompt, and its earlier messages the
      stored history (TurnOptions).
    """

    def __init__(
        self,
        routes: Sequence[ModelRoute],
        health: ModelHealth,
        *,
        system_prompt: str | None = None,
        refresh_seconds: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        telemetry: Telemetry = UNOBSERVED,
    ) -> None:
        if not routes:
            raise ValueError("at least one model is needed")
        self._routes = tuple(routes)
        self._names = [route.name for route in self._routes]
        self._health = health
        self._system_prompt = system_prompt or None
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._telemetry = telemetry
        self._seen: dict[str, _Seen] = {}
        self._seen_at = -math.inf
        self._refreshing: asyncio.Task[None] | None = None
        self._samples: dict[str, TokenSample] = {}  # since the last refresh
        self._learnt_windows: dict[str, int] = {}  # as providers stated them, where unset

    @property
    def names(self) -> list[str]:
        """The configured models, in the order they are asked."""
        return list(self._names)

    def check_fits(self, question: str, options: TurnOptions = AS_CONFIGURED) -> None:
        """Raise InvalidMessage when no model could take `question` even alone, and
        ModelNotFound when options name a model that is not configured."""
        needs = []
        system = self._system(options)
        for route in self._chosen(options):
            budget = self._budget(route)
            if budget is None:
                return
            estimate = self._estimate(route)
            needed = estimate.of(question)
            if system:
                needed += estimate.of(system)
            if needed <= budget:
                return
            needs.append((budget, needed))
        room, needed = max(needs)
        raise InvalidMessage(
            f"message is too long for every configured model: it takes about {needed} "
            f"tokens with the system prompt, and the largest context window leaves room for "
            f"{max(0, room)} besides the reply's max_tokens"
        )

    async def reply(
        self,
        history: Sequence[Message],
        question: Message,
        options: TurnOptions = AS_CONFIGURED,
    ) -> Answer:
        """The first answer a model gives, with its name and usage (estimated when the
        provider counts none)."""

        async def ask(route: ModelRoute, sent: Conversation) -> tuple[Conversation, Answer, float]:
            started = self._clock()
            try:
                answer = await route.model.reply(sent)
            except BaseException as error:
                self._tell(route, outcome_of(error), self._clock() - started)
                raise
            return sent, answer, self._clock() - started

        route, (sent, answer, seconds) = await self._first(history, question, options, ask)
        usage = answer.usage or estimate_usage(prompt_texts(sent), answer.text)
        self._calibrate(route, sent, usage)
        self._tell(route, "ok", seconds, usage=usage)
        return Answer(answer.text, usage, route.name)

    async def stream(
        self,
        history: Sequence[Message],
        question: Message,
        options: TurnOptions = AS_CONFIGURED,
    ) -> OpenedStream:
        """The first model's stream that writes text, once it has."""
        _, opened = await self._first(history, question, options, self._open)
        return opened

    def route(self, name: str) -> ModelRoute:
        """The configured model of that name; ModelNotFound when there is none."""
        for route in self._routes:
            if route.name == name:
                return route
        raise ModelNotFound(
            f"no model is named {name!r}; the configured models are " + ", ".join(self._names)
        )

    def _chosen(self, options: TurnOptions) -> tuple[ModelRoute, ...]:
        return self._routes if options.model is None else (self.route(options.model),)

    def _system(self, options: TurnOptions) -> str | None:
        parts = (self._system_prompt, options.instructions)
        return "\n\n".join(part for part in parts if part) or None

    async def _first(
        self,
        history: Sequence[Message],
        question: Message,
        options: TurnOptions,
        ask: Callable[[ModelRoute, Conversation], Awaitable[T]],
    ) -> tuple[ModelRoute, T]:
        """Ask each model in turn until one answers; a context refusal once more, trimmed."""
        failures: list[tuple[str, ModelUnavailable]] = []
        if options.context:
            history = [*history, *options.context]
        system = self._system(options)
        chosen = self._chosen(options)
        attempts = self._attempts(chosen, system, history, question)
        async with contextlib.aclosing(attempts):  # not left to the loop's finalizer hook
            async for route, sent in attempts:
                self._handed_over(chosen[0], route, failures)
                try:
                    try:
                        answer = await ask(route, sent)
                    except ContextTooLong as error:
                        tighter = self._tighter(route, sent, error, system, history, question)
                        answer = await ask(route, tighter)
                except ModelRejected:
                    raise
                except ModelUnavailable as error:
                    await self._failed(route, error)
                    failures.append((route.name, error))
                    continue
                await self._succeeded(route)
                return route, answer
        try:
            raise self._exhausted(failures)
        finally:
            failures.clear()  # the error's traceback holds this frame: no cycle through it

    async def statuses(self) -> list[tuple[str, ModelStatus]]:
        """Each model's shared status, read now (the last view if the store fails)."""
        with contextlib.suppress(HistoryUnavailable):
            await self._refresh()
        now = self._clock()
        statuses = []
        for name in self._names:
            seen = self._seen.get(name, _UP)
            until = seen.cooling_until
            cooling = 0.0 if until is None else max(0.0, until - now)
            probing = until is not None and cooling == 0
            statuses.append(
                (name, ModelStatus(cooling, probing, seen.failures, seen.tokens_per_char))
            )
        return statuses

    async def close(self) -> None:
        """At shutdown, before the store's client closes: end a refresh in flight, and hand
        the store the calibration samples not yet sent."""
        if self._refreshing is not None and not self._refreshing.done():
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refreshing
        if self._samples:
            with contextlib.suppress(HistoryUnavailable):
                await self._refresh()

    def _handed_over(
        self,
        first: ModelRoute,
        route: ModelRoute,
        failures: list[tuple[str, ModelUnavailable]],
    ) -> None:
        """Tell of a request going to `route` rather than the first in line."""
        if failures:
            name, error = failures[-1]
            self._telemetry.fell_back(name, route.name, failure_of(error))
        elif route is not first:
            cooling = self._seen.get(first.name, _UP).cooling_until is not None
            reason: FallbackReason = "cooldown" if cooling else "context_exceeded"  # did not fit
            self._telemetry.fell_back(first.name, route.name, reason)

    def _tell(
        self,
        route: ModelRoute,
        outcome: ModelOutcome,
        seconds: float,
        first_token_seconds: float | None = None,
        usage: Usage | None = None,
    ) -> None:
        call = ModelCall(route.name, outcome, seconds, first_token_seconds, usage)
        self._telemetry.model_called(call)

    # --- which model, and what it is sent ----------------------------------------------------

    async def _attempts(
        self,
        routes: Sequence[ModelRoute],
        system: str | None,
        history: Sequence[Message],
        question: Message,
    ) -> AsyncGenerator[tuple[ModelRoute, Conversation], None]:
        """The models to ask, in order, each with what it is sent (none it cannot fit): one
        cooling down, or whose probe another request holds, after all the others."""
        await self._fresh_view()
        later = []
        for route in routes:
            conversation = fit_conversation(
                system,
                history,
                question,
                budget=self._budget(route),
                estimate=self._estimate(route),
            )
            if conversation is None:
                continue
            if await self._may_ask(route):
                yield route, conversation
            else:
                later.append((route, conversation))
        for attempt in later:
            yield attempt

    async def _may_ask(self, route: ModelRoute) -> bool:
        seen = self._seen.get(route.name, _UP)
        if seen.cooling_until is None:
            return True
        if self._clock() < seen.cooling_until:
            return False
        try:
            return await self._health.claim_probe(route.name, route.call_seconds)
        except HistoryUnavailable:
            return True  # no one can coordinate a probe: this request tries it

    def _budget(self, route: ModelRoute) -> int | None:
        window = route.context_tokens or self._learnt_windows.get(route.name, 0)
        return input_budget(window, route.max_tokens)

    def _estimate(self, route: ModelRoute) -> TokenEstimate:
        ratio = self._seen.get(route.name, _UP).tokens_per_char
        if ratio is None and (own := self._samples.get(route.name)) is not None:
            ratio = own.tokens / own.chars
        return TokenEstimate() if ratio is None else TokenEstimate(ratio)

    def _tighter(
        self,
        route: ModelRoute,
        sent: Conversation,
        refusal: ContextTooLong,
        system: str | None,
        history: Sequence[Message],
        question: Message,
    ) -> Conversation:
        """What to send after `sent` was refused as too long: trimmed at the rate the
        provider's own count implies (or, without one, to half), in the window it stated.
        Raises the refusal when nothing more can be left out."""
        estimate = self._estimate(route)
        chars, messages = prompt_size(sent)
        if refusal.input_tokens and chars:
            self._note_sample(route, refusal.input_tokens, chars, messages)
            stated = (refusal.input_tokens - MESSAGE_TOKENS * messages) / chars
            harder = TokenEstimate(max(estimate.tokens_per_char, stated))
        else:
            harder = TokenEstimate(estimate.tokens_per_char * 2)
        if refusal.limit_tokens and not route.context_tokens:
            if self._learnt_windows.get(route.name) != refusal.limit_tokens:
                log.warning(
                    "model %s says its context window is %d tokens; using that (set "
                    "context_tokens in its config section to start from it)",
                    route.name, refusal.limit_tokens,
                )  # fmt: skip
            self._learnt_windows[route.name] = refusal.limit_tokens
        budget = self._budget(route)
        if budget is None:
            budget = estimate.of_conversation(sent)
        tighter = fit_conversation(system, history, question, budget=budget, estimate=harder)
        if tighter is None or len(tighter.messages) >= len(sent.messages):
            raise refusal
        return tighter

    async def _open(self, route: ModelRoute, conversation: Conversation) -> OpenedStream:
        started = self._clock()
        deltas = route.model.stream(conversation)
        try:
            first = await _first_text(deltas)
        except BaseException as error:
            await deltas.aclose()
            self._tell(route, outcome_of(error), self._clock() - started)
            raise
        timed = _Timed(deltas, functools.partial(self._tell, route), self._clock, started)
        return OpenedStream(
            route.name,
            conversation,
            first,
            timed,
            functools.partial(self._costed, route, conversation, timed),
        )

    def _costed(self, route: ModelRoute, sent: Conversation, timed: "_Timed", usage: Usage) -> None:
        self._calibrate(route, sent, usage)
        timed.tell(usage)

    # --- health and calibration --------------------------------------------------------------

    async def _failed(self, route: ModelRoute, error: ModelUnavailable) -> None:
        """Count a failure of the model's health (a context-length refusal is the request's)."""
        if isinstance(error, ContextTooLong):  # this request's size, not the model's health
            log.warning("model %s: %s; asking the next model", route.name, error)
            return
        log.warning("model %s failed: %s; asking the next model", route.name, error)
        try:
            status = await self._health.failed(route.name)
        except HistoryUnavailable:
            return
        self._see(route.name, status, self._clock())

    async def _succeeded(self, route: ModelRoute) -> None:
        seen = self._seen.get(route.name, _UP)
        if seen.failures == 0 and seen.cooling_until is None:
            return  # the usual case: nothing to tell the store
        if seen.cooling_until is not None:
            log.warning("model %s answered again; it is back in use", route.name)
        with contextlib.suppress(HistoryUnavailable):
            await self._health.recovered(route.name)
        self._seen[route.name] = _Seen(None, 0, seen.tokens_per_char)

    def _calibrate(self, route: ModelRoute, sent: Conversation, usage: Usage) -> None:
        """The provider's count of a reply's cost calibrates the model's estimate."""
        if usage.source == "provider":
            chars, messages = prompt_size(sent)
            self._note_sample(route, usage.input_tokens, chars, messages)

    def _note_sample(self, route: ModelRoute, tokens: int, chars: int, messages: int) -> None:
        """Input tokens less the messages' fixed share, against the prompt's characters."""
        text_tokens = tokens - MESSAGE_TOKENS * messages
        if text_tokens > 0 and chars > 0:
            self._add_sample(route.name, TokenSample(text_tokens, chars))

    def _add_sample(self, name: str, sample: TokenSample) -> None:
        held = self._samples.get(name, TokenSample(0, 0))
        self._samples[name] = TokenSample(held.tokens + sample.tokens, held.chars + sample.chars)

    async def _fresh_view(self) -> None:
        if len(self._routes) == 1 and self._budget(self._routes[0]) is None:
            return
        age = self._clock() - self._seen_at
        if age < self._refresh_seconds:
            return
        if self._refreshing is None or self._refreshing.done():
            # For every request: not in the context of the one that happened to start it.
            self._refreshing = asyncio.create_task(
                self._refresh_quietly(), context=contextvars.Context()
            )
        if STALE_SECONDS <= age < math.inf:
            await asyncio.shield(self._refreshing)

    async def _refresh_quietly(self) -> None:
        with contextlib.suppress(HistoryUnavailable):  # the last view stays
            await self._refresh()

    async def _refresh(self) -> None:
        samples, self._samples = self._samples, {}
        asked_at = self._clock()
        try:
            statuses = await self._health.statuses(self._names, samples)
        except BaseException:
            for name, sample in samples.items():  # not lost: sent with the next refresh
                self._add_sample(name, sample)
            raise
        self._seen_at = asked_at
        for name, status in statuses.items():
            self._see(name, status, asked_at)

    def _see(self, name: str, status: ModelStatus, at: float) -> None:
        cooling_until = None
        if status.cooling_seconds > 0 or status.probing:  # probing: a cooldown that ran out
            cooling_until = at + status.cooling_seconds
        ratio = status.tokens_per_char or self._seen.get(name, _UP).tokens_per_char
        self._seen[name] = _Seen(cooling_until, status.failures, ratio)

    def _exhausted(self, failures: list[tuple[str, ModelUnavailable]]) -> ModelUnavailable:
        """What the client is told when no model answered."""
        if len(failures) == 1:
            return failures[0][1]
        said = "; ".join(f"{name}: {error}" for name, error in failures)
        if all(isinstance(error, ModelTimeout) for _, error in failures):
            return ModelTimeout(f"every model timed out: {said}")
        return ModelUnavailable(f"every model failed: {said}")


class _Timed(AsyncGenerator[str | Usage, None]):
    """The rest of a stream, timed to its end (exhausted, failed or closed); the call is
    told once, with its cost when it is known (`tell`), else when the stream is closed.
    A class, not a generator function: a generator closed before its first step runs no
    `finally`, and would neither close the provider's stream nor tell its end."""

    def __init__(
        self,
        deltas: AsyncGenerator[str | Usage, None],
        told: Callable[[ModelOutcome, float, float, Usage | None], None],
        clock: Callable[[], float],
        started: float,
    ) -> None:
        self._deltas = deltas
        self._told: Callable[[ModelOutcome, float, float, Usage | None], None] | None = told
        self._clock = clock
        self._started = started
        self._first_token_seconds = clock() - started
        self._ended: tuple[ModelOutcome, float] | None = None

    def _end(self, error: BaseException | None) -> None:
        if self._ended is None:
            outcome = "ok" if error is None else outcome_of(error)
            self._ended = (outcome, self._clock() - self._started)

    def tell(self, usage: Usage | None) -> None:
        """Tell the call, once: how it ended (now, if it has not), and what it cost."""
        self._end(None)
        if self._told is not None and self._ended is not None:
            told, self._told = self._told, None
            outcome, seconds = self._ended
            told(outcome, seconds, self._first_token_seconds, usage)

    async def asend(self, value: None) -> str | Usage:
        try:
            return await self._deltas.asend(value)
        except StopAsyncIteration:
            self._end(None)
            raise
        except BaseException as error:
            self._end(error)
            raise

    async def athrow(self, *args: Any) -> str | Usage:
        try:
            return await self._deltas.athrow(*args)
        except BaseException as error:
            self._end(None if isinstance(error, StopAsyncIteration) else error)
            raise

    async def aclose(self) -> None:
        try:
            await self._deltas.aclose()
        finally:
            self._end(GeneratorExit())
            self.tell(None)


async def _first_text(deltas: AsyncGenerator[str | Usage, None]) -> str:
    async for chunk in deltas:
        if isinstance(chunk, str):
            return chunk
    raise ModelUnavailable("the model answered with an empty reply")
