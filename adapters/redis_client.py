"""One pooled redis.asyncio client per process (one Redis, the primary a Sentinel set names,
or a Redis Cluster), and the bound every call to it runs within."""

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, NamedTuple, cast

from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError, NoScriptError, RedisError

from adapters.redis_address import RedisAddress, parse_redis_url
from application.errors import HistoryUnavailable

TIMEOUT_SECONDS = 2.0
# A deadline checked this late means the event loop is behind, not that Redis is silent.
BUSY_LOOP_SECONDS = 0.05
BUSY_LOOP_EXTENSIONS = 4

# Told of each store call as it ends: its operation, its seconds, whether it failed.
StoreObserver = Callable[[str, float, bool], None]


class StoreCall:
    """`async with StoreCall("the history store is unavailable"):` around Redis calls.

    Any Redis error, or no answer within the timeout, leaves as HistoryUnavailable with that
    text. One asyncio deadline per call rather than redis-py's socket timeouts (5 s by default
    since redis-py 8, turned off by connect()): those cost a task per command sent
    (asyncio.wait_for) and a second timer per reply read. A call cut off mid-command is safe:
    redis-py drops a connection whose command was cancelled. `observe`, if given, is told
    how the call went under its `operation` name.

    The deadline is Redis's, not this process's: when it comes while the event loop runs
    over BUSY_LOOP_SECONDS late (more requests than a worker's CPU serves), the answer may
    be waiting unread, so the call gets the timeout again, up to BUSY_LOOP_EXTENSIONS times.
    Otherwise an overloaded worker fails its requests with 503s that clients send again at
    once, and serves none.
    """

    __slots__ = (
        "_check",
        "_deadline",
        "_extensions",
        "_observe",
        "_operation",
        "_seconds",
        "_started",
        "_timeout",
        "_what",
    )

    def __init__(
        self,
        what: str,
        seconds: float = TIMEOUT_SECONDS,
        *,
        operation: str = "",
        observe: StoreObserver | None = None,
    ) -> None:
        self._what = what
        self._seconds = seconds
        self._operation = operation
        self._observe = observe

    async def __aenter__(self) -> None:
        self._started = time.perf_counter()
        self._timeout = asyncio.timeout(None)
        await self._timeout.__aenter__()
        loop = asyncio.get_running_loop()
        self._extensions = 0
        self._deadline = loop.time() + self._seconds
        self._check: asyncio.Handle = loop.call_at(self._deadline, self._expire)

    def _expire(self) -> None:
        """The deadline: late itself, or followed late by a callback asked for at once, it
        finds the loop behind."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - self._deadline > BUSY_LOOP_SECONDS:
            self._judge(loop, busy=True)
        else:
            self._check = loop.call_soon(self._probed, now)

    def _probed(self, asked_at: float) -> None:
        loop = asyncio.get_running_loop()
        self._judge(loop, busy=loop.time() - asked_at > BUSY_LOOP_SECONDS)

    def _judge(self, loop: asyncio.AbstractEventLoop, *, busy: bool) -> None:
        """Another timeout while the loop is behind and extensions are left; else the end."""
        if busy and self._extensions < BUSY_LOOP_EXTENSIONS:
            self._extensions += 1
            self._deadline = loop.time() + self._seconds
            self._check = loop.call_at(self._deadline, self._expire)
        else:
            self._timeout.reschedule(loop.time())  # cancels the call, as a deadline does

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._check.cancel()
        failed = isinstance(error, RedisError)
        try:
            await self._timeout.__aexit__(kind, error, traceback)
        except TimeoutError as late:
            failed = True
            raise HistoryUnavailable(self._what) from late
        finally:
            if self._observe is not None:
                self._observe(self._operation, time.perf_counter() - self._started, failed)
        if failed:
            raise HistoryUnavailable(self._what) from error


class StoreCalls:
    """One adapter's store calls: what their failure says, and who is told of each.
    `async with self._call("history.load"):`"""

    __slots__ = ("_observe", "_what")

    def __init__(self, what: str, observe: StoreObserver | None = None) -> None:
        self._what = what
        self._observe = observe

    def __call__(self, operation: str, seconds: float = TIMEOUT_SECONDS) -> StoreCall:
        return StoreCall(self._what, seconds, operation=operation, observe=self._observe)


# One EVALSHA: its keys, then its other arguments.
ScriptCall = tuple[Sequence[str | bytes], Sequence[str | int | bytes]]


async def evalsha_each(
    client: Redis, script: str, sha: str, calls: Sequence[ScriptCall]
) -> list[Any]:
    """Run `script` once per call and return the answers in order: in one pipeline on one
    Redis (one round trip), concurrently on a Cluster (redis-py refuses scripts in a cluster
    pipeline, whose keys may live on several nodes). The script is loaded once where Redis
    lacks it. Not redis-py's Script in a pipeline: that asks SCRIPT EXISTS before each batch.
    """
    answers: list[Any] = []
    for _ in range(2):
        if isinstance(client, RedisCluster):
            answers = await asyncio.gather(
                *(client.evalsha(sha, len(keys), *keys, *args) for keys, args in calls),
                return_exceptions=True,
            )
        else:
            async with client.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    pipe.evalsha(sha, len(keys), *keys, *args)
                answers = await pipe.execute(raise_on_error=False)
        if not any(isinstance(answer, NoScriptError) for answer in answers):
            break
        await client.script_load(script)
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    return answers


class _ResetAware(AbstractConnection):
    """uvloop raises RuntimeError, not an OSError, when writing to a connection the peer has
    reset (MagicStack/uvloop#506), and redis-py retries and reports only its own connection
    errors: a stale pooled connection would be a 500. Report it as what it is. So too a
    connection another task closed meanwhile (a Cluster client under a failover: redis-py
    finds its writer gone, an AttributeError)."""

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except RuntimeError as error:
            if "closed" not in str(error):
                raise
            raise ConnectionError("the connection was closed by the peer") from error
        except AttributeError as error:
            if getattr(self, "_writer", True) is not None:
                raise
            raise ConnectionError("the connection was closed meanwhile") from error


def _reset_aware(base: type[AbstractConnection]) -> type[AbstractConnection]:
    return type(f"ResetAware{base.__name__}", (_ResetAware, base), {})


class _Lean(ConnectionPool):
    """redis-py's pool (of whichever kind the URL chose) without the work it does around
    every command that this service never uses: observability recorders (off here), the
    check for get_connection's deprecated arguments, an event on each release (no listeners),
    and a lock around list operations that do not await. What makes a pooled connection
    safe to hand out is kept: one still connected and with nothing left unread, else
    redis-py's own checks (reconnecting it).

    At its cap a command waits for a connection to come back (within StoreCall's deadline)
    instead of failing at once, as redis-py's pool does: under a burst that is a short wait,
    not a 503 that the client retries at once."""

    _freed: asyncio.Condition | None = None
    _waiting = 0

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        if not self.can_get_connection():
            await self._room()
        connection: AbstractConnection = self.get_available_connection()  # type: ignore[no-untyped-call]
        try:
            if not connection.is_connected or await connection.can_read():
                await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def _room(self) -> None:
        self._freed = self._freed or asyncio.Condition()
        self._waiting += 1
        try:
            async with self._freed:
                await self._freed.wait_for(self.can_get_connection)
        finally:
            self._waiting -= 1

    async def release(self, connection: AbstractConnection) -> None:
        self._in_use_connections.remove(connection)
        if connection.should_reconnect():  # type: ignore[no-untyped-call]
            await connection.disconnect()
        self._available_connections.append(connection)
        if self._waiting and self._freed is not None:
            async with self._freed:
                self._freed.notify()


def _lean(pool: ConnectionPool) -> None:
    base = type(pool)
    pool.__class__ = type(f"Lean{base.__name__}", (_Lean, base), {})


class TlsFiles(NamedTuple):
    """For a TLS url: the CA that signed the servers' certificates (empty: the system's), and
    a client certificate and key for servers that ask for one."""

    ca: str = ""
    cert: str = ""
    key: str = ""

    def options(self) -> dict[str, Any]:
        return {
            "ssl_ca_certs": self.ca or None,
            "ssl_certfile": self.cert or None,
            "ssl_keyfile": self.key or None,
            "ssl_cert_reqs": "required",
        }


def _cluster(address: RedisAddress, options: dict[str, Any], tls: dict[str, Any]) -> Redis:
    """A Redis Cluster client from its seed nodes, routing each command to its key's node and
    following MOVED and ASK. Typed as Redis: the adapters use only commands both clients have
    (scripts over several keys go through evalsha_each, which tells them apart)."""
    cluster = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
        username=address.username,
        password=address.password,
        ssl=address.tls,
        max_connections=options["max_connections"],
        socket_connect_timeout=options["socket_connect_timeout"],
        socket_timeout=options["socket_timeout"],
        retry=options["retry"],
        health_check_interval=options["health_check_interval"],
        **tls,
    )
    # Its nodes' connections report a reset one as a connection error, as a single client's.
    aware = _reset_aware(cluster.connection_kwargs["connection_class"])
    cluster.connection_kwargs["connection_class"] = aware
    for node in cluster.nodes_manager.startup_nodes.values():
        node.connection_class = aware  # type: ignore[assignment]  # a Connection subclass
    return cast(Redis, cluster)


class _SentinelPrimary(Redis):
    """The primary a Sentinel set names (found again after a failover, by redis-py's
    SentinelConnectionPool); closing it closes the clients of the sentinels too."""

    sentinels: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            await self.sentinels.aclose()


NO_TLS_FILES = TlsFiles()


def connect(
    url: str, *, retries: int = 2, max_connections: int = 1000, tls: TlsFiles = NO_TLS_FILES
) -> Redis:
    """A client over one connection pool.

    Connection errors are retried with jittered backoff, so a restarted Redis is picked up
    again without restarting the service; StoreCall bounds the whole call, retries included,
    so a Redis that stopped answering is reported within its timeout. The pool's cap is far
    above what one process keeps busy (redis-py 8's default of 100 failed the 101st
    concurrent command under load); redis-py's blocking pool would wait at the cap instead,
    but its locking and bookkeeping cost measurable CPU on every command (docs/benchmark).
    """
    address = parse_redis_url(url)
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "socket_connect_timeout": TIMEOUT_SECONDS,
        "socket_timeout": None,  # StoreCall's deadline bounds each call instead (its docstring)
        "retry": Retry(
            ExponentialWithJitterBackoff(base=0.05, cap=0.5),
            retries,
            supported_errors=(ConnectionError,),
        ),
        "health_check_interval": 30,
    }
    tls_options = tls.options() if address.tls else {}
    if address.kind == "cluster":
        return _cluster(address, options, tls_options)
    if address.kind == "sentinel":
        sentinels = Sentinel(  # type: ignore[no-untyped-call]
            address.nodes,
            sentinel_kwargs={"socket_connect_timeout": TIMEOUT_SECONDS}
            | ({"ssl": True} | tls_options if address.tls else {}),
        )
        primary: _SentinelPrimary = sentinels.master_for(  # untyped in redis-py
            address.service_name,
            redis_class=_SentinelPrimary,
            db=address.db,
            username=address.username,
            password=address.password,
            ssl=address.tls,
            **tls_options,
            **options,
        )
        primary.sentinels = sentinels
        client: Redis = primary
    else:
        client = Redis.from_pool(ConnectionPool.from_url(url, **tls_options, **options))
    pool = client.connection_pool  # the client owns the pool: aclose() closes it
    base = pool.connection_class  # TCP, TLS, unix socket or sentinel-managed, as the URL says
    pool.connection_class = _reset_aware(base)
    _lean(pool)
    return client
