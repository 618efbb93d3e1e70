"""The embedded redis-server's supervisor: `python -m adapters.embedded_redis_supervisor`,
started by EmbeddedRedis (adapters/embedded_redis.py), which says why it exists.

It starts redis-server (which gets SIGTERM if the supervisor dies: PR_SET_PDEATHSIG on
Linux), writes the state file once the server answers, then watches the owners listed there;
when none is left, or it is asked to stop, it stops the server under the data_dir's flock so
that a new owner never joins a server being stopped.
"""

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from adapters.embedded_redis import (
    POLL_SECONDS,
    SERVER_LOG,
    STATE_FILE,
    STOP_TIMEOUT_SECONDS,
    SUPERVISOR_START_TIMEOUT_SECONDS,
    Proc,
    SupervisorState,
    answers,
    locked,
)

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


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
        "--logfile", str(data_dir / SERVER_LOG),
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
        server.wait(STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        log.error("redis-server did not stop in %ss; killing it", STOP_TIMEOUT_SECONDS)
        server.kill()
        server.wait()


def _clear(data_dir: Path, socket_path: Path) -> None:
    (data_dir / STATE_FILE).unlink(missing_ok=True)
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
    deadline = time.monotonic() + SUPERVISOR_START_TIMEOUT_SECONDS
    while not answers(socket_path):
        if server.poll() is not None or stop_asked or time.monotonic() > deadline:
            _stop_server(server)
            log.error(
                "redis-server did not start (status %s); see %s",
                server.returncode,
                data_dir / SERVER_LOG,
            )
            return 1
        time.sleep(0.02)
    me = Proc.of(os.getpid())
    SupervisorState(me, Proc.of(server.pid), args.started_by, [owner]).write(data_dir)
    os.close(int(args.lock_fd))  # the state is written: others may now join, or start anew
    print(server.pid, flush=True)
    with open(os.devnull, "wb") as null:  # the starter reads no more
        os.dup2(null.fileno(), sys.stdout.fileno())
    log.info("redis-server pid %d serves %s for %s", server.pid, data_dir, args.started_by)

    while True:
        time.sleep(POLL_SECONDS)
        if server.poll() is not None:
            with locked(data_dir):
                _clear(data_dir, socket_path)
            log.error("redis-server exited by itself (status %s)", server.returncode)
            return 1
        state = SupervisorState.read(data_dir)
        if not stop_asked and state is not None and state.live_owners():
            continue
        # A new owner registers under this lock, so it never joins a server being stopped.
        with locked(data_dir):
            state = SupervisorState.read(data_dir)
            if not stop_asked and state is not None and state.live_owners():
                continue
            _stop_server(server)
            _clear(data_dir, socket_path)
        reason = f"signal {stop_asked[0]}" if stop_asked else "no owner left"
        log.info("redis-server pid %d stopped (%s)", server.pid, reason)
        return 0


if __name__ == "__main__":
    sys.exit(_supervise(sys.argv[1:]))
