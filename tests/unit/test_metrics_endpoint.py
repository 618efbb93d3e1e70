"""GET /metrics in-process: open by default, gone with [metrics] enabled = false, and the
rate limit's refusals counted with their status (the auth middleware answers them itself)."""

import pytest
from litestar.testing import AsyncTestClient

from entrypoints.asgi import create_app
from entrypoints.config import (
    AuthSettings,
    CleanupSettings,
    MetricsSettings,
    RateLimit,
    RedisSettings,
    Settings,
)

pytestmark = pytest.mark.unit


def settings(**sections: object) -> Settings:
    base = {"redis": RedisSettings(url="memory://"), "cleanup": CleanupSettings(enabled=False)}
    return Settings(**(base | sections))  # type: ignore[arg-type]


async def test_metrics_are_open_by_default_and_absent_when_disabled() -> None:
    async with AsyncTestClient(create_app(settings())) as client:
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert "# TYPE chat_model_requests_total counter" in response.text
    off = settings(metrics=MetricsSettings(enabled=False))
    async with AsyncTestClient(create_app(off)) as client:
        assert (await client.get("/metrics")).status_code == 404


async def test_refusals_of_the_auth_middleware_are_counted_with_their_status() -> None:
    def count(text: str, status: str) -> float:
        prefix = 'chat_requests_total{app_name="chat",method="GET",path="/chat/{session_id}",'
        line = f'{prefix}status_code="{status}"}}'
        return sum(
            float(row.rsplit(" ", 1)[1]) for row in text.splitlines() if row.startswith(line)
        )

    limited = settings(auth=AuthSettings(tokens=("t",), rate_limit=RateLimit(1, 3600)))
    async with AsyncTestClient(create_app(limited)) as client:
        before = (await client.get("/metrics")).text
        assert (await client.get("/chat/s1")).status_code == 401
        ok = {"authorization": "Bearer t"}
        assert (await client.get("/chat/s1", headers=ok)).status_code == 404
        refused = await client.get("/chat/s1", headers=ok)
        assert refused.status_code == 429
        assert refused.json()["detail"].startswith("rate limit exceeded")
        after = (await client.get("/metrics")).text
    for status in ("401", "404", "429"):
        assert count(after, status) - count(before, status) == 1, status
