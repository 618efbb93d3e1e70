"""Every way a provider can fail, played against the running service over HTTP.

The service runs as a subprocess with the openai provider pointed at the loopback stub and a
real redis-server. For each fault the client gets the contract's status (502 the provider
failed or answered something unusable, 504 it timed out, never a 500) and the session's stored
history is exactly what it was; where a retry succeeds, the exchange is stored exactly once.
"""

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Service, ServiceLauncher, wait_until
from tests.support.provider_stub import (
    OPENAI_KEY_PAGE,
    ProviderStub,
    Reply,
    cut_mid_body,
    error_reply,
    huge_reply,
    json_reply,
    no_headers,
    openai_body,
    openai_error,
    openai_unknown_model,
    openai_wrong_key,
    trickle,
)
from tests.support.redis_server import RedisServer

TOKEN = "tok-provider-faults"
TIMEOUT_SECONDS = 1.0
MAX_RETRIES = 1
MODEL = "gpt-4o-mini"
ATTEMPTS = MAX_RETRIES + 1
MIB = 1024 * 1024
JSON = {"content-type": "application/json"}


def _config(redis: RedisServer, api_url: str) -> dict[str, dict[str, str]]:
    """Both services of this module share one Redis, key prefix and token: one history."""
    return {
        "auth": {"tokens": TOKEN},
        "redis": {"url": redis.url, "key_prefix": "faults"},
        "llm": {
            "provider": "openai",
            "api_url": api_url,
            "model": MODEL,
            "timeout_seconds": str(TIMEOUT_SECONDS),
            "max_retries": str(MAX_RETRIES),
        },
    }


@pytest.fixture(scope="module")
def service(
    module_launch: ServiceLauncher, module_stub: ProviderStub, module_redis: RedisServer
) -> Service:
    return module_launch(_config(module_redis, f"{module_stub.url}/v1"))


@pytest.fixture(scope="module")
def dead_port() -> Iterator[int]:
    """A port bound but not listening: connecting is refused, and no other process can start
    listening on it while the module runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


@pytest.fixture(scope="module")
def unreachable_service(
    module_launch: ServiceLauncher, module_redis: RedisServer, dead_port: int
) -> Service:
    """The same history store, with a provider where nothing listens."""
    return module_launch(_config(module_redis, f"http://127.0.0.1:{dead_port}/v1"))


@pytest.fixture
def stub(module_stub: ProviderStub) -> Iterator[ProviderStub]:
    """The module's stub with no plan left over from another test; every planned reply must
    have been asked for by the end of the test, or the fault was not played."""
    module_stub.reset()
    yield module_stub
    left = module_stub.planned
    module_stub.reset()
    assert left == 0, f"{left} planned replies were never asked for"


@pytest.fixture
def http(service: Service) -> Iterator[httpx.Client]:
    with service.client(TOKEN) as client:
        yield client


def _history(service: Service, http: httpx.Client, session_id: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = service.expect(http.get(f"/chat/{session_id}"), 200)[
        "messages"
    ]
    return messages


def _seeded(service: Service, http: httpx.Client, stub: ProviderStub, session_id: str) -> Any:
    """A session with two stored exchanges (the stub's default answer), so that "unchanged"
    means something; returns its history and forgets the seeding requests."""
    for turn in (1, 2):
        body = {"session_id": session_id, "message": f"earlier question {turn}"}
        service.expect(http.post("/chat/", json=body), 200)
    history = _history(service, http, session_id)
    assert len(history) == 4, history
    stub.reset()
    return history


def _ask(http: httpx.Client, session_id: str, message: str) -> httpx.Response:
    return http.post("/chat/", json={"session_id": session_id, "message": message})


def _failed(service: Service, response: httpx.Response, status: int) -> str:
    """The contract's status and a JSON detail (expect() shows the service's log if not)."""
    body = service.expect(response, status)
    assert isinstance(body.get("detail"), str), body
    assert body["detail"].strip(), body
    detail: str = body["detail"]
    return detail


def _stored_once(
    before: list[dict[str, Any]], after: list[dict[str, Any]], question: str, answer: str
) -> None:
    """The history is what it was plus exactly one exchange: this question and this answer."""
    assert after[: len(before)] == before
    added = [(m["role"], m["content"]) for m in after[len(before) :]]
    assert added == [("user", question), ("assistant", answer)], added


# --- the provider cannot be reached, or drops the connection ---------------------------------


def test_nothing_listening_is_502_and_changes_nothing(
    service: Service, unreachable_service: Service, stub: ProviderStub, http: httpx.Client, sid: str
) -> None:
    before = _seeded(service, http, stub, sid)

    with unreachable_service.client(TOKEN) as unreachable:
        _failed(unreachable_service, _ask(unreachable, sid, "anyone?"), 502)
        assert _history(unreachable_service, unreachable, sid) == before

    assert _history(service, http, sid) == before


def test_a_reset_mid_body_every_time_is_502_after_the_retries(
    service: Service, stub: ProviderStub, http: httpx.Client, sid: str
) -> None:
    before = _seeded(service, http, stub, sid)
    stub.plan(*[cut_mid_body(json_reply(openai_body("lost " * 20)))] * ATTEMPTS)

    _failed(service, _ask(http, sid, "will be cut"), 502)

    assert len(stub.requests) == ATTEMPTS  # retried, and not more than max_retries times
    assert _history(service, http, sid) == before


def test_a_reset_mid_body_then_an_answer_is_200_stored_once(
    service: Service, stub: ProviderStub, http: httpx.Client, sid: str
) -> None:
    before = _seeded(service, http, stub, sid)
    stub.plan(
        cut_mid_body(json_reply(openai_body("lost " * 20))),
        json_reply(openai_body("answer after a reset")),
    )

    reply = service.expect(_ask(http, sid, "cut, then fine"), 200)

    assert (reply["session_id"], reply["response"]) == (sid, "answer after a reset")
    assert len(stub.requests) == 2
    after = _history(service, http, sid)
    _stored_once(before, after, "cut, then fine", "answer after a reset")


# --- the provider is too slow ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "phase"),
    [
        (no_headers(), "before-headers"),
        # 8-byte pieces 0.1 s apart: each arrives well within any read timeout, the whole body
        # takes over 3 s. Only a deadline on the whole attempt stops it.
        (trickle(json_reply(openai_body("slow " * 40)), 0.1, chunk_size=8), "during-body"),
    ],
    ids=["headers-never-sent", "body-trickles"],
)
def test_a_provider_too_slow_is_504_at_timeout_seconds_and_changes_nothing(
    service: Service, stub: ProviderStub, http: httpx.Client, sid: str, reply: Reply, phase: str
) -> None:
    before = _seeded(service, http, stub, sid)
    stub.plan(reply)

    started = time.monotonic()
    detail = _failed(service, _ask(http, sid, "hurry up"), 504)
    elapsed = time.monotonic() - started

    assert TIMEOUT_SECONDS * 0.9 <= elapsed < TIMEOUT_SECONDS + 2.0, elapsed
    assert "within" in detail.lower(), detail
    assert len(stub.requests) == 1  # a timeout is not retried: that would multiply the wait
    # The service gave up on the provider's connection at its deadline, not later.
    [request] = stub.requests
    wait_until(lambda: bool(stub.abandoned), 2.0, "the stub sees the connection closed")
    [dropped] = stub.abandoned
    assert dropped.connection == request.connection
    assert dropped.phase == phase
    assert dropped.closed_at - request.received_at < TIMEOUT_SECONDS + 1.0
    assert _history(service, http, sid) == before


# --- the provider answers something unusable ---------------------------------------------------


def _vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _reset_peak(pid: int) -> bool:
    """Make VmHWM start again from the current RSS (Linux 4.0+); False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


