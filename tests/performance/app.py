"""The service as the benchmark runs it: production's app plus routes to compare with.

`uvicorn --factory tests.performance.app:create_app` builds Container(settings) and
entrypoints.asgi.create_app(settings, container) exactly as production does (settings from
CHAT_* variables), then adds, on this app only:

- POST /bench/bare: the same job as POST /chat/ written bare, the main reference. A Litestar
  app of its own with this one route, reached before the service's middleware (so no auth,
  metrics or request log): decode {session_id, message}, one LRANGE of the history key the
  service uses (in the namespace of the first [auth] token, the bench's), the OpenAI request
  posted with a raw aiohttp.ClientSession, one MULTI (RPUSH question and answer as the
  service encodes them, LTRIM, EXPIRE). No idempotency, no retries.
- POST /bench/noop: answers a constant; what the framework and uvicorn cost by themselves.
- POST /bench/proxy: the same body parsing and checks as POST /chat/, then the same provider
  call through the container's own language model (so the same pooled httpx client), with a
  conversation as long as a full stored history (BENCH_PROXY_HISTORY messages, default
  [history] max_messages, texts as the benchmark seeds them), but no Redis at all.

/chat/ over /bench/bare is what the service's layers cost on the same work; /chat/ over
/bench/proxy what the history store costs; /chat/ over /bench/noop what everything but the
framework costs.
"""

import inspect
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import msgspec
from litestar import Litestar, Request, Response, post
from litestar.params import JSONBody
from litestar.types import ASGIApp, Receive, Scope, Send
from redis.asyncio import Redis

from adapters.redis_history import history_key
from application.ports import LanguageModel
from domain.conversation import build_conversation
from domain.idempotency import Reply
from domain.message import Message, check_user_message
from domain.session import SessionKey, namespace_for, session_id_or_new
from entrypoints.asgi import create_app as create_service_app
from entrypoints.config import ConfigError, Settings, load_settings
from entrypoints.container import Container
from entrypoints.http.controllers import ChatRequest, Status
from entrypoints.logs import configure_logging
from tests.performance.workload import ASSISTANT_TEXT, USER_TEXT

PROXY_HISTORY_ENV = "BENCH_PROXY_HISTORY"
BARE_PATH = "/bench/bare"


class BareRequest(msgspec.Struct):
    session_id: str
    message: str


class StoredMessage(msgspec.Struct, array_like=True):
    """A history entry as adapters/redis_history.py stores it: [role, content, created_at],
    and the model for a reply that names it."""

    role: str
    content: str
    created_at: datetime
    model: str | None = None


class Turn(msgspec.Struct):
    role: str
    content: str


class CompletionRequest(msgspec.Struct, omit_defaults=True):
    model: str
    messages: list[Turn]
    max_tokens: int | None = None
    temperature: float | None = None


class Choice(msgspec.Struct):
    message: Turn


class Completion(msgspec.Struct):
    choices: list[Choice]


class BareReply(msgspec.Struct):
    session_id: str
    reply: str


_decode_request = msgspec.json.Decoder(BareRequest).decode
_decode_stored = msgspec.msgpack.Decoder(StoredMessage).decode
_decode_completion = msgspec.json.Decoder(Completion).decode
_encode_json = msgspec.json.Encoder().encode
_encode_msgpack = msgspec.msgpack.Encoder().encode


