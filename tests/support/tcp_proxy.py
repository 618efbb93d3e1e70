"""A TCP proxy that puts network faults between a client and a real server (a redis-server).

Every byte goes through it, both ways, and the test decides what happens to it:

- `pass_through()`: forwarded as it comes (the start state);
- `delay(seconds)`: each chunk is held `seconds` before it goes on, and a chunk never leaves
  sooner than `seconds` after the one before it on that connection and direction (a burst
  read as several chunks of `chunk_size` bytes trickles out, so a long reply arrives in parts);
- `stall()`: every byte is held, on every connection, until `release()` (or `pass_through()`);
- `reset_all()`: every open connection is torn down with a TCP reset on both sides; the
  connections opened afterwards work as before.

Held bytes are delivered even when their sender has hung up meanwhile, then the hang-up
itself, as a real network does: a command its client gave up on can still run on the server.

`TcpProxy` runs on the caller's event loop (integration tests); `running_proxy` runs one on a
loop in a thread of its own, for a service in a subprocess (e2e tests), as `running_stub` does.
"""

import asyncio
import contextlib
import dataclasses
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

_HANG_UP = b""  # queued after a side's last chunk: pass its hang-up on


@dataclass
class ProxyStats:
    connections: int = 0  # accepted so far
    resets: int = 0  # connections torn down by reset_all()
    resets_in_flight: int = 0  # ... of which had bytes held in the proxy at that moment
    chunks: int = 0  # forwarded, both ways
    # Chunks that reached a side only after it had hung up (read by nobody): e.g. the reply
    # to a command whose client cancelled it and closed the connection.
    chunks_after_hang_up: int = 0