HUGE = 10 * MIB
HUGE_REQUESTS = 5  # of each kind, alternating
# Reading stops at the 4 MiB cap, so a few MiB of growth is expected. Holding one whole 10 MiB
# answer costs 20+ MiB at once (body plus copies); keeping part of each refused one adds up
# over ten requests. Either goes past this.
MEMORY_MARGIN_KIB = 16 * 1024


def test_10_mib_answers_are_502_and_the_service_memory_stays_bounded(
    service: Service, stub: ProviderStub, http: httpx.Client, sid: str
) -> None:
    """With a Content-Length the size is known from the headers; chunked, only by counting
    while reading. Either way the service must stop reading at its cap and let go of what it
    read: its resident memory (now, and at its peak) shows whether it did. No test before this
    one sends the service anything big, so the baseline is its resting size."""
    assert service.process is not None
    pid = service.process.pid  # one worker: uvicorn serves in the main process
    before = _seeded(service, http, stub, sid)

    baseline = _vm_kib(pid, "VmRSS")
    peak_known = _reset_peak(pid)
    grown = []  # (how the body was sent, MiB over the baseline after the request)
    for n in range(2 * HUGE_REQUESTS):
        chunked = n % 2 == 1
        stub.plan(huge_reply(HUGE, chunked=chunked))
        _failed(service, _ask(http, sid, f"huge answer {n}"), 502)
        kib = _vm_kib(pid, "VmRSS") - baseline
        grown.append(("chunked" if chunked else "content-length", round(kib / 1024, 1)))
    peak_kib = _vm_kib(pid, "VmHWM") - baseline if peak_known else 0

    assert len(stub.requests) == 2 * HUGE_REQUESTS  # a body over the cap is not asked again
    assert max(mib for _, mib in grown) * 1024 < MEMORY_MARGIN_KIB, f"RSS growth: {grown}"
    assert peak_kib < MEMORY_MARGIN_KIB, f"peak {peak_kib / 1024:.1f} MiB; RSS growth: {grown}"
    assert _history(service, http, sid) == before


# The answer in the shape the service expects, with bytes that are not UTF-8 in its text.
_NOT_UTF_8 = {
    "lone-latin-1-byte": b"caf\xe9",
    "truncated-sequence": b"ends mid-character \xc3",
    "overlong-encoding": b"\xc0\xaf",
    "encoded-surrogate": b"\xed\xa0\x80",
    "beyond-unicode": b"\xf4\x90\x80\x80",
}


