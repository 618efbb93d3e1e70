"""The cleanup job in a running service: it deletes histories, once per interval in total.

Three workers share a redis-server of the test's own, which the test watches with MONITOR
from before the service starts: every claim of a slot's lock (SET NX) by any worker is seen,
in the order Redis ran them, so the first claim of a slot is the one that won it.
"""

import asyncio
import re
import time
from collections import Counter, defaultdict

import pytest
import redis
import redis.asyncio

from tests.e2e.conftest import (
    Service,
    ServiceLauncher,
    tcp_connections,
    wait_until,
    worker_pids,
)
from tests.support.redis_server import RedisServer

WORKERS = 3
INTERVAL = 1  # seconds; the lock of a slot lives 2 intervals
WATCH_SECONDS = 5
LOCK_PREFIX = "chat:lock:cleanup:"


def purges(service: Service) -> list[int]:
    """What each purge logged, all workers together (they share stderr)."""
    return [int(n) for n in re.findall(r"cleanup deleted (\d+) chat histories", service.stderr())]


def worker_by_redis_port(service: Service, redis_port: int) -> dict[int, int]:
    """Local port of each worker's connection to Redis -> that worker's pid."""
    assert service.process is not None
    return {
        local: pid
        for pid in worker_pids(service.process.pid)
        for local, remote in tcp_connections(pid)
        if remote == redis_port
    }


async def keep_talking(service: Service, session_id: str, seconds: float) -> int:
    """Send message after message in one session for that long; return how many."""
    turns = 0
    deadline = time.monotonic() + seconds
    async with service.async_client() as http:
        while time.monotonic() < deadline:
            body = {"session_id": session_id, "message": f"turn {turns}"}
            service.expect(await http.post("/chat/", json=body), 200)
            turns += 1
    return turns


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_three_workers_purge_once_per_interval_in_total(
    launch: ServiceLauncher, redis_server: RedisServer
) -> None:
    claims: list[tuple[float, int, int]] = []  # (when, slot, client port), in Redis's order

    async def watch(monitor: redis.asyncio.Redis) -> None:
        async with monitor.monitor() as commands:
            async for command in commands.listen():
                words = command["command"].split()
                if (
                    len(words) > 1
                    and words[0].upper() == "SET"
                    and words[1].startswith(LOCK_PREFIX)
                ):
                    slot = int(words[1].removeprefix(LOCK_PREFIX))
                    claims.append((command["time"], slot, int(command["client_port"])))

    with redis.Redis.from_url(redis_server.url) as store:
        store.set("another-app:settings", "kept")  # the purge is for chat histories only
    monitor = redis.asyncio.Redis.from_url(redis_server.url, socket_timeout=None)  # it waits
    watcher = asyncio.create_task(watch(monitor))
    try:
        config = {
            "redis": {"url": redis_server.url},
            "cleanup": {"enabled": "true", "interval_seconds": str(INTERVAL)},
            "history": {"max_messages": "10000"},
        }
        service = await asyncio.to_thread(launch, config, workers=WORKERS)
        await asyncio.to_thread(
            wait_until,
            lambda: service.stderr().count(" ready: ") == WORKERS,
            20,
            "all workers ready",
        )
        async with service.async_client() as http:
            doomed = {"session_id": "doomed", "message": "hi"}
            service.expect(await http.post("/chat/", json=doomed), 200)
            for _ in range(50):  # a purge comes within an interval or two
                if (await http.get("/chat/doomed")).status_code == 404:
                    break
                await asyncio.sleep(0.1)
            service.expect(await http.get("/chat/doomed"), 404)

        started, purged_before = time.time(), len(purges(service))
        turns = await keep_talking(service, "in-use", WATCH_SECONDS)
        ended, purged_during = time.time(), len(purges(service)) - purged_before
        async with service.async_client() as http:
            kept = service.expect(await http.get("/chat/in-use"), 200)["messages"]
        # Idle histories go each interval; one written to all along never loses a turn.
        assert len(kept) == 2 * turns, (turns, kept[:4])
        workers = worker_by_redis_port(service, redis_server.port)
        assert await asyncio.to_thread(service.stop) == 0, service.output()
        await asyncio.sleep(0.5)  # MONITOR's report of the last claims is on its way
        assert not watcher.done(), watcher  # a watcher that died would see no claims
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await monitor.aclose()

    by_slot: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for when, slot, port in claims:
        by_slot[slot].append((when, workers.get(port, port)))
    winners = Counter(attempts[0][1] for attempts in by_slot.values())
    elapsed = int(ended // INTERVAL) - int(started // INTERVAL)  # slot instants in the window
    watched = {slot for when, slot, _ in claims if started <= when <= ended}
    figures = (
        f"{elapsed} slots in {ended - started:.1f} s: {purged_during} purges logged, "
        f"{len(watched)} slots claimed; whole run: {len(purges(service))} purges logged, "
        f"{len(by_slot)} slots claimed, won by worker {dict(winners)}"
    )
    print(f"\ncleanup: {figures}")

    # Once per interval: as many purges as slot instants went by, not one per worker.
    assert abs(purged_during - elapsed) <= 1, (figures, service.output())
    assert abs(len(watched) - elapsed) <= 1, figures
    # Every worker runs the job and claims; the lock lets one claim per slot through. A slot's
    # key lives two intervals, so a claim within that time of the first cannot win it again.
    attempted_by = {pid for attempts in by_slot.values() for _, pid in attempts}
    assert attempted_by == set(workers.values()), (attempted_by, workers)
    assert len(set(workers.values())) == WORKERS, workers
    for slot, attempts in by_slot.items():
        pids = [pid for _, pid in attempts]
        assert len(pids) == len(set(pids)), f"a worker claimed slot {slot} twice: {attempts}"
        assert attempts[-1][0] - attempts[0][0] < 2 * INTERVAL, (slot, attempts)
    # One purge logged per slot won, none for a slot lost (the last may be cut by the stop).
    assert len(by_slot) - 1 <= len(purges(service)) <= len(by_slot), figures

    assert sum(purges(service)) >= 1, "no purge deleted anything, not even 'doomed'"
    with redis.Redis.from_url(redis_server.url) as store:
        assert store.get("another-app:settings") == b"kept"
    # Checked last: when only this fails, a worker's last log lines were lost at its exit
    # (see STOPPED_LINE_LOST in test_shutdown.py).
    stopped = service.stderr().count("cleanup scheduler stopped")
    assert stopped == WORKERS, f"{stopped} of {WORKERS} workers logged it\n{service.output()}"
