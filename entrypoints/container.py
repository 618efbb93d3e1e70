"""The composition root: the only place where settings choose the real adapters."""

import inspect
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from dependency_injector import containers, providers
from redis.asyncio import Redis

from adapters.cleanup_scheduler import CleanupScheduler
from adapters.embedded_redis import EmbeddedRedis
from adapters.llm.aiohttp_transport import AiohttpTransport
from adapters.llm.anthropic import AnthropicModel, messages_url
from adapters.llm.echo import EchoModel
from adapters.llm.http_call import RetryPolicy
from adapters.llm.huggingface import HuggingFaceModel
from adapters.llm.openai import OpenAIChatModel, chat_completions_url
from adapters.memory_coordination import MemoryJobLock, MemoryRateLimiter
from adapters.memory_history import MemoryHistory
from adapters.memory_reply_log import MemoryReplyLog
from adapters.redis_client import connect
from adapters.redis_coordination import RedisJobLock, RedisRateLimiter
from adapters.redis_history import RedisHistory
from adapters.redis_reply_log import RedisReplyLog
from application.attach_reply import AttachReply
from application.delete_history import DeleteHistory
from application.ports import ChatHistory, JobLock, RateLimiter
from application.purge_histories import PurgeHistories
from application.reply_publisher import LEASE_SECONDS
from application.request_leases import RequestLeases
from application.send_message import SendMessage
from application.show_history import ShowHistory
from application.stop_reply import StopReply
from application.stream_message import StreamMessage
from entrypoints.config import MEMORY_URL, LlmSettings, RedisSettings, Settings, redis_location
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


async def _redis_client(url: str) -> AsyncIterator[Redis]:
    client = connect(url)
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


def _longest_request_seconds(policy: RetryPolicy) -> float:
    """How long one request can take: every provider attempt at its deadline, the longest
    wait between them, and room for the store's own timeouts and retries."""
    waits = max(policy.retry_after_cap, policy.backoff_cap)
    return (policy.max_retries + 1) * policy.timeout_seconds + policy.max_retries * waits + 20


def _store_location(redis: RedisSettings, url: str) -> str:
    if redis.url == MEMORY_URL:
        return "the in-memory store"
    return f"{'' if redis.url else 'the embedded '}{redis_location(url)}"


def _store_kind(redis: RedisSettings) -> str:
    return "memory" if redis.url == MEMORY_URL else "redis"


def _limiter_kind(settings: Settings) -> str:
    return _store_kind(settings.redis) if settings.auth.rate_limit else "off"


def _provider_name(llm: LlmSettings) -> str:
    # Not `settings.provided.llm.provider`: AttributeGetter has a `.provider` of its own.
    return llm.provider


def _provider_url(llm: LlmSettings) -> str:
    if llm.exact_url or llm.provider == "huggingface":
        return llm.api_url
    return (
        messages_url(llm.api_url)
        if llm.provider == "anthropic"
        else chat_completions_url(llm.api_url)
    )


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)
    redis_settings = settings.provided.redis
    llm = settings.provided.llm
    window = settings.provided.auth.rate_limit

    redis_url = providers.Resource(_redis_url, redis_settings)
    redis_client = providers.Resource(_redis_client, redis_url)
    provider_transport = providers.Resource(_provider_transport)

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
        ),
    )
    job_lock = providers.Selector(
        store_kind,
        memory=providers.Singleton(MemoryJobLock),
        redis=providers.Singleton(RedisJobLock, redis_client, key_prefix=redis_settings.key_prefix),
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
        ),
    )

    retry_policy = providers.Singleton(
        RetryPolicy, max_retries=llm.max_retries, timeout_seconds=llm.timeout_seconds
    )
    provider_url = providers.Callable(_provider_url, llm)
    # What every remote provider's adapter takes, besides the shared HTTP client.
    remote = dict(  # noqa: RUF012
        url=provider_url,
        api_key=llm.api_key,
        max_tokens=llm.max_tokens,
        temperature=llm.temperature,
        policy=retry_policy,
    )
    language_model = providers.Selector(
        providers.Callable(_provider_name, llm),
        echo=providers.Singleton(EchoModel, word_seconds=llm.echo_word_seconds),
        openai=providers.Singleton(
            OpenAIChatModel,
            provider_transport,
            model=llm.model,
            max_tokens_parameter=llm.max_tokens_parameter,
            **remote,
        ),
        anthropic=providers.Singleton(
            AnthropicModel, provider_transport, model=llm.model, **remote
        ),
        huggingface=providers.Singleton(HuggingFaceModel, provider_transport, **remote),
    )

    leases = providers.Singleton(
        RequestLeases,
        history,
        in_flight_seconds=providers.Callable(_longest_request_seconds, retry_policy),
    )
    send_message = providers.Singleton(
        SendMessage,
        history,
        language_model,
        max_message_chars=settings.provided.history.max_message_chars,
        system_prompt=llm.system_prompt,
        leases=leases,
    )
    attach_reply = providers.Singleton(AttachReply, reply_log)
    stream_message = providers.Singleton(
        StreamMessage,
        history,
        language_model,
        reply_log,
        max_message_chars=settings.provided.history.max_message_chars,
        failure_status=providers.Object(status_of),
        attach=attach_reply,
        system_prompt=llm.system_prompt,
        on_disconnect=llm.stream_on_disconnect,
        leases=leases,
    )
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
    attach_reply: AttachReply
    stop_reply: StopReply
    show_history: ShowHistory
    delete_history: DeleteHistory
    history: ChatHistory
    store_location: str  # where the history store is, for logs and /ready (no password)
    job_lock: JobLock
    rate_limiter: RateLimiter | None
    cleanup: CleanupScheduler

    @classmethod
    async def resolve(cls, container: Container) -> "Services":
        """Build the services, opening only the resources they use (no Redis for memory://,
        no HTTP client for the echo model)."""

        async def get(provider: Any) -> Any:
            return await _settle(provider())

        return cls(
            send_message=await get(container.send_message),
            stream_message=await get(container.stream_message),
            attach_reply=await get(container.attach_reply),
            stop_reply=await get(container.stop_reply),
            show_history=await get(container.show_history),
            delete_history=await get(container.delete_history),
            history=await get(container.history),
            store_location=await get(container.store_location),
            job_lock=await get(container.job_lock),
            rate_limiter=await get(container.rate_limiter),
            cleanup=await get(container.cleanup),
        )
