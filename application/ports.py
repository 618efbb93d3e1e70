"""What the use cases need from the world. Each port has a real and an in-memory adapter."""

from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from datetime import datetime
from typing import NamedTuple, Protocol, runtime_checkable

from domain.answer import Answer, Usage
from domain.conversation import Conversation
from domain.idempotency import Receipt, Reply
from domain.message import Message
from domain.reply_events import ReplyEvent
from domain.session import SessionInfo, SessionKey

Clock = Callable[[], datetime]


@runtime_checkable
class ChatHistory(Protocol):
    """Histories, each trimmed to the newest max_messages and expiring after a TTL.

    Failures raise HistoryUnavailable. A write the store never received changes nothing; one
    that timed out waiting for the store's answer may still have landed, whole, and writing
    the same exchange again does not append it twice.
    """

    async def load(self, key: SessionKey) -> list[Message]:
        """The stored messages, oldest first; empty when there is no such session."""
        ...

    async def append_exchange(
        self, key: SessionKey, question: Message, answer: Message, receipt: Receipt | None = None
    ) -> Reply | None:
        """Append both messages atomically, trim, and refresh the session's TTL.

        With a (completed) receipt, it is recorded in the same atomic step, unless a completed
        receipt for that request is there already: then nothing is written and that one's
        reply is returned, so one Idempotency-Key never appends twice.
        """
        ...

    async def delete(self, key: SessionKey) -> None:
        """Forget the session: its messages and what `open` recorded."""
        ...

    async def open(self, key: SessionKey, info: SessionInfo) -> None:
        """Record that the session exists before its first exchange. The record lives as
        long as the history would (the TTL, refreshed by every exchange) and goes with it
        (delete, purge)."""
        ...

    async def info(self, key: SessionKey) -> SessionInfo | None:
        """What `open` recorded, while it lasts; None for a session never opened so."""
        ...

    async def purge(self, written_before: datetime | None = None) -> int:
        """Delete the histories last written before `written_before` (with their `open`
        records), or every history and record when it is None (and nothing else); return
        how many histories were deleted. A history written to
        while the purge runs is kept."""
        ...

    async def ping(self) -> None:
        """Return when the store answers; raise HistoryUnavailable otherwise."""
        ...

    # Receipts of requests made with an Idempotency-Key live with the histories, since a
    # completed receipt is written in the same atomic step as its exchange. A receipt names the
    # session its exchange goes to (`session_id`); a repeat that names none finds the first
    # request's receipt all the same, as long as that one is held or answered.

    async def claim(self, pending: Receipt, ttl_seconds: float) -> Receipt | None:
        """Record `pending` (a receipt without reply) for ttl_seconds, unless a receipt for the
        same request is there: return that one instead. None: the caller owns the request."""
        ...

    async def extend(self, pending: Receipt, ttl_seconds: float) -> None:
        """Keep a claim for another ttl_seconds, if `pending` still holds it."""
        ...

    async def release(self, pending: Receipt) -> None:
        """Forget a claim whose request failed, so a repeat runs again; never a completed one."""
        ...


@runtime_checkable
class LanguageModel(Protocol):
    async def reply(self, conversation: Conversation) -> Answer:
        """The model's next message; raises ModelUnavailable or ModelTimeout."""
        ...

    def stream(self, conversation: Conversation) -> AsyncGenerator[str | Usage, None]:
        """The next message as the provider writes it: non-empty text deltas, then the
        provider's Usage if it counts one. Failures are retried only before the first delta;
        after it they raise ModelUnavailable, or ModelTimeout when no delta came for the
        timeout. Closing the iterator ends the provider's call."""
        ...


class Publication(NamedTuple):
    """A reply's events, to store from seq `published + 1` on: `events` holds the whole
    reply so far (seq = index), and what it holds when the call is made is what is stored,
    whatever is appended meanwhile."""

    key: SessionKey
    reply_id: str
    events: Sequence[ReplyEvent]
    published: int


class Published(NamedTuple):
    upto: int  # the seq of the last event now stored
    stop_requested: bool


class ReplyRead(NamedTuple):
    events: list[ReplyEvent]
    running: bool  # its producer still renews its lease (false once it ended, or died)


@runtime_checkable
class ReplyLog(Protocol):
    """The events of the replies being streamed, kept while they run and `keep_seconds`
    after, readable from every worker. A session's latest reply is the one last started.
    Failures raise HistoryUnavailable."""

    async def publish(self, batch: Sequence[Publication]) -> list[Published]:
        """For each reply of the batch, in one call: store its new events, make it the
        session's latest reply if it is new, and renew its producer's lease (which ends with
        a terminal event). Should the store have lost what was published (a restart),
        everything is stored again."""
        ...

    async def latest(self, key: SessionKey) -> str | None:
        """The session's latest reply, while it runs or is kept."""
        ...

    async def read(
        self, key: SessionKey, reply_id: str, after: int, wait_seconds: float
    ) -> ReplyRead | None:
        """The reply's events after seq `after`, waiting up to wait_seconds for one if there
        are none yet; None when the reply is not (or no longer) known."""
        ...

    async def request_stop(self, key: SessionKey) -> bool:
        """Ask the producer of the session's latest reply to stop; False if none is running."""
        ...


class TokenSample(NamedTuple):
    """Input tokens a provider counted, and the characters of the prompt it counted them in."""

    tokens: int
    chars: int


class ModelStatus(NamedTuple):
    cooling_seconds: float  # > 0: skipped for this long still
    probing: bool  # its cooldown ran out: one caller at a time may try it (claim_probe)
    failures: int  # failures counted since its last success
    tokens_per_char: float | None  # calibrated from the samples; None before the first


UP = ModelStatus(0.0, False, 0, None)


@runtime_checkable
class ModelHealth(Protocol):
    """How each configured model fares, shared by every worker and replica, by name.

    A model's `cooldown_failures`-th failure in a row (or a failed probe) cools it down for
    `cooldown_seconds` (both given to the adapter); when that runs out it is probing until
    a success. Failures raise HistoryUnavailable.
    """

    async def statuses(
        self, names: Sequence[str], samples: Mapping[str, TokenSample]
    ) -> dict[str, ModelStatus]:
        """Add each model's samples (those gathered since the last call) to its calibration,
        and return every named model's status, in one call."""
        ...

    async def failed(self, name: str) -> ModelStatus:
        """Count a failure; return the status it leaves."""
        ...

    async def recovered(self, name: str) -> None:
        """A success: forget its failures, cooldown and probe (not its calibration)."""
        ...

    async def claim_probe(self, name: str, seconds: float) -> bool:
        """True for one caller at a time while the model is probing; a claim lasts `seconds`
        (how long a call may take), so a prober that died does not block the next."""
        ...


@runtime_checkable
class JobLock(Protocol):
    async def claim(self, name: str, ttl_seconds: int) -> bool:
        """True for exactly one caller per name until ttl_seconds have passed."""
        ...


@runtime_checkable
class RateLimiter(Protocol):
    async def hit(self, identity: str) -> float | None:
        """Count one request; None if allowed, else the seconds until one is allowed again."""
        ...
