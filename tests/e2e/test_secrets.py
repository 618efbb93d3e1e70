"""Secrets (the provider key, bearer tokens, the Redis password) never leave the service:
not in any response body, not in what it prints, whatever fails."""

from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.e2e.conftest import Service, ServiceLauncher, openai_config
from tests.support.provider_stub import (
    ProviderStub,
    error_reply,
    garbage_reply,
    json_reply,
    openai_body,
    slow,
)
from tests.support.redis_server import RedisServer

API_KEY = "sk-SECRET-apikey-3f9a1c"
ALICE = "tok-SECRET-alice-77c1e0"
BOB = "tok-SECRET-bob-9d2e44"
REDIS_PASSWORD = "pw-SECRET-redis-51ab90"
SECRETS = (API_KEY, ALICE, BOB, REDIS_PASSWORD)


def assert_no_secret(text: str, where: str) -> None:
    leaked = [secret for secret in SECRETS if secret in text]
    assert not leaked, f"{leaked} in {where}:\n{text[:2000]}"


@pytest.fixture(scope="module")
def password_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        with redis.Redis.from_url(server.url) as admin:
            admin.config_set("requirepass", REDIS_PASSWORD)
        yield server


def _redis_url(server: RedisServer) -> str:
    return f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0"


@pytest.fixture(scope="module")
def service(
    module_launch: ServiceLauncher, module_stub: ProviderStub, password_redis: RedisServer
) -> Service:
    return module_launch(
        {
            "auth": {"tokens": f"{ALICE},{BOB}"},
            "redis": {"url": _redis_url(password_redis)},
            "llm": openai_config(
                module_stub, api_key=API_KEY, max_retries="1", timeout_seconds="1"
            ),
        }
    )


def test_no_secret_in_any_response_or_in_the_service_output(
    service: Service, module_stub: ProviderStub, password_redis: RedisServer
) -> None:
    bodies: list[httpx.Response] = []
    with service.client(ALICE) as alice:
        bodies.append(alice.post("/chat/", json={"session_id": "s", "message": "hi"}))
        service.expect(bodies[-1], 200)
        assert module_stub.requests[-1].headers["authorization"] == f"Bearer {API_KEY}"
        with redis.Redis.from_url(_redis_url(password_redis)) as store:
            keys = [key.decode() for key in store.keys("*")]
        assert keys  # the session is stored, under a key that does not name the token
        assert_no_secret(" ".join(keys), "the Redis keys")

        # Providers that echo the key back, fail, time out or answer garbage: each a 5xx.
        module_stub.plan(
            json_reply({"error": {"message": f"Incorrect API key provided: {API_KEY}"}}, 401),
            error_reply(500),
            error_reply(500),
            json_reply({"choices": API_KEY}),
            json_reply({"choices": [{"message": {"content": {"key": API_KEY}}}]}),
            garbage_reply(),
            slow(json_reply(openai_body(API_KEY)), 1.5),
        )
        for status in (502, 502, 502, 502, 502, 504):
            bodies.append(alice.post("/chat/", json={"session_id": "s", "message": "fail"}))
            service.expect(bodies[-1], status)

        # Wrong tokens, and a real token under the wrong scheme.
        for authorization in (f"Basic {ALICE}", f"Bearer {ALICE}-", f"Bearer {BOB[:-1]}"):
            bodies.append(alice.get("/chat/s", headers={"authorization": authorization}))
            service.expect(bodies[-1], 401)
        bodies.append(alice.get("/schema/openapi.json"))

        # The store goes away.
        password_redis.stop()
        try:
            for request in (
                alice.build_request("POST", "/chat/", json={"session_id": "s", "message": "x"}),
                alice.build_request("GET", "/chat/s"),
                alice.build_request("GET", "/ready"),
            ):
                bodies.append(alice.send(request))
                service.expect(bodies[-1], 503)
        finally:
            password_redis.start()
            with redis.Redis.from_url(password_redis.url) as admin:
                admin.config_set("requirepass", REDIS_PASSWORD)

    for response in bodies:
        where = f"{response.request.method} {response.request.url.path} -> {response.status_code}"
        assert_no_secret(response.text, where)
        assert_no_secret(str(response.headers), f"headers of {where}")

    service.stop()
    assert "502" in service.stdout() + service.stderr()  # the failures were logged: we read
    assert "503" in service.stdout() + service.stderr()  # the right output
    assert_no_secret(service.stdout(), "stdout")
    assert_no_secret(service.stderr(), "stderr")
