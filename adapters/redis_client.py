"""One pooled redis.asyncio client per process, with bounded timeouts and retries."""

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError


def connect(url: str, *, timeout_seconds: float = 2.0, retries: int = 2) -> Redis:
    """A client over one connection pool.

    Connection errors are retried with jittered backoff, so a restarted Redis is picked up
    again without restarting the service. Timeouts are not retried: a Redis that stopped
    answering is reported after one socket timeout instead of several.
    """
    return Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry=Retry(
            ExponentialWithJitterBackoff(base=0.05, cap=0.5),
            retries,
            supported_errors=(ConnectionError,),
        ),
        health_check_interval=30,
    )
