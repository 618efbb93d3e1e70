"""GET /metrics, and the HTTP metrics of Litestar's Prometheus plugin.

Not the plugin's PrometheusController: /metrics may need its own token, never a chat one,
and a scrape first forgets the gauges of workers that died (adapters.prometheus_metrics).
"""

import hmac
import time
from typing import Any

from litestar import Request, Response, get
from litestar.enums import ScopeType
from litestar.exceptions import NotAuthorizedException
from litestar.handlers import HTTPRouteHandler
from litestar.middleware import DefineMiddleware
from litestar.plugins.prometheus import PrometheusConfig, PrometheusMiddleware
from litestar.types import Message, Receive, Scope, Send

from adapters.prometheus_metrics import MEDIA_TYPE, exposition

METRICS_PATH = "/metrics"


class _SeriesOnce(PrometheusMiddleware):
    """The plugin's metrics, names and labels, with each label set's series looked up once:
    the plugin's own __call__ builds a Request and its URL, and looks up four labelled
    series, on every request (a third of what the app spent on a chat turn in-process)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._series: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}
        self._in_progress: dict[tuple[str, str], Any] = {}

    def _labels(self, method: str, path: str, status: int) -> dict[str, str | int | float]:
        app_name = self._config.app_name
        return {"method": method, "path": path, "status_code": status, "app_name": app_name}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"] if scope["type"] == ScopeType.HTTP else scope["type"]
        path: str = scope["path_template"]
        in_progress = self._in_progress.get((method, path))
        if in_progress is None:
            labels = self._labels(method, path, 200)  # the plugin's: status 200, always
            in_progress = self.requests_in_progress(labels).labels(*labels.values())
            self._in_progress[method, path] = in_progress
        status = 200
        started = ended = time.perf_counter()

        async def counted(message: Message) -> None:
            nonlocal status, ended
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                ended = time.perf_counter()
            await send(message)

        in_progress.inc()
        try:
            await self.app(scope, receive, counted)
        finally:
            in_progress.dec()
            count, seconds, errors = self._series_of(method, path, status)
            count.inc()
            seconds.observe(ended - started)
            if errors is not None:
                errors.inc()

    def _series_of(self, method: str, path: str, status: int) -> tuple[Any, Any, Any]:
        series = self._series.get((method, path, status))
        if series is None:
            labels = self._labels(method, path, status)
            values = labels.values()
            series = (
                self.request_count(labels).labels(*values),
                self.request_time(labels).labels(*values),
                self.requests_error_count(labels).labels(*values) if status >= 500 else None,
            )
            self._series[method, path, status] = series
        return series


def http_metrics() -> DefineMiddleware:
    """chat_requests_total, chat_request_duration_seconds, chat_requests_in_progress, by
    method, route template (never the raw path: one series per session id would explode)
    and status; scrapes are not counted."""
    config = PrometheusConfig(
        app_name="chat",
        prefix="chat",
        group_path=True,
        exclude=METRICS_PATH,
        middleware_class=_SeriesOnce,
    )
    return config.middleware


def metrics_route(token: str) -> HTTPRouteHandler:
    expected = token.encode()

    @get(METRICS_PATH, include_in_schema=False, sync_to_thread=False)
    def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
        """Every metric of this service, every worker's summed."""
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if token and not (
            scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), expected)
        ):
            raise NotAuthorizedException(
                detail="/metrics needs the [metrics] token (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return Response(exposition(), media_type=MEDIA_TYPE)

    return metrics
