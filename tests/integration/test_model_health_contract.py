"""Model health's behaviour, run against MemoryModelHealth and RedisModelHealth alike.

The memory variant runs on a fake clock; the Redis one on the server's, with short real
cooldowns and real waits.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from adapters.memory_model_health import MemoryModelHealth
from adapters.redis_client import connect
from adapters.redis_model_health import IDLE_EXPIRY_SECONDS, RedisModelHealth
from application.errors import HistoryUnavailable
from application.ports import UP, ModelHealth, ModelStatus, TokenSample
from tests.support.redis_server import RedisServer

PREFIX = "chat-test"
COOLDOWN = 0.4
FAILURES = 3
MODEL = "primary"


@dataclass
class HealthStore:
    """Model health as two workers see it, and a way to let time pass for both."""

    first: ModelHealth
    second: ModelHealth  # another worker: for memory, the same process's one instance
    wait: Callable[[float], Awaitable[None]]


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> HealthStore:
    if request.param == "memory":
        now = [1_000.0]

        async def advance(seconds: float) -> None:
            now[0] += seconds

        health = MemoryModelHealth(
            cooldown_seconds=COOLDOWN, cooldown_failures=FAILURES, clock=lambda: now[0]
        )
        return HealthStore(health, health, advance)
    clients: tuple[Redis, Redis] = request.getfixturevalue("two_clients")
    first, second = (redis_health(client) for client in clients)
    return HealthStore(first, second, asyncio.sleep)


def redis_health(client: Redis) -> RedisModelHealth:
    return RedisModelHealth(
        client, key_prefix=PREFIX, cooldown_seconds=COOLDOWN, cooldown_failures=FAILURES
    )


async def status(health: ModelHealth, name: str = MODEL) -> ModelStatus:
    return (await health.statuses([name], {}))[name]


async def cooled(health: ModelHealth) -> ModelStatus:
    for _ in range(FAILURES - 1):
        await health.failed(MODEL)
    return await health.failed(MODEL)


async def test_an_unknown_model_is_up(store: HealthStore) -> None:
    assert await store.first.statuses(["a", "b"], {}) == {"a": UP, "b": UP}
    assert await store.first.claim_probe("a", 10) is False
    await store.first.recovered("a")
    assert await status(store.first, "a") == UP


async def test_failures_below_the_threshold_count_and_keep_it_up(store: HealthStore) -> None:
    first = await store.first.failed(MODEL)
    second = await store.second.failed(MODEL)

    assert first == ModelStatus(0.0, False, 1, None)
    assert second == ModelStatus(0.0, False, 2, None)
    assert await status(store.first) == second
    assert await status(store.first, "other") == UP


async def test_the_threshold_starts_a_cooldown(store: HealthStore) -> None:
    cooling = await cooled(store.first)

    assert 0 < cooling.cooling_seconds <= COOLDOWN
    assert (cooling.probing, cooling.failures) == (False, FAILURES)
    seen = await status(store.second)
    assert 0 < seen.cooling_seconds <= cooling.cooling_seconds
    assert await store.second.claim_probe(MODEL, 10) is False


async def test_a_failure_while_cooling_counts_but_does_not_restart_it(
    store: HealthStore,
) -> None:
    cooling = await cooled(store.first)
    await store.wait(0.1)

    late = await store.second.failed(MODEL)

    assert late.failures == FAILURES + 1
    assert 0 < late.cooling_seconds <= cooling.cooling_seconds - 0.09
    assert not late.probing


async def test_a_cooldown_that_ran_out_leaves_it_probing(store: HealthStore) -> None:
    await cooled(store.first)
    await store.wait(COOLDOWN + 0.05)

    assert await status(store.second) == ModelStatus(0.0, True, FAILURES, None)


async def test_one_of_two_concurrent_probe_claims_wins(store: HealthStore) -> None:
    await cooled(store.first)
    await store.wait(COOLDOWN + 0.05)

    claims = await asyncio.gather(
        store.first.claim_probe(MODEL, 10), store.second.claim_probe(MODEL, 10)
    )

    assert sorted(claims) == [False, True]
    assert await store.first.claim_probe(MODEL, 10) is False
    assert (await status(store.first)).probing


async def test_a_probe_claim_expires(store: HealthStore) -> None:
    await cooled(store.first)
    await store.wait(COOLDOWN + 0.05)
    assert await store.first.claim_probe(MODEL, 0.1) is True

    await store.wait(0.15)

    assert await store.second.claim_probe(MODEL, 0.1) is True


async def test_a_failed_probe_cools_it_again(store: HealthStore) -> None:
    await cooled(store.first)
    await store.wait(COOLDOWN + 0.05)
    assert await store.first.claim_probe(MODEL, 10) is True

    again = await store.first.failed(MODEL)

    assert 0 < again.cooling_seconds <= COOLDOWN
    assert (again.probing, again.failures) == (False, FAILURES + 1)
    await store.wait(COOLDOWN + 0.05)
    assert await store.second.claim_probe(MODEL, 10) is True  # the old claim went with it


async def test_recovered_forgets_failures_cooldown_and_probe_not_calibration(
    store: HealthStore,
) -> None:
    await store.first.statuses([MODEL], {MODEL: TokenSample(250, 1000)})
    await cooled(store.first)
    await store.wait(COOLDOWN + 0.05)
    assert await store.first.claim_probe(MODEL, 10) is True

    await store.second.recovered(MODEL)

    assert await status(store.first) == ModelStatus(0.0, False, 0, 0.25)
    assert await store.first.claim_probe(MODEL, 10) is False
    assert await store.first.failed(MODEL) == ModelStatus(0.0, False, 1, 0.25)


async def test_calibration_accumulates_across_calls_and_workers(store: HealthStore) -> None:
    first = await store.first.statuses(
        ["a", "b", "c"], {"a": TokenSample(100, 400), "b": TokenSample(3, 10)}
    )
    second = await store.second.statuses(
        ["a", "b", "c"], {"a": TokenSample(200, 400), "c": TokenSample(0, 0)}
    )
    third = await store.first.statuses(["a", "b"], {})

    assert [s.tokens_per_char for s in first.values()] == [0.25, 0.3, None]
    assert [s.tokens_per_char for s in second.values()] == [0.375, 0.3, None]
    assert third["a"].tokens_per_char == 0.375
    assert third["a"] == ModelStatus(0.0, False, 0, 0.375)


async def test_calibration_halves_its_totals_beyond_the_cap_keeping_the_ratio(
    store: HealthStore,
) -> None:
    await store.first.statuses([MODEL], {MODEL: TokenSample(1_000_000, 3_000_000)})
    capped = await store.second.statuses([MODEL], {MODEL: TokenSample(2_000_000, 2_000_000)})
    after = await store.first.statuses([MODEL], {MODEL: TokenSample(1_000_000, 1_000_000)})

    # 3M tokens over 5M chars, halved to 1.5M over 2.5M: still 0.6; the next report then
    # weighs as if the totals were 2.5M (without halving it would be 4M/6M).
    assert capped[MODEL].tokens_per_char == pytest.approx(0.6)
    assert after[MODEL].tokens_per_char == pytest.approx(2.5 / 3.5)


# Redis only: what the shared store adds.


class _Counting:
    """Counts the writes a client makes to its connections: each is one round trip."""

    def __init__(self, client: Redis) -> None:
        self.writes = 0
        pool = client.connection_pool
        base = pool.connection_class
        counter = self

        class Counted(base):  # type: ignore[valid-type,misc]
            async def send_packed_command(self, *args: object, **kwargs: object) -> None:
                counter.writes += 1
                await super().send_packed_command(*args, **kwargs)

        pool.connection_class = Counted


@pytest.fixture
async def counted_client(redis_server: RedisServer) -> AsyncIterator[tuple[Redis, _Counting]]:
    client = connect(redis_server.url)
    counting = _Counting(client)  # before the pool opens its first connection
    yield client, counting
    await client.aclose()


async def evalsha_calls(client: Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_statuses_of_several_models_cost_one_round_trip(
    counted_client: tuple[Redis, _Counting], redis_client: Redis
) -> None:
    client, counting = counted_client
    health = redis_health(client)
    names = [f"model-{n}" for n in range(5)]
    await health.statuses(names, {})  # the first call also loads the script
    before_writes, before_evalsha = counting.writes, await evalsha_calls(redis_client)

    found = await health.statuses(names, {names[0]: TokenSample(1, 4)})

    assert counting.writes - before_writes == 1
    assert await evalsha_calls(redis_client) - before_evalsha == len(names)
    assert found[names[0]].tokens_per_char == 0.25
    assert [found[n] for n in names[1:]] == [UP] * 4


async def test_one_hash_per_model_expiring_a_week_after_its_last_write(
    redis_client: Redis,
) -> None:
    health = redis_health(redis_client)
    await health.failed(MODEL)
    await health.statuses(["quiet"], {})

    assert await redis_client.keys(f"{PREFIX}:*") == [f"{PREFIX}:model:{MODEL}".encode()]
    assert await redis_client.type(f"{PREFIX}:model:{MODEL}") == b"hash"
    ttl = await redis_client.ttl(f"{PREFIX}:model:{MODEL}")
    assert IDLE_EXPIRY_SECONDS - 5 < ttl <= IDLE_EXPIRY_SECONDS


async def test_in_memory_too_a_model_untouched_for_a_week_is_forgotten() -> None:
    now = [0.0]
    health = MemoryModelHealth(cooldown_seconds=1, cooldown_failures=1, clock=lambda: now[0])
    await health.statuses([MODEL], {MODEL: TokenSample(1, 4)})
    now[0] += IDLE_EXPIRY_SECONDS - 1
    await health.failed(MODEL)  # a write: the week starts again
    now[0] += IDLE_EXPIRY_SECONDS - 1
    await health.statuses([MODEL], {})  # a read does not

    assert (await status(health)).tokens_per_char == 0.25
    now[0] += 1
    assert await status(health) == UP


async def test_a_redis_that_lost_the_scripts_is_given_them_again(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    health = redis_health(redis_client)
    await health.statuses([MODEL], {})
    await health.failed(MODEL)

    redis_server.restart()  # not persistent: comes back empty, without scripts

    assert await status(health) == UP
    assert (await health.failed(MODEL)).failures == 1


async def test_a_stopped_redis_raises_history_unavailable_within_seconds(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    health = redis_health(redis_client)
    await health.statuses([MODEL], {})
    redis_server.stop()

    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: health.statuses([MODEL, "other"], {MODEL: TokenSample(1, 4)}),
        lambda: health.failed(MODEL),
        lambda: health.recovered(MODEL),
        lambda: health.claim_probe(MODEL, 10),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(HistoryUnavailable):
            await call()
        assert time.monotonic() - started < 5
