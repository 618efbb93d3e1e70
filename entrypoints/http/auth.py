"""Bearer tokens and the rate limit, checked before the body is read.

A Litestar guard rather than a dependency: guards run before the request body is parsed,
so a caller without a valid token learns nothing (401), whatever it sent.
"""

import hashlib
import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, TooManyRequestsException
from litestar.handlers.base import BaseRouteHandler

from domain.session import namespace_for


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class BearerGuard:
    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._digests = tuple(_digest(t) for t in tokens)

    def _authenticate(self, connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
        """The caller's token, or None when auth is off; raises 401 otherwise."""
        if not self._digests:
            return None
        scheme, _, token = connection.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            presented = _digest(token)
            # Fixed-length digests, every configured token compared: constant time.
            matched = False
            for known in self._digests:
                matched |= hmac.compare_digest(presented, known)
            if matched:
                return token
        raise NotAuthorizedException(
            detail="a valid bearer token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def __call__(
        self, connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
    ) -> None:
        token = self._authenticate(connection)
        namespace = namespace_for(token)
        connection.state.namespace = namespace
        limiter = connection.app.state.services.rate_limiter
        if limiter is None:
            return
        identity = (
            namespace if token else f"ip:{connection.client.host if connection.client else '-'}"
        )
        retry_after = await limiter.hit(identity)
        if retry_after is not None:
            raise TooManyRequestsException(
                detail=f"rate limit exceeded; retry in {retry_after:.0f} s",
                headers={"Retry-After": f"{retry_after:.0f}"},
            )
