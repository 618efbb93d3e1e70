"""OpenAI's API under /v1, over the service's sessions (README: "OpenAI's API")."""

from typing import Any

from litestar import Router
from litestar.middleware import DefineMiddleware

from entrypoints.http.auth import AuthAndRateLimit
from entrypoints.http.openai.conversations import ConversationsController
from entrypoints.http.openai.errors import OPENAI_EXCEPTION_HANDLERS, OPENAI_PREFIX, openai_error
from entrypoints.http.openai.models import list_models, show_model
from entrypoints.http.openai.responses import ResponsesController


def openai_router(tokens: tuple[str, ...], security: dict[str, Any]) -> Router:
    """The bearer token is the SDK's api_key; the rate limit counts these requests too."""
    return Router(
        OPENAI_PREFIX,
        route_handlers=[ConversationsController, ResponsesController, list_models, show_model],
        middleware=[DefineMiddleware(AuthAndRateLimit, tokens=tokens, refusal=openai_error)],
        exception_handlers=OPENAI_EXCEPTION_HANDLERS,
        **security,
    )
