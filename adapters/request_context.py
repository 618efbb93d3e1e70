"""The request being served, for what runs on its behalf: its log lines and its provider
calls carry its id. A ContextVar, so the tasks a request starts (a streamed reply's producer)
keep it after the request's own task has moved on."""

from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
