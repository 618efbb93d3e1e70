"""Each store call is told to the observer the composition root gives the Redis adapters
(the metrics): its operation, how long it took, and whether it failed."""

import pytest

from adapters.redis_client import connect
from adapters.redis_history import RedisHistory
from application.errors import HistoryUnavailable
from domain.session import SessionKey
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


async def test_each_call_is_told_with_its_operation_duration_and_failure(
    redis_server: RedisServer,
) -> None:
    told: list[tuple[str, float, bool]] = []
    client = connect(redis_server.url, retries=0)
    history = RedisHistory(
        client,
        key_prefix="observed",
        max_messages=10,
        ttl_seconds=60,
        observe=lambda *call: told.append(call),
    )
    try:
        await history.load(SessionKey("public", "s1"))
        await history.ping()
        redis_server.stop()
        with pytest.raises(HistoryUnavailable):
            await history.load(SessionKey("public", "s1"))
    finally:
        await client.aclose()

    assert [(operation, failed) for operation, _, failed in told] == [
        ("history.load", False),
        ("ping", False),
        ("history.load", True),
    ]
    assert all(0 <= seconds < 2.5 for _, seconds, _ in told)
