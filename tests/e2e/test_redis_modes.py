"""The service as a process on the Redis deployments teams run: TLS with a client certificate
and an ACL user that may run only the service's commands, a Sentinel set (a primary, a
replica, three sentinels) and a Redis Cluster (three primaries, three replicas). Every path a
client has (turns, idempotent repeats, streams and re-attach, history, deletes, conversations,
the rate limit) works on each."""

import collections
import itertools
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Service, ServiceLauncher, chat
from tests.e2e.sse import check_whole, read_events
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_sentinel import RedisSentinel
from tests.support.redis_tls import (
    CLUSTER_CLIENT_COMMANDS,
    SERVICE_COMMANDS,
    Certificates,
    RedisTLSServer,
    create_user,
)

pytestmark = pytest.mark.e2e


def every_path(service: Service, tag: str) -> None:
    """A client's whole repertoire, each answered as on a plain Redis."""
    with service.client() as client:
        key = {"Idempotency-Key": f"key-{tag}"}
        first = service.expect(
            client.post("/chat/", json=chat("", f"hello {tag}"), headers=key), 200
        )
        session = first["session_id"]
        again = client.post("/chat/", json=chat("", f"hello {tag}"), headers=key)
        assert service.expect(again, 200) == first
        with client.stream("POST", "/chat/stream", json=chat(session, "stream it")) as response:
            events = read_events(response)
        assert check_whole(events).name == "done"
        with client.stream("GET", f"/chat/{session}/stream") as response:  # re-attach
            assert check_whole(read_events(response)).name == "done"
        shown = service.expect(client.get(f"/chat/{session}"), 200)
        assert [m["role"] for m in shown["messages"]] == ["user", "assistant"] * 2
        conversation = service.expect(client.post("/v1/conversations", json={}), 200)
        assert service.expect(client.get(f"/v1/conversations/{conversation['id']}"), 200)
        service.expect(client.delete(f"/chat/{session}"), 204)
        service.expect(client.get(f"/chat/{session}"), 404)


def tls_files(certificates: Certificates) -> dict[str, str]:
    """The [redis] keys that give the service the CA and its client certificate."""
    return {
        "tls_ca_file": str(certificates.ca),
        "tls_cert_file": str(certificates.client_cert),
        "tls_key_file": str(certificates.client_key),
    }


def config(url: str, **redis: str) -> dict[str, Any]:
    return {
        "redis": {"url": url, **redis},
        "auth": {"rate_limit": "1000/minute"},  # counted in Redis: MULTI, INCR, EXPIRE
        "llm": {"echo_word_seconds": "0.01"},
    }


def test_tls_with_a_client_certificate_and_an_acl_user_serves_every_path(
    module_launch: ServiceLauncher, redis_tls: RedisTLSServer
) -> None:
    service = module_launch(config(redis_tls.url, **tls_files(redis_tls.certificates)))
    ready = service.expect(service.client().get("/ready"), 200)
    assert ready["store"] == f"redis at 127.0.0.1:{redis_tls.port}"
    every_path(service, "tls")
    assert "NOPERM" not in service.stderr()
    assert redis_tls.password not in service.stderr()


def test_a_server_certificate_the_service_cannot_trust_is_a_store_unavailable(
    module_launch: ServiceLauncher, redis_tls: RedisTLSServer
) -> None:
    service = module_launch(config(redis_tls.url))  # the system's CAs only
    with service.client() as client:
        service.expect(client.get("/ready"), 503)
        refused = service.expect(client.post("/chat/", json=chat("", "hello")), 503)
    assert "unavailable" in refused["detail"]


def test_the_primary_of_a_sentinel_set_serves_every_path(
    module_launch: ServiceLauncher, redis_sentinel: RedisSentinel
) -> None:
    service = module_launch(config(redis_sentinel.url))
    ready = service.expect(service.client().get("/ready"), 200)
    assert ready["store"].startswith("redis sentinel chat-primary via 127.0.0.1:")
    every_path(service, "sentinel")


THINK_SECONDS = 0.2  # between a client's turns


