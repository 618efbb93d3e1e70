"""A span per request, from Litestar's OpenTelemetry plugin (the ASGI instrumentation)."""

from typing import Any

from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span

from adapters.request_context import REQUEST_ID
from entrypoints.http.metrics import METRICS_PATH

# Probes and scrapes come every few seconds and say nothing about a request's path.
_UNTRACED = [METRICS_PATH, "/health", "/ready"]


def _request_id(span: Span, scope: dict[str, Any]) -> None:
    """The request's X-Request-ID on its span: a log line and its trace name each other."""
    if span.is_recording() and (request_id := REQUEST_ID.get()) is not None:
        span.set_attribute("http.request.header.x-request-id", request_id)


def traced_requests(tracer: TracerProvider) -> OpenTelemetryPlugin:
    return OpenTelemetryPlugin(
        OpenTelemetryConfig(
            tracer_provider=tracer,
            exclude=[f"^{path}$" for path in _UNTRACED],
            exclude_spans=["receive", "send"],  # a span per ASGI message: noise
            server_request_hook_handler=_request_id,
        )
    )
