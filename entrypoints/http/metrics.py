"""GET /metrics, and the HTTP metrics of Litestar's Prometheus plugin.

Not the plugin's PrometheusController: /metrics may need its own token, never a chat one,
and a scrape first forgets the gauges of workers that died (adapters.prometheus_metrics).
"""

import hmac
from typing import Any

from litestar import Request, Response, get
from litestar.exceptions import NotAuthorizedException
from litestar.handlers import HTTPRouteHandler
from litestar.middleware import DefineMiddleware
from litestar.plugins.prometheus import PrometheusConfig

from adapters.prometheus_metrics import MEDIA_TYPE, exposition

METRICS_PATH = "/metrics"


def http_metrics() -> DefineMiddleware:
    """chat_requests_total, chat_request_duration_seconds, chat_requests_in_progress, by
    method, route template (never the raw path: one series per session id would explode)
    and status; scrapes are not counted."""
    config = PrometheusConfig(app_name="chat", prefix="chat", group_path=True, exclude=METRICS_PATH)
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
