"""The request id's sanity rule, the log formats and filter, and the request line as the
middleware writes it around plain ASGI apps and around the app itself (in-process)."""

import asyncio
import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from adapters.request_context import REQUEST_ID
from domain.answer import Usage
from entrypoints.config import LogSettings
from entrypoints.http.request_log import (
    RequestLog,
    note_failure,
    note_reply,
    note_session,
    outcome_of,
    request_id_of,
)
from entrypoints.logs import (
    OWN_LOGGERS,
    JsonFormatter,
    RequestIdFilter,
    TextFormatter,
    configure_logging,
)
from tests.unit.fakes import ScriptedModel
from tests.unit.test_http_api import serve, settings

MADE = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize(
    "sent",
    ["a", "abc-1", "A_b.c:d-9", "x" * 128, "3f2c9a4e-7b1d-4c2e-9f0a-5d6e7f8a9b0c"],
)
def test_a_sane_client_id_is_kept(sent: str) -> None:
    assert request_id_of(sent.encode()) == sent


@pytest.mark.parametrize(
    "sent",
    [
        b"",
        b"x" * 129,
        b"two words",
        b"id\r\nX-Injected: 1",
        b"id\n",
        b'"quoted"',
        b"a/b",
        b"caf\xc3\xa9",  # not ASCII
        b"\x00",
        b"tab\t",
    ],
)
def test_anything_else_is_replaced_by_a_made_id(sent: bytes) -> None:
    made = request_id_of(sent)
    assert MADE.fullmatch(made), made
    assert made != request_id_of(sent)  # a new one each time


def test_no_id_sent_gets_a_made_one() -> None:
    assert MADE.fullmatch(request_id_of(None))


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, "ok"), (204, "ok"), (304, "ok"), (400, "invalid"), (401, "unauthorized"),
     (404, "not_found"), (409, "conflict"), (413, "too_large"), (418, "client_error"),
     (429, "rate_limited"), (500, "internal_error"), (502, "provider_error"),
     (503, "store_unavailable"), (504, "provider_timeout"), (507, "server_error")],
)  # fmt: skip
def test_outcome_words(status: int, outcome: str) -> None:
    assert outcome_of(status) == outcome


# --- the filter and the formats -----------------------------------------------------------


def _record(message: str = "said %s", *args: object, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("chat.test", logging.INFO, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


def _filtered(record: logging.LogRecord) -> logging.LogRecord:
    assert RequestIdFilter().filter(record)
    return record


async def test_the_filter_stamps_the_served_request_id_also_in_tasks_it_started() -> None:
    assert _filtered(_record()).request_id is None
    token = REQUEST_ID.set("req-1")
    try:
        assert _filtered(_record()).request_id == "req-1"
        task = asyncio.create_task(_record_later())
    finally:
        REQUEST_ID.reset(token)
    # The task copied the context when it was made: what it writes later is the request's.
    assert (await task).request_id == "req-1"
    assert _filtered(_record()).request_id is None


async def _record_later() -> logging.LogRecord:
    await asyncio.sleep(0)
    return _filtered(_record())


def test_text_is_level_logger_request_id_and_message() -> None:
    text = TextFormatter()
    assert text.format(_filtered(_record("said %s", "hi"))) == "INFO chat.test: said hi"
    token = REQUEST_ID.set("req-1")
    try:
        assert text.format(_filtered(_record())) == "INFO chat.test [req-1]: said %s"
    finally:
        REQUEST_ID.reset(token)


def test_text_keeps_a_record_on_one_line_but_its_traceback() -> None:
    line = TextFormatter().format(_filtered(_record("a %s b", "x\r\nWARNING forged: line")))
    assert line == "INFO chat.test: a x\\r\\nWARNING forged: line b"
    try:
        raise ValueError("boom")
    except ValueError:
        record = _filtered(_record("failed"))
        record.exc_info = sys.exc_info()
    first, *rest = TextFormatter().format(record).splitlines()
    assert first == "INFO chat.test: failed"
    assert rest[0].startswith("Traceback")
    assert rest[-1] == "ValueError: boom"


def test_json_is_one_object_per_line_with_the_fields_as_keys_of_their_own() -> None:
    fields = {"method": "GET", "route": "/chat/{session_id}", "status": 200, "tokens_in": None}
    token = REQUEST_ID.set("req-1")
    try:
        record = _filtered(_record("line\nbreak", fields=fields))
    finally:
        REQUEST_ID.reset(token)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry.pop("time"))
    assert entry == {
        "level": "info",
        "logger": "chat.test",
        "message": "line\nbreak",
        "request_id": "req-1",
        **fields,
    }


def test_json_outside_a_request_has_a_null_id_and_a_traceback_as_a_key() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _filtered(_record("failed", fields={"message": "not this one"}))
        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record))
    assert entry["request_id"] is None
    assert entry["message"] == "failed"  # a field never overwrites the line's own keys
    assert entry["exception"].endswith("ValueError: boom")


@contextlib.contextmanager
def bare_root() -> Iterator[logging.Logger]:
    """The root logger without pytest's handlers, as a fresh process has it; all put back."""
    names = ["", *OWN_LOGGERS, "uvicorn.error", "httpx", "apscheduler"]
    loggers = [logging.getLogger(name) for name in names]
    kept = [(lg, lg.level, lg.propagate, lg.handlers[:]) for lg in loggers]
    logging.getLogger().handlers.clear()
    try:
        yield logging.getLogger()
    finally:
        for logger, level, propagate, handlers in kept:
            logger.setLevel(level)
            logger.propagate = propagate
            logger.handlers[:] = handlers


