"""The service as the benchmark runs it: production's app plus two routes to compare with.

`uvicorn --factory tests.performance.app:create_app` builds Container(settings) and
entrypoints.asgi.create_app(settings, container) exactly as production does (settings from
CHAT_* variables), then registers, on this app only:

- POST /bench/noop: answers a constant; what the framework and uvicorn cost by themselves.
- POST /bench/proxy: the same body parsing and checks as POST /chat/, then the same provider
  call through the container's own language model (so the same pooled httpx client), with a
  conversation as long as a full stored history (BENCH_PROXY_HISTORY messages, default
  [history] max_messages, texts as the benchmark seeds them), but no Redis at all.

/chat/ over /bench/proxy is therefore what the history store costs; /chat/ over /bench/noop
what everything but the framework costs.
"""

import inspect
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from litestar import Litestar, post
from litestar.params import JSONBody

from application.ports import LanguageModel
from domain.conversation import build_conversation
from domain.idempotency import Reply
from domain.message import Message, check_user_message
from domain.session import session_id_or_new
from entrypoints.asgi import create_app as create_service_app
from entrypoints.config import ConfigError, load_settings
from entrypoints.container import Container
from entrypoints.http.controllers import ChatRequest, Status
from entrypoints.logs import configure_logging
from tests.performance.workload import ASSISTANT_TEXT, USER_TEXT

PROXY_HISTORY_ENV = "BENCH_PROXY_HISTORY"


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
    return app
