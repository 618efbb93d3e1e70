"""A Redis Cluster of 3 primaries and 3 replicas (redis-server 7) on free loopback ports.

The service is given its seed nodes as one URL, the cluster spelling of `[redis] url`:

    redis+cluster://[user:password@]127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3[/0]

(`rediss+cluster://` with TLS). `RedisCluster.url` names the three primaries as they were
formed; any one reachable seed is enough for a client to learn the rest (CLUSTER SLOTS).

Formed by hand rather than by `redis-cli --cluster create`, which polls once a second: each
primary takes a third of the slots (CLUSTER ADDSLOTSRANGE) and its own config epoch, every
node MEETs every other, each replica REPLICATEs its primary; then wait until every node says
cluster_state:ok, lists all six, and every replica's link to its primary is up.
"""

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

SLOTS = 16384
NODE_TIMEOUT_MS = 1000  # how long a silent node takes to be failed: the failover's floor
FORM_TIMEOUT = 20.0
FAILOVER_TIMEOUT = 20.0


class ClusterNode(RedisProcess):
    """One cluster node: `port`, `pid`, `running`, `node_id`, and its `role` as it says now."""

    node_id = ""

    @property
    def role(self) -> str:
        """What the node answers ROLE with now ("primary" or "replica"), or "down"."""
        if not self.running:
            return "down"
        role = self.call("ROLE")[0]
        return "primary" if role == "master" else "replica"

    def cluster_info(self) -> dict[str, str]:
        text: str = self.call("CLUSTER", "INFO")
        pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {key: value.strip() for key, value in pairs}

    def slot_owners(self) -> dict[int, list[int]]:
        """Each slot range's start mapped to the ports serving it, the primary first."""
        ranges: list[list[Any]] = self.call("CLUSTER", "SLOTS")
        return {int(r[0]): [int(node[1]) for node in r[2:]] for r in ranges}


