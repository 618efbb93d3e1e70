"""Chat histories in a dict: the Redis adapter's semantics (trim, TTL, namespaces), no server."""

import time
from collections.abc import Callable

from domain.message import Message
from domain.session import SessionKey


class MemoryHistory:
    def __init__(
        self,
        *,
        max_messages: int,
        ttl_seconds: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_messages = max_messages
        self._ttl = ttl_seconds
        self._now = monotonic
        self._sessions: dict[SessionKey, tuple[list[Message], float | None]] = {}

    def _live(self, key: SessionKey) -> list[Message] | None:
        entry = self._sessions.get(key)
        if entry is None:
            return None
        messages, expires_at = entry
        if expires_at is not None and self._now() >= expires_at:
            del self._sessions[key]
            return None
        return messages

    async def load(self, key: SessionKey) -> list[Message]:
        return list(self._live(key) or ())

    async def append_exchange(self, key: SessionKey, question: Message, answer: Message) -> None:
        stored = self._live(key) or []
        if question in stored:  # a retried write, as RedisHistory recognises it
            return
        messages = [*stored, question, answer][-self._max_messages :]
        expires_at = self._now() + self._ttl if self._ttl else None
        self._sessions[key] = (messages, expires_at)

    async def delete(self, key: SessionKey) -> None:
        self._sessions.pop(key, None)

    async def purge_all(self) -> int:
        count = sum(1 for key in list(self._sessions) if self._live(key) is not None)
        self._sessions.clear()
        return count

    async def ping(self) -> None:
        return None
