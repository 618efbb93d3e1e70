"""One log line per HTTP request, written once its response has ended (a stream's when the
stream does), and the request id that it and every other line about the request carry.

A plain ASGI middleware around the whole app (asgi.py wraps `app.asgi_handler`), rather than
Litestar's LoggingMiddleware, which writes the request and the response as two lines (a
stream's before it has ended) and cannot carry what only the handler learns: the session, the
model, the tokens. Nor is it an entry of `Litestar(middleware=[...])`: Litestar runs those per
route, after routing, so an unknown path's 404 or a 405 would pass them unseen.
"""

import asyncio
import logging
import re
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

from adapters.request_context import REQUEST_ID
from application.stream_message import CLIENT_GONE_STATUS  # when no status was ever sent
from domain.answer import Usage
from domain.errors import InvalidSessionId
from domain.session import parse_session_id

log = logging.getLogger("chat.request")

REQUEST_ID_HEADER = "X-Request-ID"
_HEADER = REQUEST_ID_HEADER.lower().encode()
# A client's id is kept when sane: 1 to 128 of these characters. Nothing else is echoed or
# logged: no spaces or control characters (a forged log line, a split header), no quotes.
_SANE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

# What the line says of a failure, by the status the client was told (for a stream, the
# status_code of its error event). Statuses not listed: client_error or server_error.
FAILURES = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    429: "rate_limited",
    500: "internal_error",
    502: "provider_error",
    503: "store_unavailable",
    504: "provider_timeout",
}


def request_id_of(sent: bytes | None) -> str:
    """The client's X-Request-ID when sane, else a new one (uuid4 hex)."""
    if sent is not None:
        text = sent.decode("latin-1")
        if _SANE.fullmatch(text):
            return text
    return uuid.uuid4().hex


def outcome_of(status: int) -> str:
    if status < 400:
        return "ok"
    return FAILURES.get(status, "client_error" if status < 500 else "server_error")


@dataclass(slots=True)
class RequestFacts:
    """What the handler learnt, for the request's line. One mutable record per request, so
    what a handler notes is seen by the middleware whichever context it was noted in."""

    session_id: str | None = None
    model: str | None = None
    usage: Usage | None = None
    failed_with: int | None = None  # a stream's error event's status_code
    stopped: bool = False  # a streamed reply ended by POST /chat/{id}/stop


_FACTS: ContextVar[RequestFacts | None] = ContextVar("request_facts", default=None)


def note_session(session_id: str | None) -> None:
    """The session a request is about; an id the domain would refuse is not noted (it
    would put what a client typed into the log)."""
    facts = _FACTS.get()
    if facts is None or session_id is None:
        return
    try:
        facts.session_id = parse_session_id(session_id)
    except InvalidSessionId:
        return


def note_reply(
    session_id: str | None, model: str | None, usage: Usage | None, *, stopped: bool = False
) -> None:
    """A reply, whole or at the end of its stream."""
    facts = _FACTS.get()
    if facts is None:
        return
    if session_id is not None:
        facts.session_id = session_id
    facts.model = model or facts.model
    facts.usage = usage or facts.usage
    facts.stopped = stopped


def note_failure(status: int) -> None:
    """A failure told inside a response that began as a success (a stream's error event)."""
    facts = _FACTS.get()
    if facts is not None:
        facts.failed_with = status


class _Response:
    __slots__ = ("ended", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.ended = False  # its last body message went out


class RequestLog:
    """Gives each HTTP request its id (in REQUEST_ID, and in the X-Request-ID response
    header, errors and streams included) and writes its line when the app returns."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self._app(scope, receive, send)
            return
        sent = next((value for name, value in scope["headers"] if name == _HEADER), None)
        request_id = request_id_of(sent)
        header = (_HEADER, request_id.encode())
        response = _Response()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                response.status = message["status"]
                others = [pair for pair in message.get("headers", ()) if pair[0].lower() != _HEADER]
                message = {**message, "headers": [*others, header]}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                response.ended = True
            await send(message)

        facts = RequestFacts()
        id_token = REQUEST_ID.set(request_id)
        facts_token = _FACTS.set(facts)
        started = time.perf_counter()
        raised: str | None = None
        try:
            await self._app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            raised = "cancelled"  # the server stopped it (shutdown)
            raise
        except Exception:
            raised = "internal_error"
            raise
        finally:
            if log.isEnabledFor(logging.INFO):
                _write_line(scope, response, facts, raised, time.perf_counter() - started)
            _FACTS.reset(facts_token)
            REQUEST_ID.reset(id_token)


def _write_line(
    scope: HTTPScope, response: _Response, facts: RequestFacts, raised: str | None, seconds: float
) -> None:
    status = response.status
    if status is None:
        status = 500 if raised == "internal_error" else CLIENT_GONE_STATUS
    if raised is not None:
        outcome = raised
    elif not response.ended:
        outcome = "client_gone"  # it hung up before the response (or the stream) ended
    elif facts.failed_with is not None:
        outcome = outcome_of(facts.failed_with)
    elif facts.stopped:
        outcome = "stopped"
    else:
        outcome = outcome_of(status)
    route = scope.get("path_template") or None  # set by Litestar's router when a route matched
    usage = facts.usage
    fields = {
        "method": scope["method"],
        "route": route,
        "status": status,
        "duration_ms": round(seconds * 1000, 1),
        "session_id": facts.session_id,
        "model": facts.model,
        "tokens_in": None if usage is None else usage.input_tokens,
        "tokens_out": None if usage is None else usage.output_tokens,
        "outcome": outcome,
    }
    tokens = ("-", "-") if usage is None else (usage.input_tokens, usage.output_tokens)
    log.info(
        "%s %s %d %s %.1fms session=%s model=%s tokens=%s/%s",
        scope["method"],
        route or "-",
        status,
        outcome,
        fields["duration_ms"],
        facts.session_id or "-",
        facts.model or "-",
        *tokens,
        extra={"fields": fields},
    )
