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
        handler = asyncio.current_task()
        assert handler is not None
        responding = False
        cancelled_by_us = False
        watcher: asyncio.Task[None] | None = None

        async def watch() -> None:
            nonlocal cancelled_by_us
            # Returns at disconnect, or once the response is complete (uvicorn then also
            # reports a disconnect; `responding` tells the two apart).
            message = await receive()
            if message["type"] == "http.disconnect" and not responding:
                cancelled_by_us = True
                handler.cancel()

        async def receive_body() -> ReceiveMessage:
            nonlocal watcher
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                watcher = watcher or asyncio.create_task(watch())
            return message

        async def send_tracked(message: Message) -> None:
            nonlocal responding
            responding = True
            await send(message)

        try:
            await app(scope, receive_body, send_tracked)
        except asyncio.CancelledError:
            if not cancelled_by_us:
                raise
            handler.uncancel()  # the client is gone: nothing to answer, nothing to re-raise
            log.info("%s %s: the client hung up; request cancelled", scope["method"], scope["path"])
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    return middleware
