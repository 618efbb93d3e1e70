"""The Litestar app. `uvicorn entrypoints.asgi:app` serves it on config.ini (or $CHAT_CONFIG).

`app` is built on first access, not at import: importing this module reads no config and
opens nothing, and a config mistake ends the process with one line instead of a traceback.
"""

import gc
import logging
import multiprocessing
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Router
from litestar.config.cors import CORSConfig
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from adapters.embedded_redis import service_root_pid
from adapters.prometheus_metrics import share_between_workers, worker_stopped
from application.errors import HistoryUnavailable
from application.ports import JobLock
from entrypoints.config import ConfigError, Settings, describe, load_settings
from entrypoints.container import Container, Services, close_resources
from entrypoints.http.auth import AuthAndRateLimit
from entrypoints.http.closed_structs import ClosedStructSchema
from entrypoints.http.controllers import ChatController, health, ready
from entrypoints.http.disconnect import cancel_on_disconnect
from entrypoints.http.docs import DOCS_PATH, docs_assets, docs_render_plugins
from entrypoints.http.errors import EXCEPTION_HANDLERS
from entrypoints.http.limits import MAX_BODY_BYTES
from entrypoints.http.metrics import http_metrics, metrics_route
from entrypoints.http.openai import openai_router
from entrypoints.http.openai.errors import also_under_prefix
from entrypoints.http.page import chat_page, page_assets
from entrypoints.http.request_log import REQUEST_ID_HEADER, RequestLog
from entrypoints.http.streams import StreamController
from entrypoints.http.traces import traced_requests
from entrypoints.logs import configure_logging

log = logging.getLogger("chat")

# How long replies still streaming at shutdown may take to finish (their clients may be gone).
_DRAIN_SECONDS = 30.0

# What a browser client on another origin may read besides the body and simple headers.
_EXPOSED = ["Retry-After", "WWW-Authenticate", REQUEST_ID_HEADER]


async def _store_answers(services: Services) -> bool:
    """One ping at start, so a wrong address shows in the log before the first 503 does."""
    try:
        await services.history.ping()
    except HistoryUnavailable:
        log.warning(
            "%s does not answer: requests will get 503 until it does", services.store_location
        )
        return False
    return True


async def _first_of_this_service(lock: JobLock) -> bool:
    """True in one worker of this service: notices meant for its operator are said once,
    not once per worker. A store that fails now says yes (better twice than never)."""
    service = f"{socket.gethostname()}:{service_root_pid()}"
    try:
        return await lock.claim(f"startup-notice:{service}", ttl_seconds=60)
    except HistoryUnavailable:
        return True


def create_app(settings: Settings, container: Container | None = None) -> Litestar:
    """Tests pass a container whose providers they have overridden."""
    container = container or Container(settings=settings)
    tracer = container.tracer_provider()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if multiprocessing.parent_process() is not None:
            # A worker: a closing terminal's SIGHUP reaches the whole process group, and its
            # manager stops the workers gracefully; dying at once would cut requests short.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        services = await Services.resolve(container)
        app.state.services = services
        if settings.cleanup.enabled:
            services.cleanup.start()
        # What startup built (the app, its routes and schemas, the clients) lives as long as
        # the process: out of the collector's sight, a full collection scans only what
        # requests made, not all of it again.
        gc.collect()
        gc.freeze()
        log.info("ready: %s", describe(settings, services.store_location))
        # A store that did not answer the ping is not asked again for the lock: the notice is
        # said (in every worker) rather than the start delayed by a second timeout.
        answers = await _store_answers(services)
        if not settings.auth.tokens and (
            not answers or await _first_of_this_service(services.job_lock)
        ):
            log.warning(
                "AUTH IS OFF: [auth] tokens is empty, so anyone who can reach this port can "
                "read and write every session. Set tokens in config.ini or CHAT_AUTH_TOKENS."
            )
        try:
            yield
        finally:
            gc.unfreeze()  # an app stopped in a process that goes on (tests) is collectable
            services.cleanup.shutdown()
            await services.stream_message.drain(_DRAIN_SECONDS)
            await services.models.close()
            await close_resources(container)
            worker_stopped()
            if tracer is not None:
                tracer.shutdown()  # sends the spans not yet sent

    security: dict[str, Any] = {}
    if settings.auth.tokens:
        security = {"security": [{"BearerToken": []}]}
    chat = Router(
        "/",
        route_handlers=[ChatController, StreamController],
        middleware=[
            DefineMiddleware(
                AuthAndRateLimit, tokens=settings.auth.tokens, refusal=EXCEPTION_HANDLERS[Exception]
            )
        ],
        **security,
    )
    metrics = settings.metrics.enabled
    app = Litestar(
        route_handlers=[
            chat,
            openai_router(settings.auth.tokens, security),
            health,
            ready,
            chat_page,
            page_assets(),
            docs_assets(),
            *([metrics_route(settings.metrics.token)] if metrics else []),
        ],
        lifespan=[lifespan],
        # configure_logging()'s plain handler, not Litestar's queue handler: its thread is
        # never drained in a worker ended by uvicorn's re-raised SIGTERM, losing last lines.
        logging_config=None,
        middleware=[cancel_on_disconnect, *([http_metrics()] if metrics else [])],
        exception_handlers=also_under_prefix(EXCEPTION_HANDLERS),
        plugins=[ClosedStructSchema(), *([traced_requests(tracer)] if tracer else [])],
        request_max_body_size=MAX_BODY_BYTES,
        cors_config=(
            CORSConfig(allow_origins=list(settings.server.cors_origins), expose_headers=_EXPOSED)
            if settings.server.cors_origins
            else None
        ),
        openapi_config=OpenAPIConfig(
            title="Chat service",
            version="0.1.0",
            description="Send a message in a session; the service keeps its history.",
            components=Components(
                security_schemes={"BearerToken": SecurityScheme(type="http", scheme="bearer")}
            ),
            path=DOCS_PATH,
            render_plugins=docs_render_plugins(),
        ),
    )
    # Around all that Litestar runs: an unknown path's 404 gets its line and id too.
    app.asgi_handler = RequestLog(app.asgi_handler)
    return app


def _app_from_environment() -> Litestar:
    configure_logging()
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log)
    if settings.metrics.enabled:
        share_between_workers()
    return create_app(settings)


_app: Litestar | None = None


def __getattr__(name: str) -> Litestar:
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        _app = _app_from_environment()
    return _app
