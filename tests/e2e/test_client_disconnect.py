"""A client that hangs up while its request waits on the provider.

Nobody is left to read the answer, so the service must behave as if the request never
happened: store no exchange (not at once, and not when the provider answers later), stop the
provider call and release its connection, and leak nothing, however many clients do it.

The clients here are raw sockets: they send a whole request, wait until the stub holds it, and
close without reading a byte, as a browser tab being closed or a client's own timeout does.
"""

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.e2e.conftest import Service, ServiceLauncher, openai_config, wait_until
from tests.support.provider_stub import ProviderStub, RecordedRequest, json_reply, openai_body, slow
from tests.support.redis_server import RedisServer

TOKEN = "tok-client-disconnect"
PROVIDER_DELAY = 5.0  # how long the stub thinks before it answers
LEAVE_AFTER = 0.5  # how long a client waits before it hangs up
CANCELLED_WITHIN = 2.0  # after the client left, the service has dropped the provider call
BURST = 20
REDIS_SLACK = 2  # the pool may open a connection or two more than the warm-up needed


@pytest.fixture(scope="module")
def service(
    module_launch: ServiceLauncher, module_stub: ProviderStub, module_redis: RedisServer
) -> Service:
    return module_launch(
        {
            "auth": {"tokens": TOKEN},
            "redis": {"url": module_redis.url, "key_prefix": "disconnect"},
            # The service's own deadline is far beyond the stub's delay: only the client's
            # leaving can end these provider calls early.
            "llm": openai_config(
                module_stub, timeout_seconds=str(4 * PROVIDER_DELAY), max_retries="0"
            ),
        }
    )


@pytest.fixture
def stub(module_stub: ProviderStub) -> Iterator[ProviderStub]:
    module_stub.reset()
    yield module_stub
    module_stub.reset()


@pytest.fixture
def http(service: Service) -> Iterator[httpx.Client]:
    with service.client(TOKEN) as client:
        yield client


