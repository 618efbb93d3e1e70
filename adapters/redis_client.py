"""One pooled redis.asyncio client per process, with bounded timeouts and retries."""

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError, TimeoutError


def connect(url: str, *, timeout_seconds: float = 2.0, retries: int = 2) -> Redis:
    """A client over one connection pool.

    Connection errors and timeouts are retried with jittered backoff, so a restarted Redis
    is picked up again without restarting the service; each try is bounded by the socket
    timeouts, so a dead Redis is reported within seconds instead of hanging a request.
    """
    return Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries),
        retry_on_error=[ConnectionError, TimeoutError, OSError],
        health_check_interval=30,
    )
