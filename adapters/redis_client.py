"""One pooled redis.asyncio client per process, with bounded timeouts and retries."""

from collections.abc import Iterable

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError


class _ResetAware(AbstractConnection):
    """uvloop raises RuntimeError, not an OSError, when writing to a connection the peer has
    reset (MagicStack/uvloop#506), and redis-py retries and reports only OSErrors as lost
    connections: a stale pooled connection would be a 500. Report it as what it is."""

    async def _send_packed_command(self, command: Iterable[bytes]) -> None:
        try:
            await super()._send_packed_command(command)
        except RuntimeError as error:
            if self._writer is None or self._writer.transport.is_closing():
                raise ConnectionResetError("the connection was closed by the peer") from error
            raise


def connect(
    url: str, *, timeout_seconds: float = 2.0, retries: int = 2, max_connections: int = 100
) -> Redis:
    """A client over one connection pool.

    Connection errors are retried with jittered backoff, so a restarted Redis is picked up
    again without restarting the service. Timeouts are not retried: a Redis that stopped
    answering is reported after one socket timeout instead of several. When every pooled
    connection is busy a request waits for one (up to the timeout) instead of failing at
    once, as redis-py's default pool does past its cap.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_seconds,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry=Retry(
            ExponentialWithJitterBackoff(base=0.05, cap=0.5),
            retries,
            supported_errors=(ConnectionError,),
        ),
        health_check_interval=30,
    )
    base = pool.connection_class  # TCP, TLS or unix socket, as the URL says
    pool.connection_class = type(f"ResetAware{base.__name__}", (_ResetAware, base), {})
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
