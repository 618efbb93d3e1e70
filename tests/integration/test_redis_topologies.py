"""The Redis topology harnesses themselves, proven with plain redis-py: a Cluster of 6 spreads
keys over 3 primaries and survives a killed one, a Sentinel set fails over, a TLS server
trusts only clients of its CA, and the service's ACL user can do its work and nothing else."""

import time

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as ClusterClient
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, NoPermissionError, ResponseError

from tests.support.redis_cluster import RedisCluster
from tests.support.redis_sentinel import RedisSentinel
from tests.support.redis_tls import RedisTLSServer

pytestmark = pytest.mark.integration


def _cluster_client(cluster: RedisCluster) -> ClusterClient:
    nodes = [ClusterNode(host, port) for host, port in cluster.startup_nodes]
    return ClusterClient(startup_nodes=nodes, **cluster.client_options)


async def test_a_cluster_of_six_spreads_keys_over_three_primaries(
    redis_cluster: RedisCluster,
) -> None:
    assert redis_cluster.formed_in is not None
    assert redis_cluster.formed_in < 10
    assert redis_cluster.url.startswith("redis+cluster://127.0.0.1:")
    assert len(redis_cluster.url.split(",")) == 3
    roles = sorted(node.role for node in redis_cluster.nodes)
    assert roles == ["primary"] * 3 + ["replica"] * 3
    assert all(node.pid for node in redis_cluster.nodes)
    client = _cluster_client(redis_cluster)
    try:
        for i in range(60):
            await client.set(f"spread:{i}", i)
        assert [int(await client.get(f"spread:{i}")) for i in range(60)] == list(range(60))
    finally:
        await client.aclose()
    sizes = [node.call("DBSIZE") for node in redis_cluster.primaries()]
    assert len(sizes) == 3
    assert all(size > 0 for size in sizes)
    assert sum(sizes) == 60


@pytest.mark.slow
async def test_a_killed_cluster_primary_is_replaced(fresh_redis_cluster: RedisCluster) -> None:
    cluster = fresh_redis_cluster
    client = _cluster_client(cluster)
    try:
        await client.set("survivor", "kept")
        old = cluster.node_for_key("survivor")
        replicas_before = {node.port for node in cluster.replicas()}
        cluster.kill(old)
        new = cluster.wait_for_failover(old)
        assert new.port in replicas_before
        assert new.role == "primary"
        assert cluster.last_failover is not None
        assert cluster.last_failover < 15
        assert cluster.node_for_key("survivor") is new
        deadline = time.monotonic() + 10
        while True:  # the client learns the new slot map on its own
            try:
                assert await client.get("survivor") == b"kept"
                await client.set("after", "failover")
                break
            except ConnectionError:
                assert time.monotonic() < deadline
    finally:
        await client.aclose()
    cluster.restart(old)
    assert old.running


@pytest.mark.slow
async def test_the_sentinels_fail_over_to_the_replica(
    fresh_redis_sentinel: RedisSentinel,
) -> None:
    setup = fresh_redis_sentinel
    assert setup.url.endswith(f"/{setup.service_name}/0")
    assert setup.url.startswith("redis+sentinel://127.0.0.1:")
    sentinel = Sentinel(setup.sentinel_addresses, socket_timeout=1.0)
    primary = sentinel.master_for(setup.service_name)
    try:
        await primary.set("written", "before")
        await primary.wait(1, 1000)
        replica = setup.replica
        setup.kill_primary()
        assert setup.wait_for_failover() is replica
        assert setup.primary is replica
        assert await sentinel.discover_master(setup.service_name) == ("127.0.0.1", replica.port)
        assert setup.last_failover is not None
        assert setup.last_failover < 15
        assert await primary.get("written") == b"before"  # the client follows on its own
        await primary.set("written", "after")
    finally:
        await primary.aclose()
        for client in sentinel.sentinels:
            await client.aclose()


