"""The embedded redis-server never outlives the service, however the service was started
(`chat-service serve`, plain `uvicorn`, one worker or several) and however it ended; and
no worker's death takes it away from the others.

Ended by SIGKILL or a signal it does not handle, the service leaves its store stopped with
SIGTERM all the same (redis-server fsyncs its append-only file): a restart on the same
data_dir finds every exchange that was answered.
"""

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    BASE_CONFIG,
    ConfigSections,
    Service,
    merged,
    redis_server_pids,
    wait_until,
    worker_pids,
)

EMBEDDED: ConfigSections = {"redis": {"url": "", "data_dir": "./data"}}
GONE_WITHIN = 5.0  # seconds from the service's end to no redis-server for its data_dir


class UvicornService(Service):
    """`python -m uvicorn entrypoints.asgi:app`, as one would run the app without our CLI."""

    def _launch(self) -> None:
        self.env["CHAT_CONFIG"] = str(self.config_path)
        command = [sys.executable, "-m", "uvicorn", "entrypoints.asgi:app"]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        if self.workers != 1:
            # uvicorn aborts a restart (SIGHUP) whose new worker is not ready within this
            # (5 s by default): beside a loaded suite, a worker's imports alone took longer.
            command += ["--workers", str(self.workers), "--timeout-worker-healthcheck", "60"]
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.process = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )


Start = Callable[..., Service]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """start(how, workers, workdir=None): a service on the embedded Redis, run by `serve`
    or by plain `uvicorn`, ready in every worker; killed (with its redis-server) after."""
    started: list[Service] = []

    def launch(how: str, workers: int, workdir: Path | None = None) -> Service:
        kind = UvicornService if how == "uvicorn" else Service
        workdir = workdir or tmp_path / f"service-{len(started) + 1}"
        service = kind(workdir, merged(BASE_CONFIG, EMBEDDED), workers=workers)
        started.append(service)
        service.start()
        wait_until(lambda: service.stderr().count(" ready: ") == workers, 20, "workers ready")
        return service

    yield launch
    for service in started:
        service.kill()


def ask(service: Service, session_id: str, questions: list[str]) -> None:
    """Each on a new connection, so that every worker takes its share."""
    with service.client() as http:
        for question in questions:
            body = {"session_id": session_id, "message": question}
            service.expect(http.post("/chat/", json=body, headers={"connection": "close"}), 200)


def asked(service: Service, session_id: str) -> list[str]:
    with service.client() as http:
        messages = service.expect(http.get(f"/chat/{session_id}"), 200)["messages"]
    return [m["content"] for m in messages if m["role"] == "user"]


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def server_gone(service: Service) -> None:
    data_dir = service.data_dir
    assert data_dir is not None
    wait_until(
        lambda: not redis_server_pids(data_dir),
        GONE_WITHIN,
        f"the embedded redis-server to stop\n{service.output()}",
    )


ENDINGS = [
    ("serve", 1, signal.SIGKILL),
    ("serve", 2, signal.SIGKILL),
    ("uvicorn", 1, signal.SIGKILL),
    ("uvicorn", 2, signal.SIGKILL),
    ("serve", 1, signal.SIGHUP),
    ("serve", 2, signal.SIGHUP),
    ("uvicorn", 1, signal.SIGHUP),  # unhandled by uvicorn: the process just dies
    ("uvicorn", 1, signal.SIGTERM),
    ("uvicorn", 2, signal.SIGTERM),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "workers", "sig"),
    ENDINGS,
    ids=[f"{how}-{workers}w-{sig.name}" for how, workers, sig in ENDINGS],
)
def test_however_the_service_ends_its_redis_server_ends_with_it_and_keeps_the_data(
    start: Start, how: str, workers: int, sig: signal.Signals
) -> None:
    service = start(how, workers)
    assert service.process is not None
    assert service.data_dir is not None
    questions = [f"before {sig.name} {n}" for n in range(6)]
    ask(service, "owner", questions)
    assert len(redis_server_pids(service.data_dir)) == 1

    service.process.send_signal(sig)
    exit_code = service.process.wait(20)

    if how == "serve" and sig == signal.SIGHUP:
        # A graceful stop: the store is stopped and saved before the command exits.
        assert exit_code == 0, service.output()
        assert redis_server_pids(service.data_dir) == [], service.output()
    server_gone(service)

    service.kill()  # workers that outlived a SIGKILLed manager
    again = start("serve", 1, workdir=service.workdir)
    assert asked(again, "owner") == questions


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sighup_to_plain_uvicorn_workers_replaces_them_on_the_same_server(start: Start) -> None:
    """Under uvicorn's own manager SIGHUP means "restart the workers": the manager owns the
    server, so the new workers find it, with its data, and nothing is left over."""
    service = start("uvicorn", 2)
    manager = service.process
    assert manager is not None
    assert service.data_dir is not None
    ask(service, "hup", ["before"])
    [server] = redis_server_pids(service.data_dir)
    before = set(worker_pids(manager.pid))

    manager.send_signal(signal.SIGHUP)

    # One after the other, each once its replacement is ready: seconds alone, tens beside a
    # loaded suite.
    wait_until(lambda: not before & set(worker_pids(manager.pid)), 60, "workers replaced")
    ask(service, "hup", ["after"])
    assert asked(service, "hup") == ["before", "after"]
    assert redis_server_pids(service.data_dir) == [server]
    service.stop()
    server_gone(service)


@pytest.mark.slow
def test_killing_the_worker_that_started_the_server_leaves_the_service_answering(
    start: Start,
) -> None:
    service = start("uvicorn", 2)
    assert service.process is not None
    assert service.data_dir is not None
    ask(service, "survivor", ["first", "second"])
    [server] = redis_server_pids(service.data_dir)
    starter = parent_of(parent_of(server))  # redis-server < its supervisor < that worker
    assert starter in worker_pids(service.process.pid)

    os.kill(starter, signal.SIGKILL)

    questions = [f"after the kill {n}" for n in range(20)]
    ask(service, "survivor", questions)
    assert asked(service, "survivor") == ["first", "second", *questions]
    assert redis_server_pids(service.data_dir) == [server]
    assert service.stop() == 0, service.output()
    server_gone(service)


@pytest.mark.slow
def test_services_sharing_a_data_dir_share_one_server_which_stops_with_the_last(
    start: Start,
) -> None:
    first = start("serve", 1)
    assert first.process is not None
    assert first.data_dir is not None
    ask(first, "shared", ["from the first"])
    [server] = redis_server_pids(first.data_dir)

    second = start("uvicorn", 1, workdir=first.workdir)

    reused = [line for line in second.stderr().splitlines() if "reusing" in line]
    assert len(reused) == 1, second.output()
    started_by = f"in {first.data_dir} (pid {server}), started by pid {first.process.pid} "
    assert started_by in reused[0], reused
    assert first.stop() == 0
    ask(second, "shared", ["from the second"])
    assert asked(second, "shared") == ["from the first", "from the second"]
    assert redis_server_pids(first.data_dir) == [server]
    second.stop()
    server_gone(second)