class _Direction:
    """One way of one connection: bytes read from `source`, held, written to `sink`."""

    def __init__(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        self.source = source
        self.sink = sink
        self.queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self.in_flight = 0  # chunks read and not yet written
        self.source_hung_up = False


class _Link:
    """A client's connection and the proxy's own connection to the server on its behalf."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.writers = (client, upstream)
        self.tasks: list[asyncio.Task[None]] = []
        self.directions: list[_Direction] = []

    def held(self) -> bool:
        return any(d.in_flight for d in self.directions)

    def reset(self) -> None:
        for writer in self.writers:
            _reset(writer)
        for task in self.tasks:
            task.cancel()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the peer gets an RST, not an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    def __init__(
        self, upstream_port: int, upstream_host: str = "127.0.0.1", *, chunk_size: int = 65536
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.chunk_size = chunk_size
        self.stats = ProxyStats()
        self.port = 0
        self._delay = 0.0
        self._stalled = False
        self._changed = asyncio.Event()  # set, and replaced, whenever the fault changes
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._accepting: set[asyncio.Task[None]] = set()

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for link in list(self._links):
            link.reset()
        # Each connection's task ends once its link is reset; cancelling it instead would have
        # asyncio log the cancellation as an error of the server's callback. Only one still
        # connecting upstream has no link yet: that one is cancelled.
        if self._accepting:
            _, connecting = await asyncio.wait(list(self._accepting), timeout=1)
            for task in connecting:
                task.cancel()
        await self._server.wait_closed()
        self._server = None

    # --- the faults: call these on the proxy's own event loop ---------------------------------

    def pass_through(self) -> None:
        self._set(delay=0.0, stalled=False)

    def delay(self, seconds: float) -> None:
        self._set(delay=seconds, stalled=False)

    def stall(self) -> None:
        self._set(delay=self._delay, stalled=True)

    def release(self) -> None:
        """End a stall; the held bytes go on (under the delay, if one is set)."""
        self._set(delay=self._delay, stalled=False)

    def reset_all(self) -> int:
        """Reset every open connection; returns how many there were."""
        links = list(self._links)
        for link in links:
            self.stats.resets_in_flight += link.held()
            link.reset()
            self._links.discard(link)
        self.stats.resets += len(links)
        return len(links)

    def _set(self, *, delay: float, stalled: bool) -> None:
        self._delay, self._stalled = delay, stalled
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # --- forwarding --------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._accepting.add(task)
        self.stats.connections += 1
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                _reset(writer)  # the server is down: so is the route through the proxy
                return
            link = _Link(writer, up_writer)
            link.directions = [_Direction(reader, up_writer), _Direction(up_reader, writer)]
            self._links.add(link)
            toward_client, toward_server = link.directions[1], link.directions[0]
            for direction, other in (
                (toward_server, toward_client),
                (toward_client, toward_server),
            ):
                link.tasks.append(asyncio.create_task(self._read(direction)))
                link.tasks.append(asyncio.create_task(self._forward(direction, other)))
            await asyncio.gather(*link.tasks, return_exceptions=True)
            self._links.discard(link)
            for end in link.writers:
                end.close()
        finally:
            self._accepting.discard(task)

    async def _read(self, direction: _Direction) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await direction.source.read(self.chunk_size)
            except OSError:
                data = _HANG_UP  # a reset by the peer ends its side like a hang-up
            direction.in_flight += bool(data)
            direction.queue.put_nowait((loop.time(), data))
            if not data:
                direction.source_hung_up = True
                return

    async def _forward(self, direction: _Direction, reverse: _Direction) -> None:
        """Write `direction`'s chunks once the fault lets them go. `reverse` is the other way:
        its source is the side this one writes to, so it tells whether anyone still reads."""
        ready_at = 0.0  # when the previous chunk left, for the spacing under a delay
        while True:
            arrived, data = await direction.queue.get()
            ready_at = await self._hold(max(arrived, ready_at))
            if not data:
                with contextlib.suppress(OSError):
                    if direction.sink.can_write_eof():
                        direction.sink.write_eof()
                return
            self.stats.chunks += 1
            self.stats.chunks_after_hang_up += reverse.source_hung_up
            try:
                if not direction.sink.is_closing():  # else that side is gone: drain the queue
                    direction.sink.write(data)
                    await direction.sink.drain()
            except OSError:
                pass  # that side is gone; keep draining the queue to its hang-up
            finally:
                direction.in_flight -= 1

    async def _hold(self, since: float) -> float:
        """Wait until no stall holds a chunk and `delay` has passed since `since`; returns when
        the chunk may go. A change of fault wakes every held chunk to look again."""
        loop = asyncio.get_running_loop()
        while True:
            changed = self._changed
            if self._stalled:
                await changed.wait()
                continue
            wait = since + self._delay - loop.time()
            if wait <= 0:
                return loop.time()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await changed.wait()


class ProxyThread:
    """A TcpProxy on an event loop in another thread, driven from the test's thread."""

    def __init__(self, proxy: TcpProxy, loop: asyncio.AbstractEventLoop) -> None:
        self._proxy = proxy
        self._loop = loop

    @property
    def port(self) -> int:
        return self._proxy.port

    @property
    def redis_url(self) -> str:
        return self._proxy.redis_url

    def _on_loop(self, call: Callable[[], T]) -> T:
        async def run() -> T:
            return call()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    def pass_through(self) -> None:
        self._on_loop(self._proxy.pass_through)

    def delay(self, seconds: float) -> None:
        self._on_loop(lambda: self._proxy.delay(seconds))

    def stall(self) -> None:
        self._on_loop(self._proxy.stall)

    def release(self) -> None:
        self._on_loop(self._proxy.release)

    def reset_all(self) -> int:
        return self._on_loop(self._proxy.reset_all)

    def stats(self) -> ProxyStats:
        return self._on_loop(lambda: dataclasses.replace(self._proxy.stats))


@contextlib.contextmanager
def running_proxy(upstream_port: int, *, chunk_size: int = 65536) -> Iterator[ProxyThread]:
    """A proxy to 127.0.0.1:upstream_port serving from its own thread and event loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="tcp-proxy", daemon=True)
    thread.start()
    try:
        proxy = asyncio.run_coroutine_threadsafe(_started(upstream_port, chunk_size), loop).result(
            timeout=10
        )
        try:
            yield ProxyThread(proxy, loop)
        finally:
            asyncio.run_coroutine_threadsafe(proxy.stop(), loop).result(timeout=10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


async def _started(upstream_port: int, chunk_size: int) -> TcpProxy:
    proxy = TcpProxy(upstream_port, chunk_size=chunk_size)  # its Events belong to this loop
    await proxy.start()
    return proxy
