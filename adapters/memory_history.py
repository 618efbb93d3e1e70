"""Chat histories, session records and request receipts in dicts: the Redis adapter's
semantics (trim, TTL, namespaces, receipts written with their exchange), no server."""

import time
from collections.abc import Callable
from datetime import datetime

from domain.idempotency import RECEIPT_TTL_SECONDS, Receipt, Reply
from domain.message import Message
from domain.session import SessionInfo, SessionKey


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
        self._opened: dict[SessionKey, tuple[SessionInfo, float | None]] = {}
        self._receipts: dict[tuple[str, str], tuple[Receipt, float]] = {}

    def _live(self, key: SessionKey) -> list[Message] | None:
        entry = self._sessions.get(key)
        if entry is None:
            return None
        messages, expires_at = entry
        if expires_at is not None and self._now() >= expires_at:
            del self._sessions[key]
            return None
        return messages

    def _expires_at(self) -> float | None:
        return self._now() + self._ttl if self._ttl else None

    def _live_info(self, key: SessionKey) -> SessionInfo | None:
        entry = self._opened.get(key)
        if entry is None:
            return None
        info, expires_at = entry
        if expires_at is not None and self._now() >= expires_at:
            del self._opened[key]
            return None
        return info

    async def load(self, key: SessionKey) -> list[Message]:
        return list(self._live(key) or ())

    def _receipt(self, receipt: Receipt) -> Receipt | None:
        entry = self._receipts.get((receipt.namespace, receipt.key))
        if entry is None or self._now() >= entry[1]:
            return None
        return entry[0]

    def _keep_receipt(self, receipt: Receipt, ttl_seconds: float) -> None:
        now = self._now()
        if len(self._receipts) > 10_000:
            self._receipts = {k: v for k, v in self._receipts.items() if v[1] > now}
        self._receipts[receipt.namespace, receipt.key] = (receipt, now + ttl_seconds)

    async def append_exchange(
        self, key: SessionKey, question: Message, answer: Message, receipt: Receipt | None = None
    ) -> Reply | None:
        held = None if receipt is None else self._receipt(receipt)
        if held is not None and held.reply is not None:
            return held.reply
        stored = self._live(key) or []
        if question in stored:  # a retried write, as RedisHistory recognises it
            return None
        messages = [*stored, question, answer][-self._max_messages :]
        self._sessions[key] = (messages, self._expires_at())
        if (info := self._live_info(key)) is not None:
            self._opened[key] = (info, self._expires_at())
        if receipt is not None:
            self._keep_receipt(receipt, RECEIPT_TTL_SECONDS)
        return None

    async def claim(self, pending: Receipt, ttl_seconds: float) -> Receipt | None:
        held = self._receipt(pending)
        if held is None:
            self._keep_receipt(pending, ttl_seconds)
        return held

    async def extend(self, pending: Receipt, ttl_seconds: float) -> None:
        if self._receipt(pending) == pending:
            self._keep_receipt(pending, ttl_seconds)

    async def release(self, pending: Receipt) -> None:
        if self._receipt(pending) == pending:
            del self._receipts[pending.namespace, pending.key]

    async def delete(self, key: SessionKey) -> None:
        self._sessions.pop(key, None)
        self._opened.pop(key, None)

    async def open(self, key: SessionKey, info: SessionInfo) -> None:
        self._opened[key] = (info, self._expires_at())

    async def info(self, key: SessionKey) -> SessionInfo | None:
        return self._live_info(key)

    async def purge(self, written_before: datetime | None = None) -> int:
        """As RedisHistory: a history's last write is its newest message's timestamp; an idle
        purge leaves the record of a session without history to its TTL."""
        doomed = [
            key
            for key in list(self._sessions)
            if (messages := self._live(key)) is not None
            and (written_before is None or messages[-1].created_at < written_before)
        ]
        for key in doomed:
            del self._sessions[key]
            self._opened.pop(key, None)
        if written_before is None:
            self._opened.clear()
        return len(doomed)

    async def ping(self) -> None:
        return None