async def test_the_tls_server_trusts_only_clients_of_its_ca(redis_tls: RedisTLSServer) -> None:
    files = redis_tls.certificates
    port = {"host": "127.0.0.1", "port": redis_tls.port, "retry": Retry(NoBackoff(), 0)}
    refused = [
        Redis(**port, ssl=True),  # the system's CAs: the server's certificate is unknown
        Redis(**port, ssl=True, ssl_ca_certs=str(files.ca)),  # tls-auth-clients yes: no cert
        Redis(**port),  # plain TCP to the TLS port
    ]
    for client in refused:
        with pytest.raises(ConnectionError):
            await client.ping()
        await client.aclose()
    client = Redis.from_url(redis_tls.url, **redis_tls.ssl_options)
    try:
        assert await client.ping()
        with pytest.raises(NoPermissionError):  # the service user, not the default one
            await client.acl_whoami()
    finally:
        await client.aclose()
    client = Redis.from_url(redis_tls.url_with_files)
    try:
        assert await client.ping()
    finally:
        await client.aclose()


async def test_the_acl_user_runs_the_service_commands_and_nothing_else(
    redis_tls: RedisTLSServer,
) -> None:
    client = Redis.from_url(redis_tls.url, **redis_tls.ssl_options)
    tagged = "{chat:history:ns:s1}"
    try:
        assert await client.ping()
        await client.set("chat:lock:x", 1, ex=10)
        assert await client.get("chat:lock:x") == b"1"
        assert await client.incr("chat:ratelimit:x") == 1
        assert await client.expire("chat:ratelimit:x", 10)
        async with client.pipeline(transaction=True) as pipe:
            pipe.incr("chat:ratelimit:y").expire("chat:ratelimit:y", 10)
            assert await pipe.execute() == [1, True]
        await client.rpush("chat:history:ns:s1", "a")  # only as a stand-in for the script
        assert await client.lrange("chat:history:ns:s1", 0, -1) == [b"a"]
        assert await client.lindex("chat:history:ns:s1", -1) == b"a"
        await client.set(f"{tagged}:session", "record")
        assert await client.exists(f"{tagged}:session") == 1
        await client.xadd(f"{tagged}:reply:r1", {"e": "1"}, id="1-1")
        assert len(await client.xrange(f"{tagged}:reply:r1")) == 1
        assert await client.xread({f"{tagged}:reply:r1": "0-0"}, block=1)
        assert [k async for k in client.scan_iter(match="chat:lock:*")] == [b"chat:lock:x"]
        script = client.register_script(
            "redis.call('HINCRBY', KEYS[1], 'n', 1) redis.call('PEXPIRE', KEYS[1], 10000)"
            " redis.call('LPOS', KEYS[2], 'a') redis.call('XREVRANGE', KEYS[3], '+', '-')"
            " redis.call('TIME') return redis.call('HMGET', KEYS[1], 'n')"
        )
        keys = ["chat:model:m", "chat:history:ns:s1", f"{tagged}:reply:r1"]
        assert await script(keys=keys) == [b"1"]
        assert await client.unlink("chat:history:ns:s1", f"{tagged}:session") == 2
        assert await client.wait(0, 10) == 0
        for refused in (
            client.flushall(),
            client.keys("*"),
            client.config_get("*"),
            client.get("other:key"),  # outside the prefix
        ):
            with pytest.raises(NoPermissionError):
                await refused
        with pytest.raises(ResponseError, match="can't run this command"):
            await client.eval("return redis.call('FLUSHDB')", 0)  # nor from a script
    finally:
        await client.aclose()


async def test_the_cluster_and_the_sentinels_speak_tls_when_asked(
    tls_redis_cluster: RedisCluster, tls_redis_sentinel: RedisSentinel
) -> None:
    assert tls_redis_cluster.url.startswith("rediss+cluster://")
    client = _cluster_client(tls_redis_cluster)
    try:
        for i in range(30):
            await client.set(f"tls:{i}", i)
    finally:
        await client.aclose()
    assert len([n for n in tls_redis_cluster.primaries() if n.call("DBSIZE")]) == 3

    setup = tls_redis_sentinel
    assert setup.url.startswith("rediss+sentinel://")
    options = setup.client_options
    sentinel = Sentinel(setup.sentinel_addresses, sentinel_kwargs=options, **options)
    primary = sentinel.master_for(setup.service_name)
    try:
        assert await primary.set("over", "tls")
        assert await sentinel.discover_master(setup.service_name) == (
            "127.0.0.1",
            setup.primary.port,
        )
    finally:
        await primary.aclose()
        for client in sentinel.sentinels:
            await client.aclose()
