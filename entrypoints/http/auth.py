"""Bearer tokens and the rate limit, checked before the body is read.

An ASGI middleware on the chat routes, so a caller without a valid token learns nothing
(401), whatever it sent. Not a Litestar guard: Litestar copies the route handler for every
guard call, a cost on every request that the benchmark shows (scripts/bench, S3).
"""

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, TooManyRequestsException
from litestar.types import ASGIApp, Receive, Scope, Send

from domain.session import PUBLIC_NAMESPACE, namespace_for


class AuthAndRateLimit:
    """Sets `request.state.namespace`: whose sessions this request may touch."""

    def __init__(self, app: ASGIApp, tokens: tuple[str, ...]) -> None:
        self._app = app
        self._namespaces = tuple(namespace_for(t) for t in tokens)

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
        namespace = connection.state.namespace = self._namespace(connection)
        limiter = connection.app.state.services.rate_limiter
        if limiter is not None:
            identity = namespace
            if namespace == PUBLIC_NAMESPACE:  # no token: count per client address
                identity = f"ip:{connection.client.host if connection.client else '-'}"
            retry_after = await limiter.hit(identity)
            if retry_after is not None:
                raise TooManyRequestsException(
                    detail=f"rate limit exceeded; retry in {retry_after:.0f} s",
                    headers={"Retry-After": f"{retry_after:.0f}"},
                )
        await self._app(scope, receive, send)
