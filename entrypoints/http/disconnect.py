"""Cancel a request's handler when its client hangs up before the answer is sent.

Neither uvicorn nor Litestar does this for ordinary (non-streaming) responses: a client
that gives up would otherwise keep a provider call and its pooled connection busy until
the model answered, and then have the exchange stored for nobody. Cancelling leaves the
history as it was, since the exchange is only written after the model answered.
"""

import asyncio
import contextlib
import logging

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

log = logging.getLogger("chat.http")


class _Watch:
    """One request's watch on its client. `responding`: the answer has begun, so a later
    disconnect is uvicorn reporting the end of the exchange, not the client giving up."""

    def __init__(self, receive: Receive, send: Send) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self.handler = handler
        self._receive = receive
        self._send = send
        self.responding = False
        self.cancelled_the_handler = False
        self._watcher: asyncio.Task[None] | None = None

    async def receive(self) -> ReceiveMessage:
        message = await self._receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            self._watcher = self._watcher or asyncio.create_task(self._watch())
        return message

    async def send(self, message: Message) -> None:
        self.responding = True
        await self._send(message)

    async def _watch(self) -> None:
        # Returns at disconnect, or once the response is complete.
        message = await self._receive()
        if message["type"] == "http.disconnect" and not self.responding:
            self.cancelled_the_handler = True
            self.handler.cancel()

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher


def cancel_on_disconnect(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: once the request body has been read, watch for `http.disconnect`.

    Only after the body: the watcher's own receive() must not steal body chunks from the
    app. Handlers that never read a body (GET, DELETE) are short Redis calls and are left
    to finish.
    """

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        watch = _Watch(receive, send)
        try:
            await app(scope, watch.receive, watch.send)
        except asyncio.CancelledError:
            if not watch.cancelled_the_handler:
                raise
            watch.handler.uncancel()  # the client is gone: nothing to answer or re-raise
            log.info("%s %s: the client hung up; request cancelled", scope["method"], scope["path"])
        finally:
            await watch.close()

    return middleware
