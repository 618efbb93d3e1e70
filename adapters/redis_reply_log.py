"""Streamed replies' events in Redis, one stream per reply, so any worker can follow one.

Each reply's publish is one script call: it appends the new events as one stream entry
(batched by the producer, never one per token), renews the producer's lease and answers
whether a stop was requested; the replies of a batch share one pipeline. An entry's id is
`<seq of its last event>-1`, so a follower resumes after event n with XRANGE/XREAD from
`n-1`. Keys are tagged with the session's history key.
"""

from collections.abc import Sequence
from typing import Any, cast

import msgspec
from redis.asyncio import Redis

from adapters.redis_client import ScriptCall, StoreCalls, StoreObserver, evalsha_each
from adapters.redis_history import beside, history_key
from application.ports import Publication, Published, ReplyRead
from domain.reply_events import ReplyEvent
from domain.session import SessionKey

_UNAVAILABLE = "the history store is unavailable"

# KEYS: stream, lease, stop, latest. ARGV: reply id, seq the stream should end at (-1:
# none), lease ms, keep s, ended (1/0), entry id ('' for a heartbeat), entry, replace (1/0).
# Returns 'lost' when the stream does not end where the producer left it (the store lost
# it): the producer then publishes everything again, with replace.
_PUBLISH = """
if ARGV[8] == '1' then
  redis.call('DEL', KEYS[1])
else
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
  local have = -1
  if top then have = tonumber(string.match(top[1], '^%d+')) end
  if have ~= tonumber(ARGV[2]) then return 'lost' end
end
if ARGV[6] ~= '' then redis.call('XADD', KEYS[1], ARGV[6], 'e', ARGV[7]) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
if ARGV[2] == '-1' then
  redis.call('SET', KEYS[4], ARGV[1], 'EX', ARGV[4])
elseif ARGV[8] == '1' then
  redis.call('SET', KEYS[4], ARGV[1], 'EX', ARGV[4], 'NX')
else
  redis.call('EXPIRE', KEYS[4], ARGV[4])
end
if ARGV[5] == '1' then
  redis.call('DEL', KEYS[2])
else
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
end
return redis.call('EXISTS', KEYS[3])
"""

# KEYS: lease, stop. ARGV: keep s.
_REQUEST_STOP = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
return 1
"""

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[ReplyEvent]).decode


class RedisReplyLog:
    def __init__(
        self,
        client: Redis,
        *,
        key_prefix: str,
        keep_seconds: int,
        lease_seconds: float,
        observe: StoreObserver | None = None,
    ) -> None:
        self._client = client
        self._call = StoreCalls(_UNAVAILABLE, observe)
        self._prefix = key_prefix
        self._keep = keep_seconds
        self._lease_ms = max(1, round(lease_seconds * 1000))
        self._publish_sha = client.register_script(_PUBLISH).sha
        self._request_stop = client.register_script(_REQUEST_STOP)

    def _keys(self, key: SessionKey, reply_id: str) -> tuple[str, str, str]:
        stream = beside(history_key(self._prefix, key), f"reply:{reply_id}")
        return stream, f"{stream}:lease", f"{stream}:stop"

    def _latest_key(self, key: SessionKey) -> str:
        return beside(history_key(self._prefix, key), "latest-reply")

    async def publish(self, batch: Sequence[Publication]) -> list[Published]:
        """One round trip for the whole batch (evalsha_each); a second for the replies the
        store had lost."""
        # What each holds now is what is stored: the producers may append meanwhile.
        replies = [(p.key, p.reply_id, list(p.events), p.published) for p in batch]
        calls = [
            ([*self._keys(key, reply_id), self._latest_key(key)],
             self._args(reply_id, events, published, replace=False))
            for key, reply_id, events, published in replies
        ]  # fmt: skip
        async with self._call("reply_log.publish"):
            answers = await self._published(calls)
            lost = [i for i, answer in enumerate(answers) if answer == b"lost"]
            if lost:
                again = [
                    (calls[i][0], self._args(replies[i][1], replies[i][2], -1, replace=True))
                    for i in lost
                ]
                for i, answer in zip(lost, await self._published(again), strict=True):
                    answers[i] = answer
        return [
            Published(len(events) - 1, bool(answer))
            for (_, _, events, _), answer in zip(replies, answers, strict=True)
        ]

    async def _published(self, calls: Sequence[ScriptCall]) -> list[Any]:
        return await evalsha_each(self._client, _PUBLISH, self._publish_sha, calls)

    def _args(
        self, reply_id: str, events: list[ReplyEvent], published: int, *, replace: bool
    ) -> list[str | int | bytes]:
        new = events[published + 1 :]
        entry_id, entry = (f"{new[-1].seq}-1", _encode(new)) if new else ("", b"")
        ended = bool(events) and events[-1].terminal
        return [
            reply_id, published, self._lease_ms, self._keep, int(ended), entry_id, entry,
            int(replace),
        ]  # fmt: skip

    async def latest(self, key: SessionKey) -> str | None:
        async with self._call("reply_log.latest"):
            reply_id = await self._client.get(self._latest_key(key))
        return None if reply_id is None else cast(bytes, reply_id).decode()

    async def read(
        self, key: SessionKey, reply_id: str, after: int, wait_seconds: float
    ) -> ReplyRead | None:
        stream, lease, _ = self._keys(key, reply_id)
        start = "-" if after < 0 else f"({after}-1"
        async with self._call("reply_log.read"):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.xrange(stream, start, "+")
                pipe.exists(lease)
                pipe.exists(stream)
                entries, running, kept = await pipe.execute()
            if not kept:
                return None
            events = _events(entries, after)
            if events or not running or wait_seconds <= 0:
                return ReplyRead(events, bool(running))
        # Outside the first call's deadline: this one blocks for up to wait_seconds.
        async with self._call("reply_log.wait", seconds=wait_seconds + 2):
            found: Any = await self._client.xread(
                {stream: f"{after}-1" if after >= 0 else "0-0"},
                block=max(1, round(wait_seconds * 1000)),
            )
            running = await self._client.exists(lease)
        entries = found[0][1] if found else []
        return ReplyRead(_events(entries, after), bool(running))

    async def request_stop(self, key: SessionKey) -> bool:
        reply_id = await self.latest(key)
        if reply_id is None:
            return False
        _, lease, stop = self._keys(key, reply_id)
        async with self._call("reply_log.stop"):
            return bool(await self._request_stop(keys=[lease, stop], args=[self._keep]))


def _events(entries: list[Any], after: int) -> list[ReplyEvent]:
    return [event for _, fields in entries for event in _decode(fields[b"e"]) if event.seq > after]
