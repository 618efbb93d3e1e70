"""A primary, a replica and 3 sentinels (redis-server 7) on free loopback ports.

The service is given the sentinels as one URL, the convention RedisVL uses:

    redis+sentinel://[user:password@]127.0.0.1:s1,127.0.0.1:s2,127.0.0.1:s3/<service_name>/<db>

(`rediss+sentinel://` with TLS). The sentinels watch `service_name` with a quorum of 2,
call the primary down after `down_after_ms` of silence and promote the replica.
"""

import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.redis_process import (
    RedisProcess,
    RedisProcessError,
    Throwaway,
    kill_all,
    start_all,
    wait_until,
)
from tests.support.redis_tls import Certificates

SERVICE_NAME = "chat-primary"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 2000  # also how long before a failed election is tried again (x2)
FORM_TIMEOUT = 20.0
FAILOVER_TIMEOUT = 20.0


class RedisSentinel(Throwaway):
    """The set for one test (or one module, or a `with` block).

    `primary` and `replica` are RedisProcesses (`port`, `pid`, `running`) in their roles
    as the sentinels last reported them: wait_for_failover() swaps them, so after it
    `replica` is the killed old primary (restart_replica() brings it back, and the
    sentinels make it a replica). `sentinels` are the three sentinel processes.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        service_name: str = SERVICE_NAME,
        certificates: Certificates | None = None,
        down_after_ms: int = DOWN_AFTER_MS,
        failover_timeout_ms: int = FAILOVER_TIMEOUT_MS,
    ) -> None:
        self.own_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="redis-sentinel-"))
        self.service_name = service_name
        self.certificates = certificates
        self._down_after_ms = down_after_ms
        self._failover_timeout_ms = failover_timeout_ms
        port_names = ("tls-port",) if certificates else ("port",)
        options = self.client_options
        self.primary = RedisProcess(
            self.directory / "primary",
            self._data_settings,
            port_names=port_names,
            client_options=options,
            name="sentinel-primary",
        )
        first_primary = self.primary
        self.replica = RedisProcess(
            self.directory / "replica",
            lambda: [*self._data_settings(), f"replicaof 127.0.0.1 {first_primary.port}"],
            port_names=port_names,
            client_options=options,
            name="sentinel-replica",
        )
        # Each sentinel is told the others' ids and ports, or it would learn them from their
        # hello messages, which come every 2 s. A port changed by a retry is learnt that way.
        self._sentinel_ids = [secrets.token_hex(20) for _ in range(3)]
        self.sentinels = [
            RedisProcess(
                self.directory / f"sentinel{i}",
                lambda i=i: self._sentinel_settings(i),
                port_names=port_names,
                sentinel=True,
                client_options=options,
                name=f"sentinel{i}",
            )
            for i in range(3)
        ]
        self.formed_in: float | None = None  # seconds it took to start and settle
        self.last_failover: float | None = None  # seconds the last wait_for_failover took

    def _tls_settings(self) -> list[str]:
        if self.certificates is None:
            return []
        return [*self.certificates.server_settings(), "tls-replication yes"]

    def _data_settings(self) -> list[str]:
        return [
            *self._tls_settings(),
            "appendonly no",
            "save ''",
            "repl-diskless-sync yes",
            "repl-diskless-sync-delay 0",
            "repl-ping-replica-period 1",
        ]

    def _sentinel_settings(self, me: int) -> list[str]:
        name = self.service_name
        others = [
            f"sentinel known-sentinel {name} 127.0.0.1 {sentinel.port} {self._sentinel_ids[i]}"
            for i, sentinel in enumerate(self.sentinels)
            if i != me
        ]
        return [
            *self._tls_settings(),
            f"sentinel myid {self._sentinel_ids[me]}",
            f"sentinel monitor {name} 127.0.0.1 {self.primary.port} 2",
            f"sentinel down-after-milliseconds {name} {self._down_after_ms}",
            f"sentinel failover-timeout {name} {self._failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
            *others,
        ]

    @property
    def client_options(self) -> dict[str, Any]:
        """redis-py keyword arguments every process needs (the TLS files, if any)."""
        return self.certificates.client_options if self.certificates else {}

    @property
    def url(self) -> str:
        scheme = "rediss+sentinel" if self.certificates else "redis+sentinel"
        hosts = ",".join(sentinel.address for sentinel in self.sentinels)
        return f"{scheme}://{hosts}/{self.service_name}/0"

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """(host, port) of each sentinel, for redis.asyncio.sentinel.Sentinel."""
        return [("127.0.0.1", sentinel.port) for sentinel in self.sentinels]

    def start(self) -> str:
        started = time.monotonic()
        try:
            start_all([self.primary])
            start_all([self.replica])
            wait_until(self.replica.synced_replica, FORM_TIMEOUT, "the replica to sync")
            start_all(self.sentinels)
            wait_until(self._settled, FORM_TIMEOUT, "the sentinels to see each other")
        except BaseException:
            self.stop()
            raise
        self.formed_in = time.monotonic() - started
        return self.url

    def _settled(self) -> bool:
        """Every sentinel knows the other two and the replica, and finds it healthy: the
        state a failover needs (a quorum, a leader, a replica to promote)."""
        for sentinel in self.sentinels:
            master = sentinel.call("SENTINEL", "MASTER", self.service_name)
            if master.get("flags") != "master" or int(master["num-other-sentinels"]) != 2:
                return False
            replicas = sentinel.call("SENTINEL", "REPLICAS", self.service_name)
            ports = {int(r["port"]) for r in replicas if r["master-link-status"] == "ok"}
            if ports != {self.replica.port}:
                return False
        return True

    def primary_address(self, sentinel: RedisProcess) -> tuple[str, int] | None:
        answer = sentinel.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service_name)
        return None if answer is None else (answer[0], int(answer[1]))

    def kill_primary(self) -> RedisProcess:
        """SIGKILL the primary; return it."""
        self.primary.kill()
        return self.primary

    def wait_for_failover(self, timeout: float = FAILOVER_TIMEOUT) -> RedisProcess:
        """Until every running sentinel names the replica as the primary and it says it is
        one; then swap `primary` and `replica` and return the new primary."""
        if self.primary.running:
            raise RedisProcessError("the primary still runs: kill_primary() first")
        candidate = self.replica
        expected = ("127.0.0.1", candidate.port)

        def promoted() -> bool:
            running = [s for s in self.sentinels if s.running]
            if any(self.primary_address(s) != expected for s in running):
                return False
            return bool(candidate.call("ROLE")[0] == "master")

        self.last_failover = wait_until(promoted, timeout, "the sentinels to fail over")
        self.primary, self.replica = candidate, self.primary
        return self.primary

    def restart_replica(self) -> None:
        """Restart the replica (after a failover: the old primary, on its old port). The
        sentinels turn it into a replica of the new primary within a few seconds."""
        self.replica.start()

    def stop(self) -> None:
        kill_all([*self.sentinels, self.replica, self.primary])

    def __repr__(self) -> str:
        return f"RedisSentinel({self.url})"


def _fixture_sentinel(directory: Path) -> Iterator[RedisSentinel]:
    with RedisSentinel(directory) as sentinel:
        yield sentinel


@pytest.fixture(scope="module")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    """One sentinel set per test module, for tests that leave it running; a test that
    kills the primary takes `fresh_redis_sentinel`."""
    yield from _fixture_sentinel(tmp_path_factory.mktemp("redis-sentinel"))


@pytest.fixture
def fresh_redis_sentinel(tmp_path: Path) -> Iterator[RedisSentinel]:
    """A sentinel set of its own for one test: it may kill the primary."""
    yield from _fixture_sentinel(tmp_path / "redis-sentinel")


@pytest.fixture(scope="module")
def tls_redis_sentinel(
    tls_certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisSentinel]:
    """A sentinel set that speaks TLS only (clients, sentinels, replication)."""
    directory = tmp_path_factory.mktemp("redis-sentinel-tls")
    with RedisSentinel(directory, certificates=tls_certificates) as sentinel:
        yield sentinel