class RedisCluster(Throwaway):
    """Six redis-servers in a cluster, for one test (or one module, or a `with` block).

    `nodes` are ClusterNodes: the first three start as primaries, node i + 3 replicates
    node i. kill(node) is SIGKILL; wait_for_failover(old) returns the replica promoted in
    its place once every running node says the cluster is ok; restart(node) brings a
    killed node back (it rejoins as a replica). With `certificates` the nodes speak TLS
    only, to clients, to each other and to their replicas.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        certificates: Certificates | None = None,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
        primaries: int = 3,
    ) -> None:
        self.own_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="redis-cluster-"))
        self.certificates = certificates
        self._node_timeout_ms = node_timeout_ms
        self._primaries = primaries
        port_names = ("tls-port", "cluster-port") if certificates else ("port", "cluster-port")
        options = certificates.client_options if certificates else {}
        self.nodes: list[ClusterNode] = [
            ClusterNode(
                self.directory / f"node{i}",
                self._settings,
                port_names=port_names,
                client_options=options,
                name=f"cluster-node{i}",
            )
            for i in range(2 * primaries)
        ]
        self._served: dict[int, list[int]] = {}  # a killed primary's port: its slot ranges
        self.formed_in: float | None = None  # seconds it took to start and form
        self.last_failover: float | None = None  # seconds the last wait_for_failover took

    def _settings(self) -> list[str]:
        tls = self.certificates.server_settings() if self.certificates else []
        if tls:
            tls += ["tls-cluster yes", "tls-replication yes"]
        return [
            *tls,
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            f"cluster-node-timeout {self._node_timeout_ms}",
            # A replica however long cut off may take over: the tests kill on purpose.
            "cluster-replica-validity-factor 0",
            "appendonly no",
            "save ''",
            # Full syncs over the socket at once, not after 7.0's 5 s wait for more replicas.
            "repl-diskless-sync yes",
            "repl-diskless-sync-delay 0",
            "repl-ping-replica-period 1",
        ]

    @property
    def seed_urls(self) -> list[str]:
        scheme = "rediss" if self.certificates else "redis"
        return [f"{scheme}://{node.address}" for node in self.nodes[: self._primaries]]

    @property
    def url(self) -> str:
        scheme = "rediss+cluster" if self.certificates else "redis+cluster"
        seeds = ",".join(node.address for node in self.nodes[: self._primaries])
        return f"{scheme}://{seeds}"

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """(host, port) of each seed, for redis-py's ClusterNode."""
        return [("127.0.0.1", node.port) for node in self.nodes[: self._primaries]]

    @property
    def client_options(self) -> dict[str, Any]:
        """redis-py keyword arguments the nodes need (the TLS files, if any)."""
        return self.certificates.client_options if self.certificates else {}

    def primaries(self) -> list[ClusterNode]:
        """The running nodes that serve slots as primaries now."""
        serving = {ports[0] for node in self._running() for ports in node.slot_owners().values()}
        return [node for node in self._running() if node.port in serving]

    def replicas(self) -> list[ClusterNode]:
        return [node for node in self._running() if node.role == "replica"]

    def node_for_key(self, key: str | bytes) -> ClusterNode:
        """The primary that serves the key's slot now."""
        node = self._running()[0]
        slot: int = node.call("CLUSTER", "KEYSLOT", key)
        for start, ports in sorted(node.slot_owners().items(), reverse=True):
            if start <= slot:
                return self._by_port(ports[0])
        raise RedisProcessError(f"no node serves slot {slot}")

    def start(self) -> str:
        started = time.monotonic()
        try:
            start_all(self.nodes)
            self._form()
        except BaseException:
            self.stop()
            raise
        self.formed_in = time.monotonic() - started
        return self.url

    def _form(self) -> None:
        primaries = self.nodes[: self._primaries]
        share = SLOTS // self._primaries
        for i, node in enumerate(primaries):
            last = SLOTS - 1 if i == len(primaries) - 1 else (i + 1) * share - 1
            node.call("CLUSTER", "ADDSLOTSRANGE", i * share, last)
        for epoch, node in enumerate(self.nodes, start=1):
            node.call("CLUSTER", "SET-CONFIG-EPOCH", epoch)
            node.node_id = node.call("CLUSTER", "MYID")
        for i, node in enumerate(self.nodes):
            for other in self.nodes[i + 1 :]:
                # The bus port is announced in the handshake; MEET takes it explicitly too.
                node.call("CLUSTER", "MEET", "127.0.0.1", other.port, other.ports["cluster-port"])
        for primary, replica in zip(primaries, self.nodes[self._primaries :], strict=True):
            wait_until(
                lambda r=replica, p=primary: _knows(r, p),
                FORM_TIMEOUT,
                f"{replica} to see {primary}",
            )
            replica.call("CLUSTER", "REPLICATE", primary.node_id)
        wait_until(self._formed, FORM_TIMEOUT, "the cluster to form")

    def _formed(self) -> bool:
        for node in self.nodes:
            if node.cluster_info().get("cluster_state") != "ok":
                return False
            owners = node.slot_owners()
            if len(owners) != self._primaries or any(len(p) != 2 for p in owners.values()):
                return False
        return all(replica.synced_replica() for replica in self.nodes[self._primaries :])

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL; the slots it served are noted for wait_for_failover()."""
        if node.running:
            others = [n for n in self._running() if n is not node]
            owners = others[0].slot_owners() if others else {}
            self._served[node.port] = [s for s, ports in owners.items() if ports[0] == node.port]
        node.kill()

    def restart(self, node: ClusterNode) -> None:
        """Back on its ports, with its nodes.conf: it rejoins the cluster, as a replica of
        whoever took its slots."""
        node.start()

    def wait_for_failover(
        self, old_primary: ClusterNode, timeout: float = FAILOVER_TIMEOUT
    ) -> ClusterNode:
        """Until a replica serves the killed primary's slots and every running node says
        cluster_state:ok; return the promoted node. Its duration is in `last_failover`."""
        if old_primary.running:
            raise RedisProcessError(f"{old_primary} still runs: kill it first")
        slots = self._served.get(old_primary.port)
        if not slots:
            raise RedisProcessError(f"{old_primary} served no slots when kill() stopped it")

        def recovered() -> bool:
            running = self._running()
            if any(n.cluster_info().get("cluster_state") != "ok" for n in running):
                return False
            for node in running:  # every node agrees the slots moved to a running primary
                owner = node.slot_owners()[slots[0]][0]
                if owner == old_primary.port or self._by_port(owner).role != "primary":
                    return False
            return True

        self.last_failover = wait_until(recovered, timeout, f"a failover of {old_primary}")
        return self._by_port(self._running()[0].slot_owners()[slots[0]][0])

    def flushall(self) -> None:
        """Empty every primary (the replicas follow): a clean slate for the next test."""
        for node in self.primaries():
            node.call("FLUSHALL")

    def _running(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.running]

    def _by_port(self, port: int) -> ClusterNode:
        return next(node for node in self.nodes if node.port == port)

    def stop(self) -> None:
        kill_all(self.nodes)

    def __repr__(self) -> str:
        return f"RedisCluster({self.url})"


def _nodes_table(node: ClusterNode) -> list[list[str]]:
    return [line.split() for line in node.call("CLUSTER", "NODES").splitlines()]


def _knows(node: ClusterNode, other: ClusterNode) -> bool:
    """Whether the handshake is over: `node` lists `other` under its real id."""
    return any(row[0] == other.node_id and "handshake" not in row[2] for row in _nodes_table(node))


def _fixture_cluster(directory: Path) -> Iterator[RedisCluster]:
    with RedisCluster(directory) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One cluster per test module, for tests that leave its nodes running (use keys of
    your own or call flushall()); a test that kills nodes takes `fresh_redis_cluster`."""
    yield from _fixture_cluster(tmp_path_factory.mktemp("redis-cluster"))


@pytest.fixture
def fresh_redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A cluster of its own for one test: it may kill and restart nodes."""
    yield from _fixture_cluster(tmp_path / "redis-cluster")


@pytest.fixture(scope="module")
def tls_redis_cluster(
    tls_certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisCluster]:
    """A cluster that speaks TLS only (clients, bus, replication), one per test module."""
    directory = tmp_path_factory.mktemp("redis-cluster-tls")
    with RedisCluster(directory, certificates=tls_certificates) as cluster:
        yield cluster