class Load:
    """Clients sending turns, each in a session of its own, until told to stop; each answer
    is kept with its time."""

    def __init__(self, services: Service | list[Service], clients: int) -> None:
        self.services = services if isinstance(services, list) else [services]
        self.clients = clients
        self.answers: list[tuple[float, int, str, str]] = []  # time, status, session, message
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(n,)) for n in range(clients)]

    def _client(self, n: int) -> None:
        with self.services[n % len(self.services)].client(timeout=20) as client:
            for turn in itertools.count():
                if self._stop.is_set():
                    return
                session, message = f"failover-{n}", f"turn {turn} of client {n}"
                try:
                    status = client.post("/chat/", json=chat(session, message)).status_code
                except httpx.HTTPError:
                    status = 0  # no answer at all
                self.answers.append((time.monotonic(), status, session, message))
                # A chat client's pace, not a benchmark's: the suite's other tests run beside.
                time.sleep(THINK_SECONDS)

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def _lost(service: Service, answers: list[tuple[float, int, str, str]]) -> int:
    """Turns answered 200 whose message the history no longer holds."""
    acknowledged: dict[str, set[str]] = {}
    for _, status, session, message in answers:
        if status == 200:
            acknowledged.setdefault(session, set()).add(message)
    lost = 0
    with service.client() as client:
        for session, messages in acknowledged.items():
            shown = client.get(f"/chat/{session}").json().get("messages", [])
            lost += len(messages - {m["content"] for m in shown})
    return lost


@pytest.mark.slow
@pytest.mark.timeout(240)  # a failover on a loaded machine: seconds become tens
@pytest.mark.parametrize("min_replicas_ack", [1, 0])
def test_a_sentinel_failover_under_load_is_survived_without_a_restart(
    launch: ServiceLauncher, tmp_path: Path, min_replicas_ack: int
) -> None:
    """The primary is killed under load (2 services of 2 workers, 100 clients). Every request
    is answered 200 or 503, never 500 nor left hanging; the service follows the new primary
    on its own, answering again within 10 s. With min_replicas_ack = 1 nothing acknowledged
    is lost, and writes are acknowledged again once the new primary has a replica (the old
    primary, back). The numbers are printed (`pytest -s`)."""
    with RedisSentinel(tmp_path / "sentinel") as sentinels:
        settings = config(sentinels.url, min_replicas_ack=str(min_replicas_ack))
        settings["history"] = {"max_messages": "100000"}  # every turn kept, to be counted
        settings["auth"] = {}  # no rate limit: every client as fast as it can
        services = [launch(settings, workers=2), launch(settings, workers=2)]
        with Load(services, clients=100) as load:
            time.sleep(2)
            killed_at = time.monotonic()
            sentinels.kill_primary()
            sentinels.wait_for_failover()
            failed_over = time.monotonic() - killed_at
            replica_back = time.monotonic()
            if min_replicas_ack:  # the old primary, back: the sentinels make it a replica
                sentinels.restart_replica()
                while int(sentinels.primary.call("INFO", "replication")["connected_slaves"]) < 1:
                    time.sleep(0.05)
                replica_back = time.monotonic()
            deadline = time.monotonic() + 20
            while not [a for a in load.answers if a[0] > killed_at + failed_over and a[1] == 200]:
                assert time.monotonic() < deadline, "no turn was answered after the failover"
                time.sleep(0.1)
            time.sleep(2)
        after = sorted((t, status) for t, status, *_ in load.answers if t > killed_at)
        first_refusal = min((t for t, status in after if status != 200), default=killed_at)
        answered_again = min(t for t, status in after if t >= first_refusal and status == 200)
        statuses = collections.Counter(status for _, status, *_ in load.answers)
        lost = _lost(services[0], load.answers)
    print(
        f"\nsentinel, min_replicas_ack={min_replicas_ack}: {statuses[200]} answered 200, "
        f"{statuses[503]} 503, others "
        f"{dict((s, c) for s, c in statuses.items() if s not in (200, 503))}; "
        f"sentinels failed over in {failed_over:.1f} s; refusals from "
        f"{first_refusal - killed_at:.1f} s to {answered_again - killed_at:.1f} s after the "
        f"kill (a replica again after {replica_back - killed_at:.1f} s); {lost} acknowledged "
        "turns lost"
    )
    assert set(statuses) <= {200, 503}, statuses
    if min_replicas_ack:
        # No write can be acknowledged while the new primary has no replica; once the old
        # primary is back as one, the service answers within seconds.
        assert answered_again - replica_back < 5
        assert lost == 0
    else:
        assert answered_again - killed_at < 10


