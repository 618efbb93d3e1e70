"""httpx's API over aiohttp's connection pool.

The adapters speak httpx (Request, Response, a transport); this transport moves the bytes.
httpx's own transport spends most of each request in its connection pool (it scans every
pooled connection on each request start and end); docs/benchmark has the measurements.
aiohttp failures are reported as the httpx exceptions they mean, so the retry policy in
http_call sees the same faults either way.
"""

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import httpx


def _as_httpx(error: Exception) -> httpx.TransportError:
    if isinstance(error, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(error))
    if isinstance(error, TimeoutError | asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout(str(error) or "timed out")
    if isinstance(error, aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(str(error))
    return httpx.ReadError(str(error) or type(error).__name__)


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as error:
            raise _as_httpx(error) from error

    async def aclose(self) -> None:
        # A body not read to its end (refused as too large, abandoned at a deadline) closes
        # the connection; a whole one returns it to the pool.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session, opened on first use (inside the running loop, as aiohttp needs)
    and closed by aclose()."""

    def __init__(self, *, max_connections: int, keepalive_seconds: float = 30.0) -> None:
        self._max_connections = max_connections
        self._keepalive_seconds = keepalive_seconds
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, keepalive_timeout=self._keepalive_seconds
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # httpx decodes Content-Encoding itself
            trust_env=True,  # HTTP(S)_PROXY and NO_PROXY, as httpx's own client honoured them
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        timeouts = request.extensions.get("timeout", {})
        try:
            response = await session.request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=request.content or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=timeouts.get("connect"), sock_read=None
                ),
            )
        except (aiohttp.ClientError, TimeoutError) as error:
            raise _as_httpx(error) from error
        return httpx.Response(
            response.status,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers],
            stream=_Body(response),
            request=request,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
