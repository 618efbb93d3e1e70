"""What the use cases need from the world. Each port has a real and an in-memory adapter."""

from collections.abc import Callable
from datetime import datetime
from typing import Protocol, runtime_checkable

from domain.conversation import Conversation
from domain.message import Message
from domain.session import SessionKey

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

    async def append_exchange(self, key: SessionKey, question: Message, answer: Message) -> None:
        """Append both messages atomically, trim, and refresh the session's TTL."""
        ...

    async def delete(self, key: SessionKey) -> None: ...

    async def purge_all(self) -> int:
        """Delete every history (and nothing else); return how many were deleted."""
        ...

    async def ping(self) -> None:
        """Return when the store answers; raise HistoryUnavailable otherwise."""
        ...


@runtime_checkable
class LanguageModel(Protocol):
    async def reply(self, conversation: Conversation) -> str:
        """The model's next message; raises ModelUnavailable or ModelTimeout."""
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