class RawClient:
    """One chat request over its own socket (Connection: close), sent at construction."""

    def __init__(self, service: Service, session_id: str, message: str) -> None:
        self.message = message
        body = json.dumps({"session_id": session_id, "message": message}).encode()
        head = (
            f"POST /chat/ HTTP/1.1\r\nHost: 127.0.0.1:{service.port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        self._sock = socket.create_connection(("127.0.0.1", service.port), timeout=15)
        self._sock.sendall(head.encode() + body)
        self.sent_at = time.monotonic()

    def answered(self) -> bool:
        """Whether any byte of a response has arrived (without consuming it)."""
        self._sock.setblocking(False)  # a socket with a timeout would wait for data first
        try:
            return bool(self._sock.recv(1, socket.MSG_PEEK))
        except BlockingIOError:
            return False
        finally:
            self._sock.settimeout(15)

    def leave(self) -> float:
        """Hang up without reading; returns when."""
        self._sock.close()
        return time.monotonic()

    def status(self) -> int:
        """Read the whole response (the service closes the connection after it)."""
        response = b""
        while chunk := self._sock.recv(65536):
            response += chunk
        self._sock.close()
        return int(response.split(b" ", 2)[1])


def _held_by_stub(stub: ProviderStub, clients: list[RawClient]) -> list[RecordedRequest]:
    """The provider calls the clients' requests became, once the stub holds all of them."""
    wanted = {client.message for client in clients}

    def held() -> list[RecordedRequest]:
        return [r for r in list(stub.requests) if r.json["messages"][-1]["content"] in wanted]

    wait_until(lambda: len(held()) == len(clients), 10.0, "the requests reach the provider")
    return held()


def _leave_while_waiting(
    stub: ProviderStub, clients: list[RawClient]
) -> tuple[list[RecordedRequest], float]:
    """Let the clients wait on the provider for LEAVE_AFTER, then hang up. Returns their
    provider calls and when the last one left."""
    held = _held_by_stub(stub, clients)
    time.sleep(max(0.0, clients[-1].sent_at + LEAVE_AFTER - time.monotonic()))
    assert not any(client.answered() for client in clients), "answered before the provider did"
    left_at = 0.0
    for client in clients:
        left_at = client.leave()
    return held, left_at


def _history(service: Service, http: httpx.Client, session_id: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = service.expect(http.get(f"/chat/{session_id}"), 200)[
        "messages"
    ]
    return messages


def _seeded(service: Service, http: httpx.Client, session_id: str) -> list[dict[str, Any]]:
    for turn in (1, 2):
        body = {"session_id": session_id, "message": f"earlier question {turn}"}
        service.expect(http.post("/chat/", json=body), 200)
    return _history(service, http, session_id)


@pytest.mark.slow
def test_a_client_that_leaves_stores_nothing_then_or_later(
    service: Service, stub: ProviderStub, http: httpx.Client, sid: str
) -> None:
    before = _seeded(service, http, sid)
    stub.plan(slow(json_reply(openai_body("an answer nobody reads")), PROVIDER_DELAY))
    client = RawClient(service, sid, "I will not wait for this")

    [request], _ = _leave_while_waiting(stub, [client])

    assert _history(service, http, sid) == before
    # Past the moment the provider would have answered (and the exchange could be stored).
    time.sleep(max(0.0, request.received_at + PROVIDER_DELAY + 1.0 - time.monotonic()))
    assert _history(service, http, sid) == before, "an exchange was stored for a client that left"
    # The session goes on as if the abandoned request had never been made.
    body = {"session_id": sid, "message": "still there?"}
    assert service.expect(http.post("/chat/", json=body), 200)["response"]
    after = _history(service, http, sid)
    assert after[: len(before)] == before
    assert len(after) == len(before) + 2
    assert after[len(before)]["content"] == "still there?"


def test_a_client_that_leaves_cancels_the_provider_call(
    service: Service, stub: ProviderStub, sid: str
) -> None:
    """Not only nothing stored: the call is stopped, so a provider that bills by the token
    and a pooled connection are not spent on an answer nobody will read."""
    stub.plan(slow(json_reply(openai_body("an answer nobody reads")), PROVIDER_DELAY))
    client = RawClient(service, sid, "cancel me")

    [request], left_at = _leave_while_waiting(stub, [client])

    def dropped() -> bool:
        return any(
            a.connection == request.connection and a.received_at == request.received_at
            for a in list(stub.abandoned)
        )

    wait_until(
        dropped,
        CANCELLED_WITHIN,
        "the service closes its provider connection after the client left (cancels the call)",
    )
    [abandoned] = stub.abandoned
    assert abandoned.phase == "before-headers"
    assert abandoned.closed_at - left_at < CANCELLED_WITHIN
    assert abandoned.closed_at < request.received_at + PROVIDER_DELAY


def _redis_clients(client: redis.Redis) -> int:
    connected: int = client.info("clients")["connected_clients"]
    return connected


@pytest.mark.slow
def test_a_burst_of_clients_leaving_leaks_no_connections(
    service: Service,
    stub: ProviderStub,
    http: httpx.Client,
    module_redis: RedisServer,
    sid: str,
) -> None:
    """The service's pools may keep idle connections, as many as its work needs; "normal" is
    what they hold after a burst of the same size that completed. Leaked connections would
    pile up round after round, so there are two rounds."""
    wait_until(lambda: stub.replying == 0, PROVIDER_DELAY + 5, "no earlier provider call left")
    with redis.Redis.from_url(module_redis.url) as observer:
        stub.plan(*[slow(json_reply(openai_body("warm")), 1.5)] * BURST)
        warm = [RawClient(service, f"{sid}-warm-{n}", f"warm-up {n}") for n in range(BURST)]
        _held_by_stub(stub, warm)
        assert [client.status() for client in warm] == [200] * BURST
        wait_until(lambda: stub.replying == 0, 5.0, "the warm-up is over")
        provider_normal, redis_normal = stub.open_connections, _redis_clients(observer)
        assert provider_normal >= BURST, "the warm-up calls did not overlap: no baseline"

        for round_ in range(2):
            stub.plan(*[slow(json_reply(openai_body("lost")), PROVIDER_DELAY)] * BURST)
            leaving = [
                RawClient(service, f"{sid}-{round_}-{n}", f"leaving {round_}.{n}")
                for n in range(BURST)
            ]
            _leave_while_waiting(stub, leaving)
            # Whether each call was cancelled or ran to its end, it is over by then.
            wait_until(lambda: stub.replying == 0, PROVIDER_DELAY + 5, "the provider calls end")
            deadline = time.monotonic() + 5.0
            while True:
                provider, store = stub.open_connections, _redis_clients(observer)
                if provider <= provider_normal and store <= redis_normal + REDIS_SLACK:
                    break
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"round {round_}: open connections (to the provider, to Redis) = "
                        f"({provider}, {store}), normal ({provider_normal}, {redis_normal})"
                    )
                time.sleep(0.05)

    body = {"session_id": sid, "message": "business as usual"}
    service.expect(http.post("/chat/", json=body), 200)
