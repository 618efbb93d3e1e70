"""Chat histories as Redis lists: one key per session, one msgpack entry per message; beside
each, the session's record (SessionInfo) when it was opened before its first exchange."""

import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import cast

import msgspec
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import PipelineCommand
from redis.exceptions import NoScriptError

from adapters.redis_client import ScriptCall, StoreCalls, StoreObserver, evalsha_each
from application.errors import HistoryUnavailable
from domain.idempotency import RECEIPT_TTL_SECONDS, Receipt, Reply
from domain.message import Message, Role
from domain.session import SessionInfo, SessionKey

log = logging.getLogger(__name__)

_UNAVAILABLE = "the history store is unavailable"
PURGE_TIMEOUT_SECONDS = 300.0  # a whole purge, however many batches it takes
# How long an exchange's write waits for [redis] min_replicas_ack replicas: within StoreCall's.
REPLICAS_WAIT_MS = 1000

# One atomic step per exchange. A script rather than MULTI/EXEC so that a retried write
# (the connection died after Redis ran it but before the reply arrived) is recognised by
# its question, which carries a microsecond timestamp, and not appended twice.
# KEYS: history, session record (its TTL follows the history's; EXPIRE and PERSIST leave a
# missing one missing), receipt (optional). ARGV: max messages, ttl s (0: none), question,
# answer, and with a receipt: stored receipt, its ttl s. With a receipt, a request already
# answered is not appended again: its receipt is returned instead.
_APPEND_EXCHANGE = """
if KEYS[3] then
  local held = redis.call('GET', KEYS[3])
  if held and string.sub(held, 1, 1) == 'd' then return held end
end
if redis.call('LPOS', KEYS[1], ARGV[3], 'RANK', -1) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[3], ARGV[4])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
if tonumber(ARGV[2]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
else
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
end
if KEYS[3] then redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[6]) end
return 1
"""

# Receipts are stored as b"p" (pending) or b"d" (done) followed by the msgpack Receipt, so
# the scripts can tell the two apart without decoding. A receipt lives in its session's slot
# (`{<history>}:receipt:<key>`), so that the exchange and its receipt are one atomic write in
# a Redis Cluster too; an index in the key's own slot (`<prefix>:receipt:<ns>:<key>`, b"i" and
# the msgpack [fingerprint, session id], kept as long as a receipt) says which request and
# session an Idempotency-Key belongs to, for a repeat that names no session, and for the key
# reused with another body.
#
# KEYS: the index. ARGV: this request's entry, its ttl s, and an entry this one may replace
# ('' for none). Returns false once this request's entry is the index, else the one held.
_INDEX = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[3] then return held end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""

_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# Delete a history (KEYS[1]) and its session record (KEYS[2]) only if the history's newest
# entry is still the one the purge judged idle: every entry is unique (microsecond
# timestamp), so a write in between keeps both. Returns the histories deleted.
_UNLINK_UNCHANGED = """
if redis.call('LINDEX', KEYS[1], -1) == ARGV[1] then
  redis.call('UNLINK', KEYS[1], KEYS[2])
  return 1
end
return 0
"""


