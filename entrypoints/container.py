"""The composition root: the only place where settings choose the real adapters."""

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from dependency_injector import containers, providers
from opentelemetry.sdk.trace import TracerProvider
from redis.asyncio import Redis

from adapters.cleanup_scheduler import CleanupScheduler
from adapters.embedded_redis import EmbeddedRedis
from adapters.llm.aiohttp_transport import AiohttpTransport
from adapters.llm.anthropic import AnthropicModel, messages_url
from adapters.llm.echo import EchoModel
from adapters.llm.http_call import RetryPolicy, no_retry_hook
from adapters.llm.huggingface import HuggingFaceModel
from adapters.llm.openai import OpenAIChatModel, chat_completions_url
from adapters.memory_coordination import MemoryJobLock, MemoryRateLimiter
from adapters.memory_history import MemoryHistory
from adapters.memory_model_health import MemoryModelHealth
from adapters.memory_reply_log import MemoryReplyLog
from adapters.otel_tracing import TracedTelemetry, otlp_tracer_provider, trace_store_calls
from adapters.prometheus_metrics import PrometheusMetrics
from adapters.redis_client import StoreObserver, TlsFiles, connect
from adapters.redis_coordination import RedisJobLock, RedisRateLimiter
from adapters.redis_history import RedisHistory
from adapters.redis_model_health import RedisModelHealth
from adapters.redis_reply_log import RedisReplyLog
from application.answer_unstored import AnswerUnstored
from application.attach_reply import AttachReply
from application.conversations import Conversations
from application.delete_history import DeleteHistory
from application.model_routing import ModelRoute, ModelRouter
from application.ports import ChatHistory, JobLock, LanguageModel, RateLimiter
from application.purge_histories import PurgeHistories
from application.reply_publisher import LEASE_SECONDS
from application.request_leases import RequestLeases
from application.send_message import SendMessage
from application.show_history import ShowHistory
from application.stop_reply import StopReply
from application.stream_message import StreamMessage
from application.telemetry import UNOBSERVED, Telemetry
from entrypoints.config import MEMORY_URL, ModelSettings, RedisSettings, Settings, redis_location
from entrypoints.http.errors import status_of


def _redis_url(redis: RedisSettings) -> Iterator[str]:
    """The configured URL, or the embedded server's, claimed for the service's root process:
    it stops when that process ends (released here when this process is the root)."""
    if redis.url:
        yield redis.url
        return
    server = EmbeddedRedis(Path(redis.data_dir))
    url = server.acquire()
    try:
        yield url
    finally:
        server.release()


async def _redis_client(
    url: str, tracer: TracerProvider | None, redis: RedisSettings
) -> AsyncIterator[Redis]:
    client = connect(url, tls=TlsFiles(redis.tls_ca_file, redis.tls_cert_file, redis.tls_key_file))
    if tracer is not None:
        trace_store_calls(client, tracer)
    try:
        yield client
    finally:
        await client.aclose()


async def _provider_transport() -> AsyncIterator[httpx.AsyncBaseTransport]:
    """One connection pool for every provider call of the process."""
    transport = AiohttpTransport(max_connections=1000)
    try:
        yield transport
    finally:
        await transport.aclose()


def _retry_policy(model: ModelSettings) -> RetryPolicy:
    return RetryPolicy(max_retries=model.max_retries, timeout_seconds=model.timeout_seconds)


def _call_seconds(model: ModelSettings) -> float:
    """How long one call to a model can take: every attempt at its deadline, and the
    longest wait between them."""
    policy = _retry_policy(model)
    waits = max(policy.retry_after_cap, policy.backoff_cap)
    return (policy.max_retries + 1) * policy.timeout_seconds + policy.max_retries * waits


def _longest_request_seconds(settings: Settings) -> float:
    """Every model asked in turn, each for as long as a call can take, and room for the
    store's own timeouts and retries."""
    return sum(_call_seconds(model.settings) for model in settings.models()) + 20


def _store_location(redis: RedisSettings, url: str) -> str:
    if redis.url == MEMORY_URL:
        return "the in-memory store"
    return f"{'' if redis.url else 'the embedded '}{redis_location(url)}"


def _store_kind(redis: RedisSettings) -> str:
    return "memory" if redis.url == MEMORY_URL else "redis"


def _limiter_kind(settings: Settings) -> str:
    return _store_kind(settings.redis) if settings.auth.rate_limit else "off"


def _provider_url(model: ModelSettings) -> str:
    if model.exact_url or model.provider == "huggingface":
        return model.api_url
    if model.provider == "anthropic":
        return messages_url(model.api_url)
    return chat_completions_url(model.api_url)