def test_configure_logging_is_text_at_info_until_the_settings_say_otherwise() -> None:
    with bare_root() as root:
        uvicorn = logging.getLogger("uvicorn.error")
        uvicorn.addHandler(logging.NullHandler())  # as uvicorn's own config leaves it
        uvicorn.propagate = False

        configure_logging()
        [handler] = root.handlers
        assert isinstance(handler.formatter, TextFormatter)
        assert any(isinstance(f, RequestIdFilter) for f in handler.filters)
        assert (uvicorn.handlers, uvicorn.propagate) == ([], True)  # its lines go through ours
        assert logging.getLogger("chat").getEffectiveLevel() == logging.INFO

        configure_logging(LogSettings(format="json", level="warning"))
        assert root.handlers == [handler]  # the same one, not a second
        assert isinstance(handler.formatter, JsonFormatter)
        assert not logging.getLogger("chat.request").isEnabledFor(logging.INFO)
        assert logging.getLogger("adapters.llm.http_call").isEnabledFor(logging.WARNING)

        configure_logging(LogSettings(level="debug"))
        assert isinstance(handler.formatter, TextFormatter)
        assert logging.getLogger("application.model_routing").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("some.library").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)


# --- the middleware around plain ASGI apps ------------------------------------------------

Sent = list[dict[str, Any]]


async def _call(app: Any, headers: list[tuple[bytes, bytes]] | None = None) -> Sent:
    sent: Sent = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": headers or []}
    await RequestLog(app)(scope, receive, send)
    return sent


def _line(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    [record] = [r for r in caplog.records if r.name == "chat.request"]
    return record


def _answering(status: int, *notes: Any, headers: list[Any] | None = None) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        for note in notes:
            note()
        await send({"type": "http.response.start", "status": status, "headers": headers or []})
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})

    return app


async def test_the_id_is_in_the_header_and_the_handlers_facts_in_the_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "chat.request")
    seen: list[str | None] = []
    app = _answering(
        200,
        lambda: seen.append(REQUEST_ID.get()),
        lambda: note_session("  s1 "),
        lambda: note_reply("s1", "primary", Usage(4, 30)),
        headers=[(b"x-request-id", b"the-app's"), (b"content-type", b"application/json")],
    )

    sent = await _call(app, [(b"x-request-id", b"client-7")])

    assert seen == ["client-7"]
    assert sent[0]["headers"] == [
        (b"content-type", b"application/json"),
        (b"x-request-id", b"client-7"),
    ]
    record = _line(caplog)
    assert record.getMessage() == (
        f"POST - 200 ok {record.fields['duration_ms']}ms session=s1 model=primary tokens=4/30"
    )
    assert record.fields == {
        "method": "POST",
        "route": None,
        "status": 200,
        "duration_ms": record.fields["duration_ms"],
        "session_id": "s1",
        "model": "primary",
        "tokens_in": 4,
        "tokens_out": 30,
        "outcome": "ok",
    }
    assert REQUEST_ID.get() is None


async def test_an_insane_session_id_is_not_noted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "chat.request")
    await _call(_answering(400, lambda: note_session("no/such\nid")))
    assert _line(caplog).fields["session_id"] is None
    assert _line(caplog).fields["outcome"] == "invalid"


@pytest.mark.parametrize(
    ("notes", "outcome"),
    [((lambda: note_failure(504),), "provider_timeout"),
     ((lambda: note_reply("s", "m", Usage(1, 2), stopped=True),), "stopped")],
)  # fmt: skip
async def test_a_stream_that_began_as_200_ends_as_its_last_event_says(
    caplog: pytest.LogCaptureFixture, notes: tuple[Any, ...], outcome: str
) -> None:
    caplog.set_level(logging.INFO, "chat.request")
    await _call(_answering(200, *notes))
    assert (_line(caplog).fields["status"], _line(caplog).fields["outcome"]) == (200, outcome)


async def test_a_client_that_left_before_the_end(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "chat.request")

    async def nothing_sent(scope: Any, receive: Any, send: Any) -> None:
        return None

    async def half_sent(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data", "more_body": True})

    await _call(nothing_sent)
    assert (_line(caplog).fields["status"], _line(caplog).fields["outcome"]) == (499, "client_gone")
    caplog.clear()
    await _call(half_sent)
    assert (_line(caplog).fields["status"], _line(caplog).fields["outcome"]) == (200, "client_gone")


async def test_an_app_that_raises_has_its_line_and_the_error_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "chat.request")

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        await _call(broken)
    assert (_line(caplog).fields["status"], _line(caplog).fields["outcome"]) == (
        500,
        "internal_error",
    )


# --- around the app itself ----------------------------------------------------------------


async def test_routing_404s_and_handler_404s_have_lines_and_ids(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "chat.request")
    caplog.handler.addFilter(RequestIdFilter())
    async with serve(settings(), ScriptedModel()) as client:
        unknown = await client.get("/no/such/path", headers={"X-Request-ID": "mine"})
        missing = await client.get("/chat/nobody", headers={"X-Request-ID": "bad id"})
    assert unknown.status_code == missing.status_code == 404
    assert unknown.headers["x-request-id"] == "mine"
    assert MADE.fullmatch(missing.headers["x-request-id"])
    lines = [r for r in caplog.records if r.name == "chat.request"]
    assert [(r.request_id, r.fields["route"], r.fields["session_id"]) for r in lines] == [
        ("mine", None, None),
        (missing.headers["x-request-id"], "/chat/{session_id}", "nobody"),
    ]
