"""Traces, caught by an in-memory exporter: a request's span, its Redis commands and its model
calls share one trace; the model span carries the model, the outcome and the tokens; no span
carries chat text. The app runs in-process over a real redis-server and the echo model."""

import msgspec
import pytest
from dependency_injector import providers
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from entrypoints.asgi import create_app
from entrypoints.config import (
    CleanupSettings,
    LlmSettings,
    RedisSettings,
    Settings,
    TracingSettings,
)
from entrypoints.container import Container
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration

SECRET_TEXT = "the-words-of-a-private-chat"


def settings(redis: RedisServer, endpoint: str = "http://127.0.0.1:9/") -> Settings:
    return Settings(
        redis=RedisSettings(url=redis.url, key_prefix="traced"),
        llm=LlmSettings(echo_word_seconds=0),
        cleanup=CleanupSettings(enabled=False),
        tracing=TracingSettings(otlp_endpoint=endpoint),
    )


def attributes(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


async def test_a_request_its_store_calls_and_its_model_call_are_one_trace(
    redis_server: RedisServer,
) -> None:
    exported = InMemorySpanExporter()
    tracer = TracerProvider()
    tracer.add_span_processor(SimpleSpanProcessor(exported))
    config = settings(redis_server)
    container = Container(settings=config)
    container.tracer_provider.override(providers.Object(tracer))
    async with AsyncTestClient(create_app(config, container)) as client:
        exported.clear()  # the start's own store calls
        response = await client.post(
            "/chat/", json={"message": SECRET_TEXT}, headers={"X-Request-ID": "trace-me-1"}
        )
        assert response.status_code == 200
        with_chat = exported.get_finished_spans()
        exported.clear()
        streamed = await client.post("/chat/stream", json={"message": SECRET_TEXT})
        assert streamed.status_code == 200
        await client.get("/metrics")
        await client.get("/health")
        with_stream = exported.get_finished_spans()

    [server] = [s for s in with_chat if s.kind is SpanKind.SERVER]
    assert attributes(server)["http.request.header.x-request-id"] == "trace-me-1"
    assert {s.context.trace_id for s in with_chat} == {server.context.trace_id}
    commands = {s.name for s in with_chat if attributes(s).get("db.system") == "redis"}
    assert {"LRANGE", "EVALSHA"} <= commands

    [model] = [s for s in with_chat if s.name == "chat primary"]
    assert model.parent is not None
    model_attributes = attributes(model)
    assert model_attributes["gen_ai.request.model"] == "primary"
    assert model_attributes["chat.outcome"] == "ok"
    assert model_attributes["chat.tokens_source"] == "estimate"
    assert isinstance(model_attributes["gen_ai.usage.output_tokens"], int)
    assert model_attributes["gen_ai.usage.output_tokens"] > 0
    assert model.status.status_code is StatusCode.UNSET

    [stream_model] = [s for s in with_stream if s.name == "chat primary"]
    assert "chat.time_to_first_token_seconds" in attributes(stream_model)
    paths = {attributes(s).get("url.path") or attributes(s).get("http.target") for s in with_stream}
    assert "/metrics" not in paths
    assert "/health" not in paths  # probes and scrapes make no traces

    for span in [*with_chat, *with_stream]:
        said = msgspec.json.encode([span.name, attributes(span), [e.name for e in span.events]])
        assert SECRET_TEXT.encode() not in said, span.name


async def test_no_endpoint_no_traces(redis_server: RedisServer) -> None:
    config = msgspec.structs.replace(settings(redis_server), tracing=TracingSettings())
    container = Container(settings=config)
    assert container.tracer_provider() is None
    app = create_app(config, container)
    assert not [p for p in app.plugins.init if type(p).__name__ == "OpenTelemetryPlugin"]
