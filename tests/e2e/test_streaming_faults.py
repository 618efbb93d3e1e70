"""Streamed replies when the serving process is not the producing one, or something fails:
another replica, another worker, a Redis restart mid-reply, a producer killed with kill -9.

Replicas are two `serve` processes sharing one redis-server (as two hosts behind a load
balancer would), which says deterministically who serves a re-attach. The echo provider
streams its reply word by word, WORD_SECONDS apart: the length of a message sets how long
its reply runs.
"""

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import (
    Service,
    ServiceLauncher,
    assert_stored_once,
    chat,
    echo_reply,
    stored_messages,
    tcp_connections,
    wait_until,
    words,
    worker_pids,
)
from tests.e2e.sse import (
    AsyncEventStream,
    Event,
    EventStream,
    check_order,
    check_whole,
    read_events,
    text_of,
)
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import running_proxy

# Several service processes each, kills and restarts: seconds per test.
pytestmark = pytest.mark.slow

TOKEN = "tok-streaming-faults"
WORD_SECONDS = 0.05
STOPPED_WITHIN = 1.0
DEATH_NOTICED_WITHIN = 8.0  # "within a few seconds": the producer's 3 s lease, and margin
# A reply's first events reach Redis one flush (0.1 s) after they reach the client that asked;
# a client that drops later can re-attach anywhere. The session event and the first word come
# at once, each further word WORD_SECONDS later: 6 events take 0.2 s.
READ_BEFORE_DROP = 6


def echo_config(redis_url: str, key_prefix: str) -> dict[str, dict[str, str]]:
    return {
        "auth": {"tokens": TOKEN},
        "redis": {"url": redis_url, "key_prefix": key_prefix},
        "llm": {"echo_word_seconds": str(WORD_SECONDS)},
    }


@pytest.fixture(scope="module")
def replicas(module_launch: ServiceLauncher, module_redis: RedisServer) -> tuple[Service, Service]:
    config = echo_config(module_redis.url, "replicas")
    return module_launch(config), module_launch(config)


@pytest.fixture(scope="module")
def two_workers(module_launch: ServiceLauncher, module_redis: RedisServer) -> Service:
    service = module_launch(echo_config(module_redis.url, "workers"), workers=2)
    wait_until(lambda: service.stderr().count(" ready: ") == 2, 20, "both workers ready")
    return service


def attach_status(http: httpx.Client, session_id: str, headers: dict[str, str]) -> int:
    """The status a re-attach gets; its events, if any, are left unread."""
    with http.stream("GET", f"/chat/{session_id}/stream", headers=headers) as response:
        return response.status_code


def client_port(response: httpx.Response) -> int:
    port: int = response.extensions["network_stream"].get_extra_info("client_addr")[1]
    return port


def serving_worker(service: Service, response: httpx.Response) -> int:
    """The worker process that accepted the connection `response` came on."""
    assert service.process is not None
    wanted = (service.port, client_port(response))
    for pid in worker_pids(service.process.pid):
        if wanted in tcp_connections(pid):
            return pid
    raise AssertionError(f"no worker holds the connection {wanted}")


# --- another replica, another worker ---------------------------------------------------------


def test_a_reply_started_on_one_replica_is_re_attached_on_another(
    replicas: tuple[Service, Service], sid: str
) -> None:
    first, second = replicas
    message = words(30)
    with first.client(TOKEN) as on_first, second.client(TOKEN) as on_second:
        with on_first.stream("POST", "/chat/stream", json=chat(sid, message)) as response:
            before = read_events(response, READ_BEFORE_DROP)
        check_order(before)

        headers = {"Last-Event-ID": before[-1].id}
        with on_second.stream("GET", f"/chat/{sid}/stream", headers=headers) as response:
            rest = read_events(response)

        done = check_whole(rest, after=before[-1].seq)
        assert done.name == "done", done
        assert len(rest) > 10, "re-attached after the reply had ended: nothing was followed live"
        reply = echo_reply(message)
        assert text_of(before) + text_of(rest) == done.data["response"] == reply
        assert_stored_once(first, on_first, sid, message, reply)
        assert_stored_once(second, on_second, sid, message, reply)


