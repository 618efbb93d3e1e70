"""Streamed replies over HTTP, as a client relies on them: POST /chat/stream, re-attach with
GET /chat/{id}/stream and Last-Event-ID, POST /chat/{id}/stop, Idempotency-Key on streams.

The echo service streams its reply word by word, WORD_SECONDS apart, so the length of a
message sets how long its reply runs. The openai service talks to the loopback stand-in,
which writes the provider's stream chunk by chunk and counts the calls made to it.
What a client may rely on, in every test: the concatenated deltas == done.response == the
reply GET /chat/{id} shows, and that exchange is stored exactly once.
"""

import asyncio
import random
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import (
    Service,
    ServiceLauncher,
    assert_stored_once,
    chat,
    echo_reply,
    openai_config,
    stored_messages,
    words,
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
from tests.support.provider_stub import (
    ProviderStub,
    Reply,
    error_reply,
    no_headers,
    openai_stream,
    openai_stream_error,
    streamed,
)
from tests.support.redis_server import RedisServer

TOKEN, OTHER_TOKEN = "tok-streaming", "tok-streaming-other"
WORD_SECONDS = 0.05
PROVIDER_TIMEOUT = 1.0
STOPPED_WITHIN = 1.0  # the "stops within a second"
CONCURRENT = 200
# A reply's first events reach Redis one flush (0.1 s) after they reach the client that asked;
# a client that drops later can re-attach anywhere. The session event and the first word come
# at once, each further word WORD_SECONDS later: 6 events take 0.2 s.
READ_BEFORE_DROP = 6


@pytest.fixture(scope="module")
def service(module_launch: ServiceLauncher, module_redis: RedisServer) -> Service:
    return module_launch(
        {
            "auth": {"tokens": f"{TOKEN},{OTHER_TOKEN}"},
            "redis": {"url": module_redis.url, "key_prefix": "streaming"},
            "llm": {"echo_word_seconds": str(WORD_SECONDS)},
        }
    )


@pytest.fixture(scope="module")
def openai_service(
    module_launch: ServiceLauncher, module_redis: RedisServer, module_stub: ProviderStub
) -> Service:
    return module_launch(
        {
            "auth": {"tokens": TOKEN},
            "redis": {"url": module_redis.url, "key_prefix": "streaming-openai"},
            "llm": openai_config(
                module_stub, timeout_seconds=str(PROVIDER_TIMEOUT), max_retries="1"
            ),
        }
    )


@pytest.fixture(scope="module")
def cancel_service(module_launch: ServiceLauncher, module_redis: RedisServer) -> Service:
    return module_launch(
        {
            "auth": {"tokens": TOKEN},
            "redis": {"url": module_redis.url, "key_prefix": "streaming-cancel"},
            "llm": {"echo_word_seconds": str(WORD_SECONDS), "stream_on_disconnect": "cancel"},
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


def openai_words(*deltas: str, pause: float = 0.05, usage: tuple[int, int] = (7, 3)) -> Reply:
    """The stand-in streaming `deltas` as OpenAI does, one chunk per delta, `pause` apart."""
    pieces = [openai_stream(deltas[0], usage=usage, end=False)]
    pieces += [openai_stream(delta, usage=usage, start=False, end=False) for delta in deltas[1:]]
    pieces.append(openai_stream(usage=usage, start=False))
    return streamed(pieces, pause=pause)


def provider_calls(stub: ProviderStub, message: str) -> int:
    return sum(1 for r in list(stub.requests) if r.json["messages"][-1]["content"] == message)


def assert_json_error(service: Service, response: httpx.Response, status: int) -> None:
    """An error known before the first token: a JSON problem, not a 200 stream."""
    body = service.expect(response, status)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    assert body["status_code"] == status, body
    assert body["detail"], body


# --- one stream, start to end -------------------------------------------------------------


def test_a_stream_is_named_json_events_then_done_once_stored(
    service: Service, http: httpx.Client, sid: str
) -> None:
    message = "tell me a story"
    with http.stream("POST", "/chat/stream", json=chat(sid, message)) as response:
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        events = read_events(response)

    done = check_whole(events)
    assert done.name == "done", done
    assert events[0].data["session_id"] == sid
    assert len(events) > 3, "the reply came in one piece, not word by word"
    reply = echo_reply(message)
    assert text_of(events) == done.data["response"] == reply
    assert done.data["session_id"] == sid
    assert set(done.data["usage"]) == {"input_tokens", "output_tokens", "source"}
    assert done.data["usage"]["source"] == "estimate"
    assert "stopped" not in done.data or done.data["stopped"] is False
    assert_stored_once(service, http, sid, message, reply)


def test_an_empty_session_id_gets_a_new_session_named_in_the_first_event(
    service: Service, http: httpx.Client
) -> None:
    with http.stream("POST", "/chat/stream", json=chat("", "who am I")) as response:
        events = read_events(response)
    done = check_whole(events)
    new_id = events[0].data["session_id"]
    assert new_id
    assert done.data["session_id"] == new_id
    assert_stored_once(service, http, new_id, "who am I", done.data["response"])


def test_errors_known_before_the_first_token_are_json_not_a_stream(
    service: Service, http: httpx.Client, sid: str
) -> None:
    assert_json_error(service, http.post("/chat/stream", json=chat(sid, "  ")), 400)
    assert_json_error(service, http.post("/chat/stream", json=chat("bad id!", "hi")), 400)
    with service.client() as anonymous:
        assert_json_error(service, anonymous.post("/chat/stream", json=chat(sid, "hi")), 401)
    huge = chat(sid, "x" * (2 * 2**20))
    assert_json_error(service, http.post("/chat/stream", json=huge), 413)
    assert stored_messages(service, http, sid) == []


# --- disconnect and re-attach ----------------------------------------------------------------


def test_a_client_that_drops_re_attaches_with_last_event_id_and_gets_the_rest(
    service: Service, http: httpx.Client, sid: str
) -> None:
    """curl -N, Ctrl-C after a few words, curl -N again with the last id seen."""
    message = words(30)
    with http.stream("POST", "/chat/stream", json=chat(sid, message)) as response:
        before = read_events(response, READ_BEFORE_DROP)
    check_order(before)
    last = before[-1]

    headers = {"Last-Event-ID": last.id}
    with http.stream("GET", f"/chat/{sid}/stream", headers=headers) as response:
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        rest = read_events(response)

    done = check_whole(rest, after=last.seq)
    assert done.name == "done", done
    assert rest[0].reply_id == last.reply_id
    assert len(rest) > 10, "re-attached after the reply had ended: nothing was followed live"
    reply = echo_reply(message)
    assert text_of(before) + text_of(rest) == done.data["response"] == reply
    assert_stored_once(service, http, sid, message, reply)

    # Without Last-Event-ID: the same reply from its first event, while it is kept.
    with http.stream("GET", f"/chat/{sid}/stream") as response:
        again = read_events(response)
    assert check_whole(again) == done
    assert again[: len(before)] == before
    assert text_of(again) == reply


def test_a_re_attach_with_an_earlier_replys_id_resumes_that_reply_not_the_latest(
    service: Service, http: httpx.Client, sid: str
) -> None:
    """Last-Event-ID names a reply, not only a position: a client that held an id of the
    session's previous reply gets the rest of that one, as it was sent, and no mix."""
    with http.stream("POST", "/chat/stream", json=chat(sid, "first")) as response:
        first = read_events(response)
    check_whole(first)
    with http.stream("POST", "/chat/stream", json=chat(sid, "second")) as response:
        second = read_events(response)
    done = check_whole(second)
    assert done.data["response"] == echo_reply("second", earlier=2)

    headers = {"Last-Event-ID": first[2].id}
    with http.stream("GET", f"/chat/{sid}/stream", headers=headers) as response:
        rest = read_events(response)
    assert rest == first[3:]
    assert stored_messages(service, http, sid) == [
        ("user", "first"),
        ("assistant", echo_reply("first")),
        ("user", "second"),
        ("assistant", done.data["response"]),
    ]


def test_re_attaching_with_the_id_of_done_reports_no_error(
    service: Service, http: httpx.Client, sid: str
) -> None:
    """A browser's EventSource reconnects when the stream closes, even after done, with
    done's id as Last-Event-ID. The reply is over and stored: no error may follow its done."""
    with http.stream("POST", "/chat/stream", json=chat(sid, "reconnect after done")) as response:
        events = read_events(response)
    done = check_whole(events)
    assert done.name == "done"
    headers = {"Last-Event-ID": done.id}
    with http.stream("GET", f"/chat/{sid}/stream", headers=headers) as response:
        after_done = read_events(response) if response.status_code == 200 else []
        assert response.status_code in (200, 204), response.status_code
    assert [event.name for event in after_done] in ([], ["done"]), after_done
    assert_stored_once(service, http, sid, "reconnect after done", done.data["response"])


def test_re_attach_and_stop_are_404_for_an_unknown_session_or_another_token(
    service: Service, http: httpx.Client, sid: str
) -> None:
    assert_json_error(service, http.get(f"/chat/{sid}/stream"), 404)
    assert_json_error(service, http.post(f"/chat/{sid}/stop"), 404)
    with http.stream("POST", "/chat/stream", json=chat(sid, words(20))) as response:
        reader = EventStream(response)
        events = reader.read(READ_BEFORE_DROP)
        headers = {"Last-Event-ID": events[-1].id}
        with http.stream("GET", f"/chat/{sid}/stream", headers=headers) as attached:
            assert EventStream(attached).read(1), "its owner can re-attach"
        with service.client(OTHER_TOKEN) as other:
            assert_json_error(service, other.get(f"/chat/{sid}/stream"), 404)
            assert_json_error(service, other.get(f"/chat/{sid}/stream", headers=headers), 404)
            assert_json_error(service, other.post(f"/chat/{sid}/stop"), 404)
        events += reader.read()
    done = check_whole(events)
    assert done.name == "done"
    assert "stopped" not in done.data, "another token's stop request stopped it"


def test_a_malformed_last_event_id_is_a_400(service: Service, http: httpx.Client, sid: str) -> None:
    with http.stream("POST", "/chat/stream", json=chat(sid, "hello")) as response:
        check_whole(read_events(response))
    headers = {"Last-Event-ID": "not-an-id"}
    assert_json_error(service, http.get(f"/chat/{sid}/stream", headers=headers), 400)


# --- stop ------------------------------------------------------------------------------------


def test_stop_ends_the_stream_within_a_second_and_stores_the_text_so_far(
    service: Service, http: httpx.Client, sid: str
) -> None:
    message = words(100)  # a reply of about 6 s
    with http.stream("POST", "/chat/stream", json=chat(sid, message)) as response:
        reader = EventStream(response)
        events = reader.read(6)
        asked = time.monotonic()
        stopping = service.expect(http.post(f"/chat/{sid}/stop"), 202)
        events += reader.read()
        took = time.monotonic() - asked

    assert stopping == {"session_id": sid, "status": "stopping"}
    done = check_whole(events)
    assert done.name == "done", done
    assert done.data["stopped"] is True
    assert took < STOPPED_WITHIN, f"the stream ended {took:.2f} s after the stop"
    partial = text_of(events)
    assert done.data["response"] == partial
    assert echo_reply(message).startswith(partial)
    assert len(partial) < len(echo_reply(message))
    assert done.data["usage"]["source"] == "estimate"
    assert_stored_once(service, http, sid, message, partial)
    assert_json_error(service, http.post(f"/chat/{sid}/stop"), 404)  # nothing running now


def test_a_client_that_dropped_sees_the_stopped_done_when_it_re_attaches(
    service: Service, http: httpx.Client, sid: str
) -> None:
    message = words(100)
    with http.stream("POST", "/chat/stream", json=chat(sid, message)) as response:
        before = read_events(response, READ_BEFORE_DROP)
    service.expect(http.post(f"/chat/{sid}/stop"), 202)
    headers = {"Last-Event-ID": before[-1].id}
    with http.stream("GET", f"/chat/{sid}/stream", headers=headers) as response:
        rest = read_events(response)
    done = check_whole(rest, after=before[-1].seq)
    assert done.data["stopped"] is True
    assert text_of(before + rest) == done.data["response"]
    assert_stored_once(service, http, sid, message, done.data["response"])


# --- stream_on_disconnect = cancel -----------------------------------------------------------


@pytest.mark.slow  # a service of its own, and a reply's whole length of waiting
def test_with_cancel_on_disconnect_a_client_that_drops_leaves_nothing_stored(
    cancel_service: Service, sid: str
) -> None:
    message = words(20)  # about 1.8 s of reply
    with cancel_service.client(TOKEN) as http:
        with http.stream("POST", "/chat/stream", json=chat(sid, message)) as response:
            before = read_events(response, READ_BEFORE_DROP)
        dropped = time.monotonic()
        check_order(before)

        headers = {"Last-Event-ID": before[-1].id}
        with http.stream("GET", f"/chat/{sid}/stream", headers=headers) as response:
            rest = read_events(response)
        end = check_whole(rest, after=before[-1].seq)
        # 499 says the client left; a 503 "the worker stopped" here is the lost last event
        # of test_a_reply_followed_through_the_log_ends_with_its_done, and true all the same.
        assert end.name == "error", end
        assert end.data["status_code"] in (499, 503), end
        assert stored_messages(cancel_service, http, sid) == []
        # Past the moment the reply would have ended and been stored.
        time.sleep(max(0.0, dropped + (16 + 20) * WORD_SECONDS + 1.0 - time.monotonic()))
        assert stored_messages(cancel_service, http, sid) == []


# --- the openai stand-in: provider failures and Idempotency-Key ------------------------------


def test_the_provider_failing_before_its_first_token_after_retries_is_a_502_json(
    openai_service: Service, stub: ProviderStub, sid: str
) -> None:
    stub.plan(error_reply(429, retry_after="0"), error_reply(429, retry_after="0"))
    with openai_service.client(TOKEN) as http:
        response = http.post("/chat/stream", json=chat(sid, "rate limited"))
        assert_json_error(openai_service, response, 502)
        assert provider_calls(stub, "rate limited") == 2  # the first try and one retry
        assert stored_messages(openai_service, http, sid) == []


def test_the_provider_timing_out_before_its_first_token_is_a_504_json(
    openai_service: Service, stub: ProviderStub, sid: str
) -> None:
    stub.plan(no_headers(), no_headers())
    with openai_service.client(TOKEN) as http:
        response = http.post("/chat/stream", json=chat(sid, "silence"))
        assert_json_error(openai_service, response, 504)
        assert stored_messages(openai_service, http, sid) == []


def test_a_provider_failing_after_the_first_token_ends_the_stream_with_error_nothing_stored(
    openai_service: Service, stub: ProviderStub, sid: str
) -> None:
    stub.plan(
        streamed(
            [openai_stream("half ", end=False), openai_stream_error("The server had an error")],
            pause=0.05,
        )
    )
    with openai_service.client(TOKEN) as http:
        with http.stream("POST", "/chat/stream", json=chat(sid, "fail midway")) as response:
            events = read_events(response)
        end = check_whole(events)
        assert end.name == "error", end
        assert end.data["status_code"] == 502
        assert text_of(events) == "half "
        assert provider_calls(stub, "fail midway") == 1, "retried after a token was sent"
        assert stored_messages(openai_service, http, sid) == []


def test_the_providers_usage_reaches_done(
    openai_service: Service, stub: ProviderStub, sid: str
) -> None:
    stub.plan(openai_words("Counted ", "by ", "the ", "provider.", usage=(11, 4)))
    with openai_service.client(TOKEN) as http:
        with http.stream("POST", "/chat/stream", json=chat(sid, "count")) as response:
            events = read_events(response)
        done = check_whole(events)
        assert done.data["usage"] == {"input_tokens": 11, "output_tokens": 4, "source": "provider"}
        assert text_of(events) == done.data["response"] == "Counted by the provider."
        assert_stored_once(openai_service, http, sid, "count", done.data["response"])


async def test_an_idempotency_key_repeat_follows_or_replays_without_a_new_provider_call(
    openai_service: Service, stub: ProviderStub, sid: str
) -> None:
    """While the first request runs, its repeat follows the same reply live; once it is
    done, a repeat replays it (session, the whole reply, done); the provider is called once."""
    deltas = [f"piece{n} " for n in range(20)]  # about 1 s
    stub.plan(openai_words(*deltas, pause=0.05, usage=(9, 20)))
    message = "only once, please"
    key = {"Idempotency-Key": f"{sid}-key"}

    async def post(http: httpx.AsyncClient, count: int | None = None) -> list[Event]:
        async with http.stream(
            "POST", "/chat/stream", json=chat(sid, message), headers=key
        ) as response:
            return await AsyncEventStream(response).read(count)

    async with openai_service.async_client(TOKEN) as http:
        async with http.stream(
            "POST", "/chat/stream", json=chat(sid, message), headers=key
        ) as response:
            reader = AsyncEventStream(response)
            original = await reader.read(3)
            follower = await post(http)  # the repeat, while the original still runs
            original += await reader.read()
        done = check_whole(original)
        assert done.name == "done", done
        assert text_of(original) == done.data["response"] == "".join(deltas)

        assert check_whole(follower) == done
        assert follower[0].reply_id == original[0].reply_id
        assert len(follower) == len(original), "the repeat was replayed, not followed live"
        assert text_of(follower) == done.data["response"]

        replayed = await post(http)
        assert [event.name for event in replayed] == ["session", "delta", "done"]
        check_whole(replayed)
        assert replayed[0].data == original[0].data
        assert replayed[1].data == {"text": done.data["response"]}
        assert replayed[2].data == done.data

        conflict = await http.post("/chat/stream", json=chat(sid, "another message"), headers=key)
        body = openai_service.expect(conflict, 409)
        assert conflict.headers["content-type"].startswith("application/json")
        assert body["status_code"] == 409

    assert provider_calls(stub, message) == 1
    with openai_service.client(TOKEN) as sync_http:
        assert_stored_once(openai_service, sync_http, sid, message, done.data["response"])


# --- many streams at once --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_many_concurrent_streams_with_random_drops_and_re_attaches_store_each_reply_once(
    service: Service, sid: str
) -> None:
    """CONCURRENT clients on their own sessions, each dropping its connection at random
    points and re-attaching with the last id it saw: each ends up with the whole reply,
    as stored, once."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)

    def some_events() -> int | None:
        return rng.choice([None, rng.randint(1, 10)])  # None: to the end

    async def client(http: httpx.AsyncClient, n: int) -> tuple[str, str, list[Event]]:
        session_id, message = f"{sid}-{n}", f"client {n} says " + words(rng.randint(0, 12))
        count = rng.choice([None, rng.randint(READ_BEFORE_DROP, 12)])
        async with http.stream("POST", "/chat/stream", json=chat(session_id, message)) as response:
            received = await AsyncEventStream(response).read(count)
        check_order(received)
        while not received[-1].terminal:
            last = received[-1]
            count = some_events()
            headers = {"Last-Event-ID": last.id}
            async with http.stream(
                "GET", f"/chat/{session_id}/stream", headers=headers
            ) as response:
                more = await AsyncEventStream(response).read(count)
            check_order(more, after=last.seq)
            received += more
        return session_id, message, received

    limits = httpx.Limits(max_connections=CONCURRENT + 50)
    async with httpx.AsyncClient(
        base_url=service.url,
        headers={"authorization": f"Bearer {TOKEN}"},
        trust_env=False,
        timeout=30,
        limits=limits,
    ) as http:
        results = await asyncio.gather(*(client(http, n) for n in range(CONCURRENT)))

    with service.client(TOKEN) as sync_http:
        for session_id, message, received in results:
            done = check_whole(received)
            assert done.name == "done", (seed, session_id, done)
            reply = echo_reply(message)
            assert text_of(received) == done.data["response"] == reply, (seed, session_id)
            assert stored_messages(service, sync_http, session_id) == [
                ("user", message),
                ("assistant", reply),
            ], (seed, session_id)
