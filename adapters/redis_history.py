"""Chat histories as Redis lists: one key per session, one msgpack entry per message."""

import logging
from datetime import datetime
from typing import cast

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from application.errors import HistoryUnavailable
from domain.message import Message, Role
from domain.session import SessionKey

log = logging.getLogger(__name__)

# One atomic step per exchange. A script rather than MULTI/EXEC so that a retried write
# (the connection died after Redis ran it but before the reply arrived) is recognised by
# its question, which carries a microsecond timestamp, and not appended twice.
_APPEND_EXCHANGE = """
if redis.call('LPOS', KEYS[1], ARGV[3], 'RANK', -1) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[3], ARGV[4])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
if tonumber(ARGV[2]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
else
  redis.call('PERSIST', KEYS[1])
end
return 1
"""

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(tuple[Role, str, datetime]).decode


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisHistory:
    def __init__(
        self, client: Redis, *, key_prefix: str, max_messages: int, ttl_seconds: int
    ) -> None:
        self._client = client
        self._prefix = f"{key_prefix}:history:"
        self._max_messages = max_messages
        self._ttl = ttl_seconds
        self._append = client.register_script(_APPEND_EXCHANGE)

    def _key(self, key: SessionKey) -> str:
        return f"{self._prefix}{key.namespace}:{key.session_id}"

    async def load(self, key: SessionKey) -> list[Message]:
        try:
            entries = cast(
                list[bytes],
                await self._client.lrange(self._key(key), -self._max_messages, -1),
            )
        except RedisError as error:
            raise HistoryUnavailable("the history store is unavailable") from error
        messages = []
        for entry in entries:
            try:
                messages.append(Message(*_decode(entry)))
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.warning("skipping an unreadable history entry in session %s", key.session_id)
        return messages

    async def append_exchange(self, key: SessionKey, question: Message, answer: Message) -> None:
        args = (
            self._max_messages,
            self._ttl,
            _encode((question.role, question.content, question.created_at)),
            _encode((answer.role, answer.content, answer.created_at)),
        )
        try:
            await self._append(keys=[self._key(key)], args=args)
        except RedisError as error:
            raise HistoryUnavailable("the history store is unavailable") from error

    async def delete(self, key: SessionKey) -> None:
        try:
            await self._client.unlink(self._key(key))
        except RedisError as error:
            raise HistoryUnavailable("the history store is unavailable") from error

    async def purge_all(self, batch: int = 500) -> int:
        """SCAN + UNLINK in batches: never KEYS (blocks Redis) nor FLUSHDB (not only ours)."""
        deleted = 0
        pending: list[bytes] = []
        try:
            async for name in self._client.scan_iter(
                match=_glob_escape(self._prefix) + "*", count=batch
            ):
                pending.append(name)
                if len(pending) >= batch:
                    deleted += await self._client.unlink(*pending)
                    pending.clear()
            if pending:
                deleted += await self._client.unlink(*pending)
        except RedisError as error:
            raise HistoryUnavailable("the history store is unavailable") from error
        return deleted

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except RedisError as error:
            raise HistoryUnavailable("redis did not answer") from error