def test_a_re_attach_right_after_the_first_event_finds_the_running_reply(
    replicas: tuple[Service, Service], sid: str
) -> None:
    """A client that drops as soon as it has the session event (a flaky network) and
    re-attaches at once on another replica, with that event's id."""
    first, second = replicas
    message = words(30)
    with first.client(TOKEN) as on_first, second.client(TOKEN) as on_second:
        with on_first.stream("POST", "/chat/stream", json=chat(sid, message)) as response:
            [session] = read_events(response, 1)
        headers = {"Last-Event-ID": session.id}
        with on_second.stream("GET", f"/chat/{sid}/stream", headers=headers) as response:
            assert response.status_code == 200, "the running reply was not found"
            rest = read_events(response)
    assert text_of(rest) == echo_reply(message)


def test_a_stop_sent_to_another_replica_stops_the_reply_within_a_second(
    replicas: tuple[Service, Service], sid: str
) -> None:
    first, second = replicas
    message = words(100)
    with first.client(TOKEN) as on_first, second.client(TOKEN) as on_second:
        with on_first.stream("POST", "/chat/stream", json=chat(sid, message)) as response:
            reader = EventStream(response)
            events = reader.read(5)
            asked = time.monotonic()
            second.expect(on_second.post(f"/chat/{sid}/stop"), 202)
            events += reader.read()
            took = time.monotonic() - asked

        done = check_whole(events)
        assert done.data.get("stopped") is True, done
        assert took < STOPPED_WITHIN, f"the stream ended {took:.2f} s after the stop"
        assert done.data["response"] == text_of(events)
        assert_stored_once(second, on_second, sid, message, done.data["response"])


def test_with_two_workers_a_re_attach_served_by_the_other_worker_gets_the_rest(
    two_workers: Service, sid: str
) -> None:
    """Re-attach (and drop again, one event later) until the other worker takes the
    connection; every event received on the way counts, so none may be lost or repeated."""
    service = two_workers
    message = words(60)
    with service.client(TOKEN) as http:
        with http.stream("POST", "/chat/stream", json=chat(sid, message)) as response:
            producer = serving_worker(service, response)
            received = read_events(response, READ_BEFORE_DROP)
        check_order(received)

        served_by = producer
        for _ in range(50):
            headers = {"Last-Event-ID": received[-1].id}
            with http.stream("GET", f"/chat/{sid}/stream", headers=headers) as response:
                reader = EventStream(response)
                more = reader.read(1)
                served_by = serving_worker(service, response)
                if served_by != producer:
                    more += reader.read()
            check_order(more, after=received[-1].seq)
            received += more
            if served_by != producer or received[-1].terminal:
                break

        assert served_by != producer, "every re-attach went to the producing worker"
        done = check_whole(received)
        assert done.name == "done", done
        reply = echo_reply(message)
        assert text_of(received) == done.data["response"] == reply
        assert_stored_once(service, http, sid, message, reply)


# --- Redis restarted mid-reply ---------------------------------------------------------------


def test_a_redis_restart_mid_reply_loses_nothing_and_re_attach_still_works(
    launch: ServiceLauncher, tmp_path: Path, sid: str
) -> None:
    """Without persistence the restarted Redis is empty: the producer publishes the reply's
    events again, stores the exchange once, and a client that dropped before the restart
    re-attaches after it with the last id it saw."""
    message = words(80)  # about 5 s of reply
    with RedisServer(tmp_path / "redis") as redis:
        service = launch(echo_config(redis.url, "restart"))
        with (
            service.client(TOKEN) as http,
            http.stream("POST", "/chat/stream", json=chat(sid, message)) as response,
        ):
            staying = EventStream(response)
            events = staying.read(READ_BEFORE_DROP)
            headers = {"Last-Event-ID": events[1].id}
            with http.stream("GET", f"/chat/{sid}/stream", headers=headers) as dropping:
                dropped = events[:2] + read_events(dropping, 3)
            check_order(dropped)

            redis.restart()

            # An empty store knows the reply again once its producer has published it again
            # (until then a re-attach is a 404, or a 503 while the service reconnects).
            headers = {"Last-Event-ID": dropped[-1].id}
            wait_until(
                lambda: attach_status(http, sid, headers) == 200,
                3.0,
                "the reply is published again after the restart",
            )
            with http.stream("GET", f"/chat/{sid}/stream", headers=headers) as resumed:
                rest = read_events(resumed)
            events += staying.read()

            reply = echo_reply(message)
            done = check_whole(events)
            assert done.name == "done", done
            assert text_of(events) == done.data["response"] == reply
            assert check_whole(rest, after=dropped[-1].seq) == done
            assert text_of(dropped) + text_of(rest) == reply
            assert_stored_once(service, http, sid, message, reply)