def _language_model(
    model: ModelSettings,
    transport: httpx.AsyncBaseTransport | None,
    on_retry: Callable[[], None],
) -> LanguageModel:
    if model.provider == "echo" or transport is None:
        return EchoModel(word_seconds=model.echo_word_seconds)
    url, policy, key = _provider_url(model), _retry_policy(model), model.api_key
    if model.provider == "anthropic":
        assert model.max_tokens is not None  # the config requires it
        return AnthropicModel(
            transport, url=url, api_key=key, model=model.model, max_tokens=model.max_tokens,
            temperature=model.temperature, policy=policy, on_retry=on_retry,
        )  # fmt: skip
    if model.provider == "huggingface":
        return HuggingFaceModel(
            transport, url=url, api_key=key, max_tokens=model.max_tokens,
            temperature=model.temperature, policy=policy, on_retry=on_retry,
        )  # fmt: skip
    return OpenAIChatModel(
        transport, url=url, api_key=key, model=model.model, max_tokens=model.max_tokens,
        temperature=model.temperature, policy=policy, on_retry=on_retry,
        max_tokens_parameter=model.max_tokens_parameter,
    )  # fmt: skip


async def _model_routes(
    settings: Settings,
    transport: Callable[[], Awaitable[httpx.AsyncBaseTransport]],
    metrics: PrometheusMetrics | None,
) -> list[ModelRoute]:
    """Every configured model in order; the HTTP client is opened only if one is remote."""
    models = settings.models()
    remote = any(model.settings.provider != "echo" for model in models)
    client = await transport() if remote else None
    return [
        ModelRoute(
            model.name,
            _language_model(model.settings, client, _retry_hook(metrics, model.name)),
            context_tokens=model.settings.context_tokens,
            max_tokens=model.settings.max_tokens,
            call_seconds=_call_seconds(model.settings),
        )
        for model in models
    ]


def _metrics(settings: Settings) -> PrometheusMetrics | None:
    if not settings.metrics.enabled:
        return None
    return PrometheusMetrics([model.name for model in settings.models()])


def _tracer_provider(settings: Settings) -> TracerProvider | None:
    tracing = settings.tracing
    if not tracing.otlp_endpoint:
        return None
    return otlp_tracer_provider(tracing.otlp_endpoint, tracing.service_name)


def _telemetry(metrics: PrometheusMetrics | None, tracer: TracerProvider | None) -> Telemetry:
    told: Telemetry = metrics or UNOBSERVED
    return told if tracer is None else TracedTelemetry(told, tracer)


def _store_observer(metrics: PrometheusMetrics | None) -> StoreObserver | None:
    return None if metrics is None else metrics.store_call


