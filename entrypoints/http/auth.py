"""Bearer tokens and the rate limit, checked before the body is read.

An ASGI middleware on the chat routes, so a caller without a valid token learns nothing
(401), whatever it sent. Not a Litestar guard: Litestar copies the route handler for every
guard call, a cost on every request that the benchmark shows (scripts/bench, S3).

It answers its refusals itself (401, 429, a 503 from the limiter's store), in the shape of
its routes' errors: raised, they would reach Litestar's exception handler only outside every
middleware, and the middleware around this one (the HTTP metrics) would never see them.
"""

import hmac
from collections.abc import Callable
from typing import Any

from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, TooManyRequestsException
from litestar.types import ASGIApp, Receive, Scope, Send

from domain.session import PUBLIC_NAMESPACE, namespace_for


class AuthAndRateLimit:
    """Sets `request.state.namespace`: whose sessions this request may touch."""

    def __init__(
        self,
        app: ASGIApp,
        tokens: tuple[str, ...],
        refusal: Callable[[Request[Any, Any, Any], Exception], Response[Any]],
    ) -> None:
        self._app = app
        self._namespaces = tuple(namespace_for(t) for t in tokens)
        self._refusal = refusal

    def _namespace(self, connection: ASGIConnection[Any, Any, Any, Any]) -> str:
        """The token's namespace (the public one when auth is off); 401 for a wrong token."""
        if not self._namespaces:
            return PUBLIC_NAMESPACE
        scheme, _, token = connection.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            presented = namespace_for(token)
            # Fixed-length digests, every configured one compared: constant time.
            matched = False
            for known in self._namespaces:
                matched |= hmac.compare_digest(presented, known)
            if matched:
                return presented
        raise NotAuthorizedException(
            detail="a valid bearer token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        connection: ASGIConnection[Any, Any, Any, Any] = ASGIConnection(scope)
        try:
            await self._admit(connection)
        except Exception as refused:
            request: Request[Any, Any, Any] = Request(scope, receive, send)
            response = self._refusal(request, refused)
            await response.to_asgi_response(app=None, request=request)(scope, receive, send)
            return
        await self._app(scope, receive, send)

    async def _admit(self, connection: ASGIConnection[Any, Any, Any, Any]) -> None:
        namespace = connection.state.namespace = self._namespace(connection)
        limiter = connection.app.state.services.rate_limiter
        if limiter is not None:
            identity = namespace
            if namespace == PUBLIC_NAMESPACE:  # no token: count per client address
                identity = f"ip:{connection.client.host if connection.client else '-'}"
            retry_after = await limiter.hit(identity)
            if retry_after is not None:
                if (metrics := connection.app.state.services.metrics) is not None:
                    metrics.rate_limited()
                raise TooManyRequestsException(
                    detail=f"rate limit exceeded; retry in {retry_after:.0f} s",
                    headers={"Retry-After": f"{retry_after:.0f}"},
                )
