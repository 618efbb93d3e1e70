"""Secrets (the provider key, bearer tokens, the Redis password) never leave the service:
not in any response body, not in what it prints, whatever fails."""

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
import redis

from tests.e2e.conftest import Service, ServiceLauncher, openai_config
from tests.support.provider_stub import (
    ProviderStub,
    Reply,
    anthropic_error,
    cut_mid_body,
    error_reply,
    garbage_reply,
    huggingface_error,
    json_reply,
    no_headers,
    openai_body,
    openai_error,
    openai_wrong_key,
    running_stub,
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
            "log": {"format": "json"},  # the slow test below reads the text format
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

        # Refusals whose message echoes the key, in each provider's shape: the 502's detail
        # carries the provider's words, and the key is not among them.
        for refusal in (
            openai_wrong_key(API_KEY),
            openai_error(400, f"Invalid 'user': {API_KEY!r} looks like an API key"),
            anthropic_error(401, "authentication_error", f"invalid x-api-key {API_KEY}"),
            huggingface_error(401, [f"Authorization: Bearer {API_KEY} is not valid"]),
            Reply(403, f"denied for {API_KEY}\n".encode(), {"content-type": "text/plain"}),
        ):
            module_stub.plan(refusal)
            bodies.append(alice.post("/chat/", json={"session_id": "s", "message": "refused"}))
            detail = service.expect(bodies[-1], 502)["detail"]
            assert "[redacted]" in detail, detail

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
    lines = [json.loads(line) for line in service.stderr().splitlines()]  # JSON, line by line
    statuses = {line.get("status") for line in lines if line["logger"] == "chat.request"}
    assert {200, 401, 502, 503, 504} <= statuses  # the failures were logged: we read the
    assert any(line["level"] == "warning" for line in lines)  # right output
    assert_no_secret(service.stdout(), "stdout")
    assert_no_secret(service.stderr(), "stderr")


# --- all the output, every body, while everything that can fail fails -------------------------

# Secrets with characters that URL-encoding and JSON-escaping change, so that an encoded leak
# is a different string from the plain one; each also holds the marker SECRET, which nothing
# the service says should ever contain.
LEAKY_KEY = "sk-SECRET/api+key=5d7c"
CAROL = "tok-SECRET+carol/8e21"
DAVE = "tok-SECRET=dave+0b9f"
LEAKY_PASSWORD = "pw-SECRET/redis+@:4c0d"
MARKER = "SECRET"
TIMEOUT_SECONDS = 1.0


def _forms(secret: str) -> set[str]:
    """The secret as it would read after the encodings a log or body could apply."""
    return {
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        json.dumps(secret)[1:-1].replace("/", "\\/"),
        base64.b64encode(secret.encode()).decode(),
        secret[: len(secret) // 2 + 4],  # a leading part, as a "masked" log would print it
    }


LEAK_FORMS = {
    form for secret in (LEAKY_KEY, CAROL, DAVE, LEAKY_PASSWORD) for form in _forms(secret)
}


def _leaks(text: str) -> list[str]:
    found = [form for form in LEAK_FORMS if form in text]
    return found + ([MARKER] if MARKER in text else [])


# The key as a JSON string with "/" escaped, as some servers write it.
ESCAPED_KEY = json.dumps(LEAKY_KEY)[1:-1].replace("/", "\\/")

# (what the provider answers, in order; the status the client then gets). max_retries is 1,
# so a retried failure is planned twice.
PROVIDER_FAILURES: list[tuple[list[Reply], int]] = [
    ([error_reply(500)] * 2, 502),
    ([json_reply({"error": {"message": f"Incorrect API key provided: {LEAKY_KEY}"}}, 401)], 502),
    ([json_reply({"error": f"slow down, {LEAKY_KEY}"}, 429, {"retry-after": "0"})] * 2, 502),
    ([openai_wrong_key(LEAKY_KEY)], 502),
    ([openai_error(400, f"Invalid 'user': {quote(LEAKY_KEY, safe='')} is not a user id")], 502),
    ([Reply(400, f'{{"error": {{"message": "key {ESCAPED_KEY}"}}}}'.encode())], 502),
    ([Reply(503, f"upstream of {LEAKY_KEY}".encode(), {"retry-after": "0"})] * 2, 502),
    ([json_reply({"choices": LEAKY_KEY})], 502),
    ([json_reply({"choices": [{"message": {"content": {"key": LEAKY_KEY}}}]})], 502),
    ([Reply(200, f"<html>{LEAKY_KEY}</html>".encode(), {"content-type": "text/html"})], 502),
    ([cut_mid_body(json_reply(openai_body(LEAKY_KEY)))] * 2, 502),
    ([slow(json_reply(openai_body(LEAKY_KEY)), 1.5 * TIMEOUT_SECONDS)], 504),
    ([no_headers()], 504),
]

WRONG_AUTHORIZATIONS = [
    None,
    f"Bearer {CAROL[:-1]}",  # a prefix of a real token
    f"Bearer {CAROL}x",
    f"Bearer {CAROL},{DAVE}",  # the configured list, verbatim
    f"Basic {base64.b64encode(f'carol:{CAROL}'.encode()).decode()}",
    f"Token {CAROL}",
    f"Bearer {LEAKY_KEY}",  # the provider's key is no token here
    f"Bearer {LEAKY_PASSWORD}",
]


def _print_unconditionally(request: pytest.FixtureRequest, line: str) -> None:
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(line)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_no_secret_in_any_log_line_or_body_while_provider_store_and_auth_all_fail(
    launch: ServiceLauncher, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    responses: list[httpx.Response] = []

    def send(http: httpx.Client, status: int, method: str, path: str, **kw: Any) -> None:
        response = http.request(method, path, **kw)
        responses.append(response)
        assert response.status_code == status, (method, path, response.text, service.output())

    chat = {"session_id": "leaks", "message": "hello"}
    outage = [("POST", "/chat/", {"json": chat}), ("GET", "/chat/leaks", {}),
              ("DELETE", "/chat/leaks", {}), ("GET", "/ready", {})]  # fmt: skip
    with RedisServer(tmp_path / "redis") as store:
        with redis.Redis.from_url(store.url) as admin:
            admin.config_set("requirepass", LEAKY_PASSWORD)
        redis_url = f"redis://:{quote(LEAKY_PASSWORD, safe='')}@127.0.0.1:{store.port}/0"
        with running_stub(json_reply(openai_body("fine"))) as stub:
            service = launch(
                {
                    "auth": {"tokens": f"{CAROL},{DAVE}"},
                    "redis": {"url": redis_url},
                    "llm": openai_config(
                        stub,
                        api_key=LEAKY_KEY,
                        max_retries="1",
                        timeout_seconds=str(TIMEOUT_SECONDS),
                    ),
                }
            )  # logging as shipped: nothing here changes the service's log level
            with service.client(CAROL) as carol, service.client() as anyone:
                send(carol, 200, "POST", "/chat/", json=chat)
                assert stub.requests[-1].headers["authorization"] == f"Bearer {LEAKY_KEY}"

                for replies, status in PROVIDER_FAILURES:
                    stub.plan(*replies)
                    send(carol, status, "POST", "/chat/", json=chat)

                for authorization in WRONG_AUTHORIZATIONS:
                    headers = {"authorization": authorization} if authorization else {}
                    send(anyone, 401, "POST", "/chat/", json=chat, headers=headers)
                    send(anyone, 401, "GET", "/chat/leaks", headers=headers)
                    send(anyone, 401, "DELETE", "/chat/leaks", headers=headers)

                store.stop()  # Redis goes away ...
                for method, path, kw in outage:
                    send(carol, 503, method, path, **kw)
                store.start()  # ... comes back asking for another password: AUTH fails ...
                with redis.Redis.from_url(store.url) as admin:
                    admin.config_set("requirepass", "not-the-configured-one")
                send(carol, 503, "POST", "/chat/", json=chat)
                send(carol, 503, "GET", "/ready")
                with redis.Redis(port=store.port, password="not-the-configured-one") as admin:
                    admin.config_set("requirepass", LEAKY_PASSWORD)  # ... and is right again.
                send(carol, 200, "POST", "/chat/", json=chat)

        # The provider is gone: connection refused.
        with service.client(CAROL) as carol:
            send(carol, 502, "POST", "/chat/", json=chat)
            send(carol, 200, "GET", "/chat/leaks")
            send(carol, 200, "GET", "/schema/openapi.json")
        with redis.Redis.from_url(redis_url) as admin:
            keys = " ".join(key.decode() for key in admin.scan_iter())
        assert keys
        assert not _leaks(keys), keys
        assert service.stop() == 0  # SIGTERM: whatever it prints on the way out is read too

    # The provider's words reached the client, so it is their key-free form that was read.
    assert any("[redacted]" in response.text for response in responses)
    for response in responses:
        where = f"{response.request.method} {response.request.url.path} -> {response.status_code}"
        assert not _leaks(response.text), (where, response.text)
        assert not _leaks(str(response.headers.raw)), (where, response.headers)
    lines = service.stdout().splitlines() + service.stderr().splitlines()
    leaked = [line for line in lines if _leaks(line)]
    assert not leaked, "\n".join(leaked)

    # The failures were logged, so the lines read above are the ones that matter.
    request_lines = [line for line in lines if line.startswith("INFO chat.request ")]
    for status in (401, 502, 503, 504):
        assert any(f" {status} " in line for line in request_lines), "\n".join(lines[-30:])
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert len(warnings) >= len(PROVIDER_FAILURES) + 6, "\n".join(lines)
    _print_unconditionally(
        request,
        f"\nsecrets: {len(lines)} log lines and {len(responses)} response bodies checked, "
        f"{len(LEAK_FORMS)} secret forms each: none found",
    )
