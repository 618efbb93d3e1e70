"""Every error leaves as JSON `{"status_code", "detail"}`; no client or upstream cause is a 500."""

import logging
import traceback
from typing import Any, NamedTuple

import msgspec
from litestar import MediaType, Request, Response
from litestar.enums import ParamType
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.types import ExceptionHandlersMap

from application.errors import (
    HistoryUnavailable,
    IdempotencyConflict,
    ModelNotFound,
    ModelTimeout,
    ModelUnavailable,
    SessionNotFound,
)
from domain.errors import InvalidInput
from entrypoints.http.limits import MAX_BODY

log = logging.getLogger("chat.http")


class Problem(msgspec.Struct):
    status_code: int
    detail: str


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> Response[Problem]:
    return Response(
        Problem(status, detail), status_code=status, headers=headers, media_type=MediaType.JSON
    )


def _validation_detail(error: ValidationException) -> str:
    """Litestar puts the reason (e.g. "Expected `str`, got `int` - at `$.message`") in extra."""
    reasons = []
    in_body = True
    for item in error.extra if isinstance(error.extra, list) else []:
        if isinstance(item, dict) and item.get("key") == "data" and item.get("message") == "'data'":
            return 'request body is empty; send JSON like {"message": "Hello"}'
        if isinstance(item, dict) and item.get("message"):
            where = item.get("key")
            if where == "data":  # the body as a whole: the message names the field itself
                where = None
            if item.get("source") == ParamType.HEADER:  # the header's name, not the parameter's
                in_body, where = False, f"header {str(where).replace('_', '-').title()}"
            reasons.append(f"{item['message']}" + (f" ({where})" if where else ""))
    if not reasons:
        return error.detail
    return f"invalid request{' body' if in_body else ''}: " + "; ".join(reasons)


class Explained(NamedTuple):
    """A failure as a client is told it, whatever the shape of the body that tells it."""

    status: int
    detail: str
    headers: dict[str, str] | None = None


def _http_exception(error: HTTPException) -> Explained:
    detail = _validation_detail(error) if isinstance(error, ValidationException) else error.detail
    if error.status_code == 413:
        detail = f"request body is too large (the limit is {MAX_BODY})"
    elif isinstance(error.__cause__, SerializationException):
        detail = f"request body is not valid JSON: {detail}"
    return Explained(error.status_code, detail, error.headers)


# Where a request body is decoded: Litestar's decoders, and the strict one of the /v1 routes.
_BODY_DECODERS = frozenset({"decode_json", "decode_msgpack", "strictly"})


def _decoding_body(error: BaseException) -> bool:
    """Whether `error` was raised while a request body was decoded, rather than by a bug of
    the service's own, which must not be blamed on the client."""
    frames = traceback.walk_tb(error.__traceback__)
    return any(frame.f_code.co_name in _BODY_DECODERS for frame, _ in frames)


def _unreadable_body(error: Exception) -> Explained:
    """msgspec raises these two past Litestar's own JSON error handling."""
    if isinstance(error, UnicodeDecodeError):
        return Explained(400, "request body is not valid JSON: it is not UTF-8")
    return Explained(400, "request body is not valid JSON: it is nested too deeply")


# What each failure of a use case means to a client, in one table; the first match counts.
_STATUS: dict[type[Exception], int] = {
    InvalidInput: 400,
    SessionNotFound: 404,
    ModelNotFound: 404,
    IdempotencyConflict: 409,
    HistoryUnavailable: 503,
    ModelTimeout: 504,
    ModelUnavailable: 502,
}


def status_of(error: BaseException) -> int:
    """The status of a failure, for an error response or a stream's error event."""
    return next((code for kind, code in _STATUS.items() if isinstance(error, kind)), 500)


def _failed(request: Request[Any, Any, Any], error: Exception) -> Explained:
    status = status_of(error)
    if status < 500:  # the caller's mistake: the use case's message is the detail, as it is
        return Explained(status, str(error))
    if status == 503:  # the store's own error says why, for the operator
        log.warning("%s %s: %s (%r)", request.method, request.url.path, error, error.__cause__)
        return Explained(503, f"{error}; try again shortly", {"Retry-After": "1"})
    log.warning("%s %s: %s", request.method, request.url.path, error)
    return Explained(status, str(error))


def explain(request: Request[Any, Any, Any], error: Exception) -> Explained:
    """What to tell the client about `error`; a failure of the service itself is logged."""
    if isinstance(error, HTTPException):
        return _http_exception(error)
    if isinstance(error, UnicodeDecodeError | RecursionError) and _decoding_body(error):
        return _unreadable_body(error)
    if isinstance(error, tuple(_STATUS)):
        return _failed(request, error)
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return Explained(500, "internal error; it has been logged")


def _problem(request: Request[Any, Any, Any], error: Exception) -> Response[Problem]:
    explained = explain(request, error)
    return problem(explained.status, explained.detail, explained.headers)


# Every kind `explain` tells apart; Litestar picks a handler by the exception's type.
HANDLED: tuple[type[Exception], ...] = (
    HTTPException,
    UnicodeDecodeError,
    RecursionError,
    *_STATUS,
    Exception,
)
EXCEPTION_HANDLERS: ExceptionHandlersMap = dict.fromkeys(HANDLED, _problem)
