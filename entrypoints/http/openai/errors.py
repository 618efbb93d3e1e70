"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so that its SDKs
raise their own classes. The statuses and words are the service's own (entrypoints/http/
errors.py explains each failure once); only the body differs."""

import re
from typing import Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import ValidationException
from litestar.openapi import ResponseSpec
from litestar.types import ExceptionHandlersMap

from application.errors import ModelNotFound
from entrypoints.http.controllers import COMMON_ERRORS, NOT_BLANK_PATTERN, SEND_ERRORS
from entrypoints.http.errors import HANDLED, explain


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


class InvalidParameter(ValidationException):
    """A request parameter that cannot be served as sent, named for the client."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(detail=f"{param}: {message}")
        self.param = param


# OpenAI's codes for what the service's statuses mean.
_CODES = {
    401: "invalid_api_key",
    404: "not_found",
    409: "conflict",
    413: "request_too_large",
    429: "rate_limit_exceeded",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "upstream_timeout",
}
_ONE_VALUE = {"n"}  # parameters taken at their default value only
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")
_BLANK_REFUSED = f"`str` matching regex {NOT_BLANK_PATTERN!r}"  # as msgspec words it


def error_type(status: int) -> str:
    if status == 429:
        return "requests"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_code(status: int) -> str | None:
    return _CODES.get(status)


def _code_and_param(error: Exception, status: int) -> tuple[str | None, str | None]:
    if isinstance(error, ModelNotFound):
        return "model_not_found", "model"
    if isinstance(error, InvalidParameter):
        return "invalid_value", error.param
    if isinstance(error, ValidationException):
        # Litestar's extra: [{"message": ..., "key": the field's path, or "data" for the body}]
        for item in error.extra if isinstance(error.extra, list) else []:
            if not isinstance(item, dict) or not item.get("message"):
                continue
            where = item.get("key") if item.get("key") != "data" else None
            if unknown := _UNKNOWN_FIELD.search(str(item["message"])):
                return "unsupported_parameter", f"{where}.{unknown[1]}" if where else unknown[1]
            return "unsupported_parameter" if where in _ONE_VALUE else "invalid_value", where
        return "invalid_value", None
    return error_code(status), None


def error_body(status: int, message: str, code: str | None, param: str | None = None) -> ErrorBody:
    return ErrorBody(ErrorDetail(message, error_type(status), param, code))


def openai_error(request: Request[Any, Any, Any], error: Exception) -> Response[ErrorBody]:
    explained = explain(request, error)
    code, param = _code_and_param(error, explained.status)
    message = explained.detail.replace(_BLANK_REFUSED, "a text that is not blank")
    return Response(
        error_body(explained.status, message, code, param),
        status_code=explained.status,
        headers=explained.headers,
        media_type=MediaType.JSON,
    )


OPENAI_EXCEPTION_HANDLERS: ExceptionHandlersMap = dict.fromkeys(HANDLED, openai_error)
OPENAI_PREFIX = "/v1"


def also_under_prefix(handlers: ExceptionHandlersMap) -> ExceptionHandlersMap:
    """The app's own handlers, which answer what no route took (an unknown path, a method a
    path lacks), in OpenAI's shape under /v1: OpenAI's clients read that shape there."""

    def choosing(other: Any) -> Any:
        def handler(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
            path = request.url.path
            if path == OPENAI_PREFIX or path.startswith(f"{OPENAI_PREFIX}/"):
                return openai_error(request, error)
            response: Response[Any] = other(request, error)
            return response

        return handler

    return {kind: choosing(other) for kind, other in handlers.items()}


def _specs(
    statuses: dict[int, ResponseSpec], more: dict[int, str] | None = None
) -> dict[int, ResponseSpec]:
    """The service's documented failures, in OpenAI's shape."""
    described = {status: spec.description for status, spec in statuses.items()} | (more or {})
    return {
        status: ResponseSpec(ErrorBody, description=description, generate_examples=False)
        for status, description in described.items()
    }


OPENAI_ERRORS = _specs(COMMON_ERRORS)
OPENAI_SEND_ERRORS = _specs(
    SEND_ERRORS, {404: "No such model, conversation or previous response for this token"}
)
OPENAI_MODEL_ERRORS = _specs(COMMON_ERRORS, {404: "No model of that name"})
OPENAI_SHOW_ERRORS = _specs(COMMON_ERRORS, {404: "No such conversation for this token"})
