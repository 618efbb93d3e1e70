"""Each model's failures, cooldown, probe and token calibration in Redis, shared by every
worker and replica.

One hash per model, `{key_prefix}:model:{name}`, changed only by single-key scripts (so a
Redis Cluster can hold it). Times are the Redis server's milliseconds (`TIME` inside the
scripts): workers' clocks may disagree, the server's is the one they share. A hash
expires after a week without writes, so a renamed model's state cleans itself up.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis

from adapters.redis_client import ScriptCall, StoreCalls, StoreObserver, evalsha_each
from application.ports import ModelStatus, TokenSample

_UNAVAILABLE = "the model health store is unavailable"

IDLE_EXPIRY_SECONDS = 7 * 24 * 3600
# Beyond this many characters both calibration totals are halved, so the ratio follows the
# provider's recent reports rather than all of them.
CALIBRATION_CHARS_CAP = 4_000_000

# Fields: failures, cooling_until and probe_until (server ms), tokens and chars (totals).
# A cooling_until in the past means the cooldown ran out: the model is probing.
_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function status(now)
  local h = redis.call('HMGET', KEYS[1], 'failures', 'cooling_until', 'tokens', 'chars')
  local cooling_until = tonumber(h[2]) or 0
  local left, probing = 0, 0
  if cooling_until > now then left = cooling_until - now
  elseif cooling_until > 0 then probing = 1 end
  return {tonumber(h[1]) or 0, left, probing, tonumber(h[3]) or 0, tonumber(h[4]) or 0}
end
"""

# ARGV: tokens, chars (0 0: no sample), chars cap, idle expiry s.
_STATUS = (
    _COMMON
    + """
local tokens, chars = tonumber(ARGV[1]), tonumber(ARGV[2])
if tokens > 0 and chars > 0 then
  tokens = redis.call('HINCRBY', KEYS[1], 'tokens', tokens)
  chars = redis.call('HINCRBY', KEYS[1], 'chars', chars)
  if chars > tonumber(ARGV[3]) then
    while chars > tonumber(ARGV[3]) do
      tokens, chars = math.floor(tokens / 2), math.floor(chars / 2)
    end
    redis.call('HSET', KEYS[1], 'tokens', tokens, 'chars', chars)
  end
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
return status(now_ms())
"""
)

# ARGV: cooldown ms, cooldown failures, idle expiry s. A failure while cooling (a call that
# began before the cooldown) counts but does not restart it.
_FAILED = (
    _COMMON
    + """
local now = now_ms()
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local cooling_until = tonumber(redis.call('HGET', KEYS[1], 'cooling_until')) or 0
local probing = cooling_until > 0 and cooling_until <= now
if probing or (cooling_until == 0 and failures >= tonumber(ARGV[2])) then
  redis.call('HSET', KEYS[1], 'cooling_until', now + tonumber(ARGV[1]))
  redis.call('HDEL', KEYS[1], 'probe_until')
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return status(now)
"""
)

# ARGV: claim ms, idle expiry s.
_CLAIM_PROBE = (
    _COMMON
    + """
local now = now_ms()
local h = redis.call('HMGET', KEYS[1], 'cooling_until', 'probe_until')
local cooling_until = tonumber(h[1]) or 0
if cooling_until == 0 or cooling_until > now or (tonumber(h[2]) or 0) > now then return 0 end
redis.call('HSET', KEYS[1], 'probe_until', now + tonumber(ARGV[1]))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
)

# ARGV: idle expiry s. The calibration totals stay.
_RECOVERED = """
if redis.call('HDEL', KEYS[1], 'failures', 'cooling_until', 'probe_until') > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return 0
"""


class RedisModelHealth:
    def __init__(
        self,
        client: Redis,
        *,
        key_prefix: str,
        cooldown_seconds: float,
        cooldown_failures: int,
        observe: StoreObserver | None = None,
    ) -> None:
        self._client = client
        self._call = StoreCalls(_UNAVAILABLE, observe)
        self._prefix = f"{key_prefix}:model:"
        self._cooldown_ms = _milliseconds(cooldown_seconds)
        self._cooldown_failures = cooldown_failures
        self._status_sha = client.register_script(_STATUS).sha
        self._failed = client.register_script(_FAILED)
        self._claim_probe = client.register_script(_CLAIM_PROBE)
        self._recovered = client.register_script(_RECOVERED)

    async def statuses(
        self, names: Sequence[str], samples: Mapping[str, TokenSample]
    ) -> dict[str, ModelStatus]:
        """One script call per model, in one round trip (evalsha_each)."""
        names = list(dict.fromkeys(names))
        if not names:
            return {}
        calls: list[ScriptCall] = []
        for name in names:
            tokens, chars = samples.get(name) or (0, 0)
            args = [tokens, chars, CALIBRATION_CHARS_CAP, IDLE_EXPIRY_SECONDS]
            calls.append(([self._prefix + name], args))
        async with self._call("model_health.statuses"):
            answers = await evalsha_each(self._client, _STATUS, self._status_sha, calls)
        return {name: _status(answer) for name, answer in zip(names, answers, strict=True)}

    async def failed(self, name: str) -> ModelStatus:
        args = [self._cooldown_ms, self._cooldown_failures, IDLE_EXPIRY_SECONDS]
        async with self._call("model_health.failed"):
            answer = await self._failed(keys=[self._prefix + name], args=args)
        return _status(answer)

    async def recovered(self, name: str) -> None:
        async with self._call("model_health.recovered"):
            await self._recovered(keys=[self._prefix + name], args=[IDLE_EXPIRY_SECONDS])

    async def claim_probe(self, name: str, seconds: float) -> bool:
        args = [_milliseconds(seconds), IDLE_EXPIRY_SECONDS]
        async with self._call("model_health.claim_probe"):
            return bool(await self._claim_probe(keys=[self._prefix + name], args=args))


def _status(answer: list[Any]) -> ModelStatus:
    failures, cooling_ms, probing, tokens, chars = answer
    return ModelStatus(
        cooling_ms / 1000, bool(probing), failures, tokens / chars if chars else None
    )


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))