class _Entry(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A stored message: [role, content, created_at], and the model for a reply that names
    it. Entries written before replies named their model have three items, and still read.
    Untracked by the cycle collector, as domain.message.Message is."""

    role: Role
    content: str
    created_at: datetime
    model: str | None = None


def _entry(message: Message) -> bytes:
    """A message without a model is written as three items, as it always was: its bytes are
    what a repeated write of the same exchange is recognised by."""
    if message.model is None:
        return _encode((message.role, message.content, message.created_at))
    return _encode((message.role, message.content, message.created_at, message.model))


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_Entry).decode
_decode_receipt = msgspec.msgpack.Decoder(Receipt).decode
_decode_index = msgspec.msgpack.Decoder(tuple[str, str]).decode
_decode_info = msgspec.msgpack.Decoder(SessionInfo).decode


def _index_entry(receipt: Receipt) -> bytes:
    return b"i" + _encode((receipt.fingerprint, _session_of(receipt)))


def _session_of(receipt: Receipt) -> str:
    if receipt.session_id is None:
        raise ValueError("a receipt names the session its exchange goes to")
    return receipt.session_id


def history_key(key_prefix: str, key: SessionKey) -> str:
    """A session's history; its other keys are `beside` it."""
    return f"{key_prefix}:history:{key.namespace}:{key.session_id}"


def beside(history: str, name: str) -> str:
    """Another key of the session whose history key is `history`, tagged `{<history>}`: a
    key without a tag hashes whole, so in a Redis Cluster all of them share one slot."""
    return "{" + history + "}:" + name


def _record_key(history: str) -> str:
    return beside(history, "session")


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _stored_receipt(receipt: Receipt) -> bytes:
    return (b"p" if receipt.reply is None else b"d") + _encode(receipt)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _idle(newest: bytes, written_before: datetime) -> bool:
    """Whether a history whose newest entry is `newest` was last written before that time."""
    try:
        return _decode(newest).created_at < written_before
    except (msgspec.DecodeError, msgspec.ValidationError):
        return True  # unreadable: nothing a reader can use


class RedisHistory:
    def __init__(
        self,
        client: Redis,
        *,
        key_prefix: str,
        max_messages: int,
        ttl_seconds: int,
        observe: StoreObserver | None = None,
        min_replicas_ack: int = 0,
    ) -> None:
        self._client = client
        self._min_replicas = min_replicas_ack
        self._call = StoreCalls(_UNAVAILABLE, observe)
        self._ping = StoreCalls("redis did not answer", observe)
        self._key_prefix = key_prefix
        self._prefix = f"{key_prefix}:history:"
        # Braces are no glob characters, and namespaces and session ids hold none: this
        # matches the session records only, not the reply log's keys tagged the same way.
        self._records = "{" + _glob_escape(self._prefix) + "*}:session"
        self._max_messages = max_messages
        self._ttl = ttl_seconds
        self._index_prefix = f"{key_prefix}:receipt:"
        self._append = client.register_script(_APPEND_EXCHANGE)
        self._index = client.register_script(_INDEX)
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._extend = client.register_script(_EXTEND)
        self._unlink_unchanged = client.register_script(_UNLINK_UNCHANGED)

    def _key(self, key: SessionKey) -> str:
        return history_key(self._key_prefix, key)

    def _receipt_key(self, receipt: Receipt, session_id: str | None = None) -> str:
        """The receipt, in the slot of its session (or of `session_id`)."""
        session = SessionKey(receipt.namespace, session_id or _session_of(receipt))
        return beside(self._key(session), "receipt:" + receipt.key)

    def _index_key(self, receipt: Receipt) -> str:
        return f"{self._index_prefix}{receipt.namespace}:{receipt.key}"

    async def load(self, key: SessionKey) -> list[Message]:
        async with self._call("history.load"):
            entries = cast(
                list[bytes],
                await self._client.lrange(self._key(key), -self._max_messages, -1),
            )
        messages = []
        for entry in entries:
            try:
                e = _decode(entry)
                messages.append(Message(e.role, e.content, e.created_at, e.model))
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.warning("skipping an unreadable history entry in session %s", key.session_id)
        return messages

    async def append_exchange(
        self, key: SessionKey, question: Message, answer: Message, receipt: Receipt | None = None
    ) -> Reply | None:
        history = self._key(key)
        keys = [history, _record_key(history)]
        args: list[bytes | int] = [
            self._max_messages,
            self._ttl,
            _entry(question),
            _entry(answer),
        ]
        if receipt is not None:
            keys.append(self._receipt_key(receipt))
            args += [_stored_receipt(receipt), RECEIPT_TTL_SECONDS]
        async with self._call("history.append"):
            if self._min_replicas:
                result = await self._append_replicated(keys, args)
            else:
                result = await self._append(keys=keys, args=args)
        return _decode_receipt(result[1:]).reply if isinstance(result, bytes) else None

    async def _append_replicated(self, keys: list[str], args: list[bytes | int]) -> object:
        """The append and a WAIT for min_replicas_ack replicas, in one round trip on one
        connection (WAIT waits for that connection's writes). Fewer acknowledgements: the
        write may be lost by a failover, so it is not acknowledged either. EVALSHA itself,
        not redis-py's Script in a pipeline, which asks SCRIPT EXISTS first (a round trip)."""
        for _ in range(2):
            if isinstance(self._client, RedisCluster):
                result, acknowledged = await self._on_the_keys_node(keys, args)
            else:
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.evalsha(self._append.sha, len(keys), *keys, *args)
                    pipe.execute_command("WAIT", self._min_replicas, REPLICAS_WAIT_MS)
                    result, acknowledged = await pipe.execute(raise_on_error=False)
            if not isinstance(result, NoScriptError):
                break
            await self._client.script_load(_APPEND_EXCHANGE)
        for answer in (result, acknowledged):
            if isinstance(answer, Exception):
                raise answer
        if acknowledged < self._min_replicas:
            raise HistoryUnavailable(
                f"the exchange reached {acknowledged} of the {self._min_replicas} replicas "
                "[redis] min_replicas_ack asks for; it may not outlive a failover"
            )
        return result

    async def _on_the_keys_node(
        self, keys: list[str], args: list[bytes | int]
    ) -> tuple[object, object]:
        """The append and the WAIT on one connection to the primary of the keys' slot, through
        redis-py's ClusterNode: a cluster pipeline refuses scripts, and would send a WAIT,
        which names no key, to any node."""
        cluster = cast(RedisCluster, self._client)
        await cluster.initialize()
        node = cluster.get_node_from_key(keys[0])
        if node is None:
            raise HistoryUnavailable(_UNAVAILABLE)
        commands = [
            PipelineCommand(0, "EVALSHA", self._append.sha, len(keys), *keys, *args),
            PipelineCommand(1, "WAIT", self._min_replicas, REPLICAS_WAIT_MS),
        ]
        await node.execute_pipeline(commands)
        return commands[0].result, commands[1].result

    async def claim(self, pending: Receipt, ttl_seconds: float) -> Receipt | None:
        """The index first: another body's receipt (a conflict), or the receipt of the
        session the key's first request ran in; then this request's lease in its session.
        An index naming a session that holds no receipt (its request failed) is pointed at
        this request's session, if no other request did so meanwhile."""
        session = _session_of(pending)
        entry = _index_entry(pending)
        replaced = b""
        async with self._call("receipt.claim"):
            while (
                held := await self._index(
                    keys=[self._index_key(pending)],
                    args=[entry, RECEIPT_TTL_SECONDS, replaced],
                )
            ) is not None:
                if held[:1] != b"i":  # a receipt written before receipts moved to sessions
                    return _decode_receipt(held[1:])
                fingerprint, first_session = _decode_index(held[1:])
                if fingerprint != pending.fingerprint:
                    return msgspec.structs.replace(pending, fingerprint=fingerprint)
                if first_session == session:
                    break
                stored = await self._client.get(self._receipt_key(pending, first_session))
                if stored is not None:
                    return _decode_receipt(cast(bytes, stored)[1:])
                replaced = held
            args: list[bytes | int] = [_stored_receipt(pending), _milliseconds(ttl_seconds)]
            lease = await self._claim(keys=[self._receipt_key(pending)], args=args)
        return None if lease is None else _decode_receipt(lease[1:])

    async def extend(self, pending: Receipt, ttl_seconds: float) -> None:
        args: list[bytes | int] = [_stored_receipt(pending), _milliseconds(ttl_seconds)]
        async with self._call("receipt.extend"):
            await self._extend(keys=[self._receipt_key(pending)], args=args)

    async def release(self, pending: Receipt) -> None:
        """The lease, then the index if it is still this request's: a request that failed
        leaves the key free for any body (one whose process died leaves its index a day)."""
        async with self._call("receipt.release"):
            await self._release(keys=[self._receipt_key(pending)], args=[_stored_receipt(pending)])
            await self._release(keys=[self._index_key(pending)], args=[_index_entry(pending)])

    async def delete(self, key: SessionKey) -> None:
        history = self._key(key)
        async with self._call("history.delete"):
            await self._client.unlink(history, _record_key(history))

    async def open(self, key: SessionKey, info: SessionInfo) -> None:
        async with self._call("session.open"):
            await self._client.set(_record_key(self._key(key)), _encode(info), ex=self._ttl or None)

    async def info(self, key: SessionKey) -> SessionInfo | None:
        async with self._call("session.info"):
            stored = cast(bytes | None, await self._client.get(_record_key(self._key(key))))
        if stored is None:
            return None
        try:
            return _decode_info(stored)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("ignoring an unreadable record of session %s", key.session_id)
            return None

    async def purge(self, written_before: datetime | None = None, batch: int = 500) -> int:
        """SCAN in batches, never KEYS (it blocks Redis) nor FLUSHDB (not only ours); return
        how many histories were deleted.

        With `written_before`, a history's last write is its newest entry's timestamp: one
        LINDEX per history, pipelined, then a compare-and-unlink of it and its session record
        per idle one, so a history written to in between is kept. An entry that cannot be
        read counts as idle. A record without a history (a session opened, never written)
        is left to its TTL. Without `written_before`, every history and every record goes.
        """
        deleted = 0
        async with self._call("history.purge", seconds=PURGE_TIMEOUT_SECONDS):
            async for names in self._batches(_glob_escape(self._prefix) + "*", batch):
                deleted += await self._purge_batch(names, written_before)
            if written_before is None:
                async for names in self._batches(self._records, batch):
                    await self._client.unlink(*names)
        return deleted

    async def _batches(self, match: str, batch: int) -> AsyncIterator[list[bytes]]:
        names: list[bytes] = []
        async for name in self._client.scan_iter(match=match, count=batch):
            names.append(name)
            if len(names) >= batch:
                yield names
                names = []
        if names:
            yield names

    async def _purge_batch(self, names: list[bytes], written_before: datetime | None) -> int:
        if written_before is None:
            return await self._client.unlink(*names)
        async with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.lindex(name, -1)
            newest = cast(list[bytes | None], await pipe.execute())
        idle = [
            (name, entry)
            for name, entry in zip(names, newest, strict=True)
            if entry is not None and _idle(entry, written_before)
        ]
        if not idle:
            return 0
        calls: list[ScriptCall] = [
            ([name, _record_key(name.decode())], [entry]) for name, entry in idle
        ]
        sha = self._unlink_unchanged.sha
        return sum(await evalsha_each(self._client, _UNLINK_UNCHANGED, sha, calls))

    async def ping(self) -> None:
        async with self._ping("ping"):
            await self._client.ping()