def _retry_hook(metrics: PrometheusMetrics | None, model: str) -> Callable[[], None]:
    return no_retry_hook if metrics is None else functools.partial(metrics.retried, model)


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)
    redis_settings = settings.provided.redis
    llm = settings.provided.llm
    window = settings.provided.auth.rate_limit

    redis_url = providers.Resource(_redis_url, redis_settings)
    tracer_provider = providers.Singleton(_tracer_provider, settings)
    redis_client = providers.Resource(_redis_client, redis_url, tracer_provider, redis_settings)
    provider_transport = providers.Resource(_provider_transport)
    metrics = providers.Singleton(_metrics, settings)
    telemetry = providers.Singleton(_telemetry, metrics, tracer_provider)
    store_observer = providers.Callable(_store_observer, metrics)

    store_kind = providers.Callable(_store_kind, redis_settings)
    store_location = providers.Callable(_store_location, redis_settings, redis_url)
    history = providers.Selector(
        store_kind,
        memory=providers.Singleton(
            MemoryHistory,
            max_messages=settings.provided.history.max_messages,
            ttl_seconds=redis_settings.session_ttl_seconds,
        ),
        redis=providers.Singleton(
            RedisHistory,
            redis_client,
            key_prefix=redis_settings.key_prefix,
            max_messages=settings.provided.history.max_messages,
            ttl_seconds=redis_settings.session_ttl_seconds,
            observe=store_observer,
            min_replicas_ack=redis_settings.min_replicas_ack,
        ),
    )
    reply_log = providers.Selector(
        store_kind,
        memory=providers.Singleton(
            MemoryReplyLog,
            keep_seconds=settings.provided.history.stream_keep_seconds,
            lease_seconds=LEASE_SECONDS,
        ),
        redis=providers.Singleton(
            RedisReplyLog,
            redis_client,
            key_prefix=redis_settings.key_prefix,
            keep_seconds=settings.provided.history.stream_keep_seconds,
            lease_seconds=LEASE_SECONDS,
            observe=store_observer,
        ),
    )
    job_lock = providers.Selector(
        store_kind,
        memory=providers.Singleton(MemoryJobLock),
        redis=providers.Singleton(
            RedisJobLock, redis_client, key_prefix=redis_settings.key_prefix, observe=store_observer
        ),
    )
    rate_limiter = providers.Selector(
        providers.Callable(_limiter_kind, settings),
        off=providers.Object(None),
        memory=providers.Singleton(
            MemoryRateLimiter, limit=window.limit, window_seconds=window.window_seconds
        ),
        redis=providers.Singleton(
            RedisRateLimiter,
            redis_client,
            key_prefix=redis_settings.key_prefix,
            limit=window.limit,
            window_seconds=window.window_seconds,
            observe=store_observer,
        ),
    )

    model_health = providers.Selector(
        store_kind,
        memory=providers.Singleton(
            MemoryModelHealth,
            cooldown_seconds=llm.cooldown_seconds,
            cooldown_failures=llm.cooldown_failures,
        ),
        redis=providers.Singleton(
            RedisModelHealth,
            redis_client,
            key_prefix=redis_settings.key_prefix,
            cooldown_seconds=llm.cooldown_seconds,
            cooldown_failures=llm.cooldown_failures,
            observe=store_observer,
        ),
    )
    model_routes = providers.Coroutine(
        _model_routes, settings, provider_transport.provider, metrics
    )
    models = providers.Singleton(
        ModelRouter,
        model_routes,
        model_health,
        system_prompt=llm.system_prompt,
        telemetry=telemetry,
    )

    leases = providers.Singleton(
        RequestLeases,
        history,
        in_flight_seconds=providers.Callable(_longest_request_seconds, settings),
        telemetry=telemetry,
    )
    send_message = providers.Singleton(
        SendMessage,
        history,
        models,
        max_message_chars=settings.provided.history.max_message_chars,
        leases=leases,
    )
    attach_reply = providers.Singleton(AttachReply, reply_log)
    stream_message = providers.Singleton(
        StreamMessage,
        history,
        models,
        reply_log,
        max_message_chars=settings.provided.history.max_message_chars,
        failure_status=providers.Object(status_of),
        attach=attach_reply,
        on_disconnect=llm.stream_on_disconnect,
        leases=leases,
        telemetry=telemetry,
    )
    answer_unstored = providers.Singleton(
        AnswerUnstored,
        history,
        models,
        max_message_chars=settings.provided.history.max_message_chars,
        telemetry=telemetry,
    )
    conversations = providers.Singleton(Conversations, history)
    stop_reply = providers.Singleton(StopReply, reply_log)
    show_history = providers.Singleton(ShowHistory, history)
    delete_history = providers.Singleton(DeleteHistory, history)
    cleanup = providers.Singleton(
        CleanupScheduler,
        providers.Singleton(
            PurgeHistories,
            history,
            job_lock,
            interval_seconds=settings.provided.cleanup.interval_seconds,
            scope=settings.provided.cleanup.scope,
        ),
        interval_seconds=settings.provided.cleanup.interval_seconds,
        metrics=metrics,
    )


async def _settle(value: Any) -> Any:
    """dependency-injector returns an awaitable only where an async resource is involved."""
    return await value if inspect.isawaitable(value) else value


async def close_resources(container: Container) -> None:
    await _settle(container.shutdown_resources())


@dataclass(frozen=True, slots=True)
class Services:
    """What the HTTP edge uses, resolved once at start-up rather than per request."""

    send_message: SendMessage
    stream_message: StreamMessage
    answer_unstored: AnswerUnstored
    conversations: Conversations
    attach_reply: AttachReply
    stop_reply: StopReply
    show_history: ShowHistory
    delete_history: DeleteHistory
    history: ChatHistory
    models: ModelRouter
    store_location: str  # where the history store is, for logs and /ready (no password)
    job_lock: JobLock
    rate_limiter: RateLimiter | None
    cleanup: CleanupScheduler
    metrics: PrometheusMetrics | None  # None: [metrics] enabled = false

    @classmethod
    async def resolve(cls, container: Container) -> "Services":
        """Build the services, opening only the resources they use (no Redis for memory://,
        no HTTP client for the echo model)."""

        async def get(provider: Any) -> Any:
            return await _settle(provider())

        return cls(
            send_message=await get(container.send_message),
            stream_message=await get(container.stream_message),
            answer_unstored=await get(container.answer_unstored),
            conversations=await get(container.conversations),
            attach_reply=await get(container.attach_reply),
            stop_reply=await get(container.stop_reply),
            show_history=await get(container.show_history),
            delete_history=await get(container.delete_history),
            history=await get(container.history),
            models=await get(container.models),
            store_location=await get(container.store_location),
            job_lock=await get(container.job_lock),
            rate_limiter=await get(container.rate_limiter),
            cleanup=await get(container.cleanup),
            metrics=await get(container.metrics),
        )