# --- kill -9 of the producing process --------------------------------------------------------


def test_a_producer_killed_mid_reply_ends_its_followers_with_error_and_stores_nothing(
    launch: ServiceLauncher, module_redis: RedisServer, sid: str
) -> None:
    config = echo_config(module_redis.url, "kill")
    producer, survivor = launch(config), launch(config)
    assert producer.process is not None
    assert worker_pids(producer.process.pid) == [], "one worker: the main process is it"
    message = words(100)  # about 6 s: still running well after the kill
    with producer.client(TOKEN) as on_producer, survivor.client(TOKEN) as on_survivor:
        with on_producer.stream("POST", "/chat/stream", json=chat(sid, message)) as response:
            asker = EventStream(response)
            first = asker.read(READ_BEFORE_DROP)
            headers = {"Last-Event-ID": first[-1].id}
            with on_survivor.stream("GET", f"/chat/{sid}/stream", headers=headers) as attached:
                follower = EventStream(attached)
                followed = first + follower.read(3)  # attached, and following live
                os.kill(producer.process.pid, signal.SIGKILL)
                killed = time.monotonic()
                followed += follower.read()
                noticed = time.monotonic() - killed
            with pytest.raises(httpx.TransportError):
                asker.read()  # the asking client lost its connection with the process

        end = check_whole(followed)
        assert end.name == "error", end
        assert end.data["status_code"] == 503, end
        assert noticed < DEATH_NOTICED_WITHIN, f"the follower learnt of it after {noticed:.1f} s"

        # A client re-attaching afterwards learns it at once, from any replica.
        started = time.monotonic()
        with on_survivor.stream("GET", f"/chat/{sid}/stream", headers=headers) as again:
            later = read_events(again)
        assert time.monotonic() - started < DEATH_NOTICED_WITHIN
        assert check_whole(later, after=first[-1].seq).name == "error"
        assert stored_messages(survivor, on_survivor, sid) == []


# --- a slow store: the reply's last event must still reach the log ---------------------------


@pytest.fixture
def slow_store_service(launch: ServiceLauncher, module_redis: RedisServer) -> Iterator[Service]:
    """Each Redis round trip takes about 100 ms: publishes overlap the reply's last steps."""
    with running_proxy(module_redis.port) as proxy:
        service = launch(
            {
                "auth": {"tokens": TOKEN},
                "redis": {"url": proxy.redis_url, "key_prefix": "slow-store"},
                "llm": {"echo_word_seconds": "0.02"},
            }
        )
        proxy.delay(0.05)
        yield service


async def test_a_reply_followed_through_the_log_ends_with_its_done(
    slow_store_service: Service, sid: str
) -> None:
    """The client that asked gets done; so must any client that re-attaches afterwards."""
    service = slow_store_service

    async def one(http: httpx.AsyncClient, n: int) -> tuple[Event, Event]:
        session_id = f"{sid}-{n}"
        async with http.stream("POST", "/chat/stream", json=chat(session_id, "hi")) as response:
            asked = await AsyncEventStream(response).read()
        async with http.stream("GET", f"/chat/{session_id}/stream") as response:
            again = await AsyncEventStream(response).read()
        return check_whole(asked), check_whole(again)

    async with service.async_client(TOKEN) as http:
        ends = await asyncio.gather(*(one(http, n) for n in range(20)))
    wrong = [(n, again.data) for n, (asked, again) in enumerate(ends) if again != asked]
    assert all(asked.name == "done" for asked, _ in ends)
    assert not wrong, f"{len(wrong)} of {len(ends)} re-attaches did not end with done: {wrong[:3]}"