def test_two_services_on_one_sentinel_set_share_sessions_and_streams(
    module_launch: ServiceLauncher, redis_sentinel: RedisSentinel
) -> None:
    """Replicas of the service: a stream begun on one is re-attached to on the other, from
    the last event the client saw, and both show the same history."""
    settings = config(redis_sentinel.url)
    settings["llm"] = {"echo_word_seconds": "0.05"}  # a reply that lasts a while
    first, second = module_launch(settings), module_launch(settings)
    with first.client() as one, second.client() as other:
        with one.stream("POST", "/chat/stream", json=chat("", "one two three four")) as begun:
            seen = read_events(begun, count=2)  # the session, then a first delta
        session = seen[0].data["session_id"]
        headers = {"Last-Event-ID": seen[-1].id}
        with other.stream("GET", f"/chat/{session}/stream", headers=headers) as rest:
            done = check_whole(read_events(rest), after=seen[-1].seq)
        assert done.name == "done"
        mine = first.expect(one.get(f"/chat/{session}"), 200)
        assert mine == second.expect(other.get(f"/chat/{session}"), 200)
        assert [m["role"] for m in mine["messages"]] == ["user", "assistant"]


def test_a_redis_cluster_serves_every_path_with_sessions_on_every_primary(
    module_launch: ServiceLauncher, redis_cluster: RedisCluster
) -> None:
    """No CROSSSLOT or MOVED reaches a client: a session's keys share its slot, and the
    client follows the slot map; sessions spread over all three primaries."""
    service = module_launch(config(redis_cluster.url))
    ready = service.expect(service.client().get("/ready"), 200)
    assert ready["store"].startswith("redis cluster via 127.0.0.1:")
    every_path(service, "cluster")
    with service.client() as client:
        for n in range(12):
            service.expect(client.post("/chat/", json=chat(f"spread-{n}", "hello")), 200)
    holding = {node.port for node in redis_cluster.primaries() if node.call("DBSIZE") > 0}
    assert holding == {node.port for node in redis_cluster.primaries()}
    assert "CROSSSLOT" not in service.stderr()
    assert "MOVED" not in service.stderr()


@pytest.mark.slow
@pytest.mark.timeout(240)  # a failover on a loaded machine: seconds become tens
@pytest.mark.parametrize("min_replicas_ack", [1, 0])
def test_a_cluster_primary_killed_under_load_is_survived_without_a_restart(
    launch: ServiceLauncher, tmp_path: Path, min_replicas_ack: int
) -> None:
    """A primary of a 3+3 Cluster is killed under load (2 services of 2 workers, 100
    clients): every request is answered 200 or 503, never 500 nor left hanging; the sessions
    it served are answered again once its replica takes over (with min_replicas_ack = 1:
    once that one has a replica again, the old primary back), the others all along; with
    min_replicas_ack = 1 no acknowledged turn is lost. The numbers are printed (`pytest -s`)."""
    with RedisCluster(tmp_path / "cluster") as nodes:
        settings = config(nodes.url, min_replicas_ack=str(min_replicas_ack))
        settings["history"] = {"max_messages": "100000"}  # every turn kept, to be counted
        settings["auth"] = {}
        services = [launch(settings, workers=2), launch(settings, workers=2)]
        with Load(services, clients=100) as load:
            time.sleep(2)
            killed = nodes.primaries()[0]
            killed_at = time.monotonic()
            nodes.kill(killed)
            promoted = nodes.wait_for_failover(killed)
            failed_over = replica_back = time.monotonic() - killed_at
            if min_replicas_ack:  # the old primary rejoins, as the promoted one's replica
                nodes.restart(killed)
                while int(promoted.call("INFO", "replication")["connected_slaves"]) < 1:
                    time.sleep(0.05)
                replica_back = time.monotonic() - killed_at
            time.sleep(3)
        after = sorted((t - killed_at, status) for t, status, *_ in load.answers if t > killed_at)
        refusals = [t for t, status in after if status != 200] or [0.0]
        statuses = collections.Counter(status for _, status, *_ in load.answers)
        lost = _lost(services[0], load.answers)
    print(
        f"\ncluster, min_replicas_ack={min_replicas_ack}: {statuses[200]} answered 200, "
        f"{statuses[503]} 503, others "
        f"{dict((s, c) for s, c in statuses.items() if s not in (200, 503))}; the replica took "
        f"over in {failed_over:.1f} s (a replica again after {replica_back:.1f} s); refusals "
        f"from {refusals[0]:.1f} s to {refusals[-1]:.1f} s after the kill; {lost} "
        "acknowledged turns lost"
    )
    assert set(statuses) <= {200, 503}, statuses
    assert refusals[-1] - replica_back < 10  # the last refusal: from then on, all answered
    if min_replicas_ack:
        assert lost == 0


