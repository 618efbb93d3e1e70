"""Logging for every way the service is started (CLI, plain uvicorn, uvicorn's workers), kept
free of heavy imports so that `chat-service serve` reports a config mistake at once.

configure_logging() runs twice: before the settings are read (readable text at INFO, so a
start-up failure is said), and with `[log]` once they are. Every line carries the id of the
request it was written for (a ContextVar, so the tasks a request starts carry it too).
"""

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from adapters.request_context import REQUEST_ID

if TYPE_CHECKING:
    from entrypoints.config import LogSettings

# The service's own loggers: [log] level is theirs (and uvicorn's). Libraries stay at INFO
# or above whatever it says: their debug lines may carry what ours never do (headers, keys).
OWN_LOGGERS = ("chat", "adapters", "application", "domain", "entrypoints", "uvicorn")
_QUIET = ("httpx", "apscheduler")  # httpx would log every provider URL
# uvicorn's loggers pass their lines to ours (one format for all), instead of their handlers.
# Not uvicorn.access: uvicorn logs access lines when that logger has a handler, its own
# (on under plain uvicorn unless --no-access-log) or, through propagation, ours.
_UVICORN = ("uvicorn", "uvicorn.error")


class RequestIdFilter(logging.Filter):
    """Stamps each record with the id of the request being served (None outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """`LEVEL logger [request id]: message`, the id left out outside a request. No time: a
    terminal needs none, and journald or `docker logs -t` stamp each line. A line break in a
    message is written as \\n, so that no text a client sent can forge a line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().replace("\r", "\\r").replace("\n", "\\n")
        request_id = getattr(record, "request_id", None)
        where = f"{record.name} [{request_id}]" if request_id else record.name
        line = f"{record.levelname} {where}: {message}"
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, request_id, and the
    `fields` a line was given (the request line's method, route, status ...) as keys of
    their own; `exception` holds a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":"), default=str)


class _ServiceHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The service's one handler (stderr), told apart from others (pytest's) on the root."""


def configure_logging(settings: "LogSettings | None" = None) -> None:
    """Text at INFO until the settings are read; then their format and level. Another
    handler already on the root logger (pytest's) is left alone, and gets no second one."""
    json_lines = settings is not None and settings.format == "json"
    level = logging.getLevelName((settings.level if settings else "info").upper())
    # What no line of ours shows is not gathered for each record either (the caller's file
    # and line, thread and process names): the logging HOWTO's "Optimization".
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _ServiceHandler)), None)
    if handler is None and not root.handlers:
        handler = _ServiceHandler()
        handler.addFilter(RequestIdFilter())
        root.addHandler(handler)
    if handler is not None:
        handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
        for name in _UVICORN:
            uvicorn = logging.getLogger(name)
            uvicorn.handlers.clear()
            uvicorn.propagate = True
    root.setLevel(max(level, logging.INFO))
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