@pytest.mark.parametrize("text", _NOT_UTF_8.values(), ids=_NOT_UTF_8.keys())
def test_an_answer_that_is_not_utf_8_is_502_and_changes_nothing(
    service: Service, stub: ProviderStub, http: httpx.Client, sid: str, text: bytes
) -> None:
    before = _seeded(service, http, stub, sid)
    head, tail = json.dumps(openai_body("@@")).encode().split(b"@@")
    stub.plan(Reply(200, head + text + tail, JSON))

    _failed(service, _ask(http, sid, "say it in bytes"), 502)

    assert len(stub.requests) == 1
    assert _history(service, http, sid) == before


_WRONG_SHAPES: dict[str, bytes] = {
    "top-level-array": b'[{"message": {"content": "hi"}}]',
    "top-level-string": b'"hi"',
    "top-level-null": b"null",
    "choices-an-object": b'{"choices": {"0": {"message": {"content": "hi"}}}}',
    "choices-missing": b'{"id": "chatcmpl-1", "object": "chat.completion"}',
    "message-missing": b'{"choices": [{"index": 0, "finish_reason": "stop"}]}',
    "content-a-number": b'{"choices": [{"message": {"role": "assistant", "content": 42}}]}',
    "content-a-list": b'{"choices": [{"message": {"content": [{"type": "text"}]}}]}',
    "lone-surrogate-escape": b'{"choices": [{"message": {"content": "\\ud800"}}]}',
}


@pytest.mark.parametrize("body", _WRONG_SHAPES.values(), ids=_WRONG_SHAPES.keys())
def test_valid_json_of_the_wrong_shape_is_502_and_changes_nothing(
    service: Service, stub: ProviderStub, http: httpx.Client, sid: str, body: bytes
) -> None:
    before = _seeded(service, http, stub, sid)
    stub.plan(Reply(200, body, JSON))

    _failed(service, _ask(http, sid, "answer properly"), 502)

    assert len(stub.requests) == 1  # not worth retrying: it would answer the same
    assert _history(service, http, sid) == before


# --- the provider asks to be retried ------------------------------------------------------------


def test_429_waits_for_retry_after_then_200_stored_once(
    service: Service, stub: ProviderStub, http: httpx.Client, sid: str
) -> None:
    before = _seeded(service, http, stub, sid)
    stub.plan(error_reply(429, retry_after="1"), json_reply(openai_body("worth the wait")))

    reply = service.expect(_ask(http, sid, "patience"), 200)

    assert reply["response"] == "worth the wait"
    first, second = stub.requests
    waited = second.received_at - first.received_at
    assert 0.95 <= waited < 1.0 + 2.0, waited  # about Retry-After: not sooner, not much later
    after = _history(service, http, sid)
    _stored_once(before, after, "patience", "worth the wait")


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_5xx_then_an_answer_is_200_stored_once(
    service: Service, stub: ProviderStub, http: httpx.Client, sid: str, status: int
) -> None:
    before = _seeded(service, http, stub, sid)
    stub.plan(error_reply(status), json_reply(openai_body(f"fine after a {status}")))

    reply = service.expect(_ask(http, sid, "second time lucky"), 200)

    assert (reply["session_id"], reply["response"]) == (sid, f"fine after a {status}")
    assert len(stub.requests) == 2
    after = _history(service, http, sid)
    _stored_once(before, after, "second time lucky", f"fine after a {status}")


# --- the provider refuses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "said"),
    [
        (
            openai_wrong_key("sk-proj-WrongKey0123456789abcdefWXYZ"),
            f"refused the credentials (HTTP 401, model {MODEL}): Incorrect API key provided: "
            f"[redacted]. You can find your API key at {OPENAI_KEY_PAGE}.",
        ),
        (
            openai_unknown_model(MODEL),
            f"found no such URL or model (HTTP 404, model {MODEL}, URL ",
        ),
        (
            openai_error(
                400,
                "Invalid 'messages[1].content': string too long. Expected a string with "
                "maximum length 10485760, but got a string with length 10485761 instead.",
                param="messages[1].content",
                code="string_above_max_length",
            ),
            f"rejected the request (HTTP 400, model {MODEL}): Invalid 'messages[1].content': "
            "string too long.",
        ),
    ],
    ids=["401", "404", "400"],
)
def test_a_refusal_is_502_whose_detail_and_log_line_say_what_the_provider_said(
    service: Service, stub: ProviderStub, http: httpx.Client, sid: str, reply: Reply, said: str
) -> None:
    before = _seeded(service, http, stub, sid)
    stub.plan(reply)

    detail = _failed(service, _ask(http, sid, "refused"), 502)

    assert detail.startswith("the openai-compatible provider "), detail
    assert said in detail
    assert len(stub.requests) == 1  # a refusal is final

    def logged() -> list[str]:
        return [line for line in service.stderr().splitlines() if line.endswith(f": {detail}")]

    wait_until(lambda: bool(logged()), 2.0, "the refusal in the service's log")
    assert logged()[0].startswith("WARNING "), logged()
    assert _history(service, http, sid) == before