@pytest.mark.parametrize("topology", ["sentinel", "cluster"])
def test_tls_in_every_mode(
    launch: ServiceLauncher, tmp_path: Path, redis_tls: RedisTLSServer, topology: str
) -> None:
    """A Sentinel set and a Cluster that speak TLS only (clients, replication, sentinels, the
    cluster bus), with the same CA and client certificate settings as one server."""
    files = redis_tls.certificates
    harness = RedisSentinel if topology == "sentinel" else RedisCluster
    with harness(tmp_path / topology, certificates=files) as nodes:
        assert nodes.url.startswith("rediss+")
        service = launch(config(nodes.url, **tls_files(files)))
        every_path(service, f"tls-{topology}")


def test_an_acl_user_on_a_cluster_serves_every_path(
    module_launch: ServiceLauncher, redis_cluster: RedisCluster
) -> None:
    """The same user on every node (ACLs are per server), with the service's commands and
    what a cluster client adds (the slot map, ASK)."""
    password = secrets.token_urlsafe(12)
    commands = (*SERVICE_COMMANDS, *CLUSTER_CLIENT_COMMANDS)
    create_user(redis_cluster.nodes, "chat-service", password, commands=commands)
    seeds = redis_cluster.url.removeprefix("redis+cluster://")
    service = module_launch(config(f"redis+cluster://chat-service:{password}@{seeds}"))
    every_path(service, "cluster-acl")
    assert "NOPERM" not in service.stderr()


@pytest.mark.slow
@pytest.mark.timeout(240)  # a failover on a loaded machine: seconds become tens
def test_a_stream_is_re_attached_to_across_a_sentinel_failover(
    launch: ServiceLauncher, tmp_path: Path
) -> None:
    """A reply streaming while its Redis primary dies goes on; once the replica is promoted,
    a client that lost its connection re-attaches from its last event and gets the rest, and
    the exchange is stored whole."""
    words = " ".join(f"word{n}" for n in range(40))
    with RedisSentinel(tmp_path / "sentinel") as sentinels:
        settings = config(sentinels.url)
        settings["llm"] = {"echo_word_seconds": "0.15"}  # about 6 s of reply
        service = launch(settings, workers=2)
        with service.client() as client:
            with client.stream("POST", "/chat/stream", json=chat("", words)) as begun:
                seen = read_events(begun, count=3)
            session = seen[0].data["session_id"]
            sentinels.kill_primary()
            sentinels.wait_for_failover()
            headers = {"Last-Event-ID": seen[-1].id}
            with client.stream("GET", f"/chat/{session}/stream", headers=headers) as rest:
                done = check_whole(read_events(rest), after=seen[-1].seq)
            assert done.name == "done", done
            assert f"You said: {words} (" in done.data["response"]  # the echo reply, whole
            stored = service.expect(client.get(f"/chat/{session}"), 200)["messages"]
            assert [m["content"] for m in stored] == [words, done.data["response"]]


def test_an_acl_user_on_a_sentinel_set_serves_every_path(
    module_launch: ServiceLauncher, redis_sentinel: RedisSentinel
) -> None:
    """The user on the primary and the replica (ACLs are per server, and a failover must
    find it there); the sentinels are asked without credentials."""
    password = secrets.token_urlsafe(12)
    create_user([redis_sentinel.primary, redis_sentinel.replica], "chat-service", password)
    hosts = redis_sentinel.url.removeprefix("redis+sentinel://")
    service = module_launch(config(f"redis+sentinel://chat-service:{password}@{hosts}"))
    every_path(service, "sentinel-acl")
    assert "NOPERM" not in service.stderr()
