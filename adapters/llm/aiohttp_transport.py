"""httpx's API over aiohttp's connection pool.

The adapters speak httpx (Request, Response, a transport); this transport moves the bytes.
httpx's own transport spends most of each request in its connection pool (it scans every
pooled connection on each request start and end); docs/benchmark has the measurements.
aiohttp failures are reported as the httpx exceptions they mean, so the retry policy in
http_call sees the same faults either way.
"""

import asyncio
import urllib.request
from collections.abc import AsyncIterator

import aiohttp
import httpx

Origin = tuple[str, str, int | None]


def environment_proxy(url: httpx.URL) -> str | None:
    """The proxy HTTP_PROXY / HTTPS_PROXY name for `url`, unless NO_PROXY exempts its host."""
    if urllib.request.proxy_bypass(url.host):  # NO_PROXY (the system's rules on macOS)
        return None
    return urllib.request.getproxies_environment().get(url.scheme)


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
    and closed by aclose().

    The proxy the environment names (HTTP(S)_PROXY, NO_PROXY, as httpx's own client
    honoured them) is looked up once per origin, not by aiohttp's trust_env, which reads
    the environment and ~/.netrc in a thread on every request."""

    def __init__(self, *, max_connections: int, keepalive_seconds: float = 30.0) -> None:
        self._max_connections = max_connections
        self._keepalive_seconds = keepalive_seconds
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[Origin, str | None] = {}
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}

    def _proxy(self, url: httpx.URL) -> str | None:
        origin = (url.scheme, url.host, url.port)
        if origin not in self._proxies:
            self._proxies[origin] = environment_proxy(url)
        return self._proxies[origin]

    def _timeout(self, connect: float | None) -> aiohttp.ClientTimeout:
        """One per connect timeout, not per request: the deadlines that matter are the
        caller's own (asyncio), around the whole attempt."""
        if connect not in self._timeouts:
            self._timeouts[connect] = aiohttp.ClientTimeout(
                total=None, sock_connect=connect, sock_read=None
            )
        return self._timeouts[connect]

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, keepalive_timeout=self._keepalive_seconds
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # httpx decodes Content-Encoding itself
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
                proxy=self._proxy(request.url),
                timeout=self._timeout(timeouts.get("connect")),
            )
        except (aiohttp.ClientError, TimeoutError) as error:
            raise _as_httpx(error) from error
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=_Body(response),
            request=request,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
