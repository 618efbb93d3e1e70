"""OpenTelemetry traces, when [tracing] otlp_endpoint is set: a span per request (Litestar's
plugin, entrypoints), per Redis command (redis-py's instrumentation, on the service's own
client only) and per model call (here, from the use cases' Telemetry), exported over
OTLP/HTTP in batches. Spans carry no chat text: Redis commands are sanitized to `EVALSHA ?`."""

import time
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode, get_current_span
from redis.asyncio import Redis

from application.telemetry import FallbackReason, ModelCall, StreamOutcome, Telemetry

TRACES_PATH = "/v1/traces"  # OTLP/HTTP's, added to an endpoint given as the collector's root


def otlp_tracer_provider(endpoint: str, service_name: str) -> TracerProvider:
    if not urlsplit(endpoint).path.rstrip("/").endswith(TRACES_PATH):
        endpoint = endpoint.rstrip("/") + TRACES_PATH
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def trace_store_calls(client: Redis, provider: TracerProvider) -> None:
    """A span per command and pipeline of this client; no other client is touched."""
    RedisInstrumentor.instrument_client(client, tracer_provider=provider)


class TracedTelemetry:
    """Another Telemetry's events, and a span for each model call (under the span current
    where it is told: the request's, or, for a stream that outlived its request, the
    request that started it), named and attributed as OpenTelemetry's GenAI conventions
    say; a hand-over to another model is an event of the current span."""

    def __init__(self, inner: Telemetry, provider: TracerProvider) -> None:
        self._inner = inner
        self._tracer = provider.get_tracer("chat-service")

    def model_called(self, call: ModelCall) -> None:
        self._inner.model_called(call)
        end = time.time_ns()
        span = self._tracer.start_span(
            f"chat {call.model}", start_time=end - round(call.seconds * 1e9)
        )
        span.set_attribute("gen_ai.operation.name", "chat")
        span.set_attribute("gen_ai.request.model", call.model)
        span.set_attribute("chat.outcome", call.outcome)
        if call.first_token_seconds is not None:
            span.set_attribute("chat.time_to_first_token_seconds", call.first_token_seconds)
        if (usage := call.usage) is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
            span.set_attribute("chat.tokens_source", usage.source)
        if call.outcome not in ("ok", "cancelled"):
            span.set_status(Status(StatusCode.ERROR, call.outcome))
        span.end(end_time=end)

    def fell_back(self, from_model: str, to_model: str, reason: FallbackReason) -> None:
        self._inner.fell_back(from_model, to_model, reason)
        get_current_span().add_event(
            "fallback", {"from_model": from_model, "to_model": to_model, "reason": reason}
        )

    def stream_started(self) -> None:
        self._inner.stream_started()

    def stream_ended(self, outcome: StreamOutcome) -> None:
        self._inner.stream_ended(outcome)

    def replayed(self) -> None:
        self._inner.replayed()