def proxy_history(length: int) -> list[Message]:
    """A history like the seeded ones: user and assistant turns alternating, oldest first."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    return [
        Message(
            "user" if i % 2 == 0 else "assistant",
            USER_TEXT if i % 2 == 0 else ASSISTANT_TEXT,
            start + timedelta(microseconds=i),
        )
        for i in range(length)
    ]


def bare_app(settings: Settings, namespace: str) -> Litestar:
    """POST /bench/bare alone; its clients open on first use and close on shutdown."""
    llm, prefix = settings.llm, settings.redis.key_prefix
    max_messages, ttl = settings.history.max_messages, settings.redis.session_ttl_seconds
    url = llm.api_url if llm.exact_url else f"{llm.api_url.rstrip('/')}/chat/completions"
    headers = {"Content-Type": "application/json"}
    if llm.api_key:
        headers["Authorization"] = f"Bearer {llm.api_key}"
    system = [Turn("system", llm.system_prompt)] if llm.system_prompt else []
    clients: dict[str, Any] = {}

    def http() -> aiohttp.ClientSession:
        if "http" not in clients:  # inside the loop, on first use
            connector = aiohttp.TCPConnector(limit=1000)
            clients["http"] = aiohttp.ClientSession(connector=connector)
        session: aiohttp.ClientSession = clients["http"]
        return session

    def redis() -> Redis:
        if "redis" not in clients:
            clients["redis"] = Redis.from_url(settings.redis.url)
        client: Redis = clients["redis"]
        return client

    @post(BARE_PATH, status_code=200, include_in_schema=False)
    async def bare(request: Request[Any, Any, Any]) -> Response[bytes]:
        data = _decode_request(await request.body())
        key = history_key(prefix, SessionKey(namespace, data.session_id))
        stored: list[bytes] = await redis().lrange(key, -max_messages, -1)  # type: ignore[assignment]
        history = [_decode_stored(entry) for entry in stored]
        body = CompletionRequest(
            llm.model,
            [*system, *(Turn(m.role, m.content) for m in history), Turn("user", data.message)],
            llm.max_tokens,
            llm.temperature,
        )
        asked = datetime.now(UTC)
        async with http().post(url, data=_encode_json(body), headers=headers) as response:
            response.raise_for_status()
            answer = _decode_completion(await response.read()).choices[0].message.content
        question = _encode_msgpack(("user", data.message, asked))
        reply = _encode_msgpack(("assistant", answer, datetime.now(UTC), llm.name))
        async with redis().pipeline(transaction=True) as pipe:
            pipe.rpush(key, question, reply)
            pipe.ltrim(key, -max_messages, -1)
            if ttl:
                pipe.expire(key, ttl)
            await pipe.execute()
        return Response(
            _encode_json(BareReply(data.session_id, answer)), media_type="application/json"
        )

    async def close() -> None:
        if "http" in clients:
            await clients.pop("http").close()
        if "redis" in clients:
            await clients.pop("redis").aclose()

    return Litestar(route_handlers=[bare], on_shutdown=[close], logging_config=None)


def route_bare(app: Litestar, bare: Litestar) -> None:
    """Requests for /bench/bare go to `bare` before any of the service's middleware; its
    shutdown hook runs with the service's."""
    service: ASGIApp = app.asgi_handler

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == BARE_PATH:
            await bare(scope, receive, send)
        else:
            await service(scope, receive, send)

    app.asgi_handler = handler
    app.on_shutdown.extend(bare.on_shutdown)


def create_app() -> Litestar:
    configure_logging()
    try:
        settings = load_settings()
    except ConfigError as error:
        raise SystemExit(f"config error: {error}") from None
    container = Container(settings=settings)
    app = create_service_app(settings, container)

    history = proxy_history(int(os.environ.get(PROXY_HISTORY_ENV, settings.history.max_messages)))
    resolved: list[LanguageModel] = []

    async def language_model() -> LanguageModel:
        """The primary model's adapter, on the process's shared HTTP client; dependency-
        injector may hand the routes back wrapped in an awaitable."""
        if not resolved:
            routes: Any = container.model_routes()
            routes = await routes if inspect.isawaitable(routes) else routes
            resolved.append(routes[0].model)
        return resolved[0]

    @post("/bench/noop", status_code=200, include_in_schema=False)
    async def noop() -> Status:
        return Status("ok")

    @post("/bench/proxy", status_code=200, include_in_schema=False)
    async def proxy(data: JSONBody[ChatRequest]) -> Reply:
        session_id = session_id_or_new(data.session_id)
        text = check_user_message(data.message, settings.history.max_message_chars)
        question = Message("user", text, datetime.now(UTC))
        conversation = build_conversation(settings.llm.system_prompt, history, question)
        model = await language_model()
        answer = await model.reply(conversation)
        return Reply(session_id, answer.text, answer.usage)

    app.register(noop)
    app.register(proxy)
    # The sessions of the first configured token (the bench's one), as /chat/ would see them.
    namespace = namespace_for(settings.auth.tokens[0] if settings.auth.tokens else None)
    route_bare(app, bare_app(settings, namespace))
    return app
