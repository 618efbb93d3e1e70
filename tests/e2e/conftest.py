"""The real service as a subprocess: `python -m entrypoints.cli serve` on a free port.

A Service writes its config file into its own working directory, captures stdout and stderr
to files there (for assertions and for failure messages), is ready once GET /health answers,
and is stopped with SIGTERM as a process manager would. Whatever is still running at fixture
teardown (workers, an embedded redis-server) is killed, so nothing outlives the tests.
"""

import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.provider_stub import ProviderStub, openai_answering, running_stub
from tests.support.redis_server import RedisServer

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 15.0
_RESERVED_PORTS = {6379, 8000}  # the machine's own Redis and the service's default port

# section -> key -> value; a section named DEFAULT is the seed's flat format.
ConfigSections = Mapping[str, Mapping[str, str]]

# Off unless a test is about it: an hourly purge aligned to the clock could fire mid-run.
BASE_CONFIG: dict[str, dict[str, str]] = {"cleanup": {"enabled": "false"}}


class ServiceError(RuntimeError):
    pass


def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port not in _RESERVED_PORTS:
            return port


def write_config(path: Path, sections: ConfigSections) -> Path:
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def merged(*layers: ConfigSections) -> dict[str, dict[str, str]]:
    """Later layers win key by key; a service config is BASE_CONFIG plus the test's own."""
    result: dict[str, dict[str, str]] = {}
    for layer in layers:
        for section, values in layer.items():
            result.setdefault(section, {}).update(values)
    return result


def service_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without CHAT_* settings or proxies that would reroute
    loopback calls; the checkout first on the path, so the code under test is what runs."""
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("CHAT_") and name.lower() not in proxies
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def serve_command(config: Path, port: int, workers: int = 1) -> list[str]:
    command = [sys.executable, "-m", "entrypoints.cli", "serve", "--config", str(config)]
    command += ["--port", str(port)]
    return command + (["--workers", str(workers)] if workers != 1 else [])


def run_serve(
    config: Path, cwd: Path, env: Mapping[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run `serve` to its end (for configs that must not start); returns it and its duration."""
    started = time.monotonic()
    finished = subprocess.run(
        serve_command(config, free_port()),
        cwd=cwd,
        env=service_environment(env),
        capture_output=True,
        text=True,
        timeout=20,  # a service that started after all is killed here, and fails its test
        check=False,
    )
    return finished, time.monotonic() - started


def redis_server_pids(data_dir: Path) -> list[int]:
    """Live redis-server processes serving data_dir (redis-server chdirs into its --dir)."""
    target = data_dir.resolve()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "redis-server":
                continue
            if alive(int(entry.name)) and Path(os.readlink(entry / "cwd")) == target:
                pids.append(int(entry.name))
        except OSError:
            continue  # it ended while we looked, or is not ours to inspect
    return pids


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def worker_pids(pid: int) -> list[int]:
    """uvicorn's worker processes: the children of pid started by multiprocessing's spawn."""
    workers = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text():
                    workers.append(int(child))
    return workers


def tcp_connections(pid: int) -> set[tuple[int, int]]:
    """(local port, remote port) of each established IPv4 TCP connection process pid holds.

    A connection still waiting in a listen queue belongs to nobody yet and is not listed.
    """
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[len("socket:[") : -1]))
    held = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
        if state == "01" and inode in inodes:  # 01: ESTABLISHED
            held.add((int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)))
    return held


def alive(pid: int) -> bool:
    """Running, as opposed to ended (or a zombie waiting for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Service:
    """One `chat-service serve` process and the files it leaves behind."""

    _numbers = itertools.count(1)

    def __init__(
        self,
        workdir: Path,
        config: ConfigSections,
        *,
        env: Mapping[str, str] | None = None,
        workers: int = 1,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        number = next(self._numbers)
        self.config_path = write_config(workdir / f"config-{number}.ini", config)
        self.config = config
        self.env = service_environment(env)
        self.workers = workers
        self.stdout_path = workdir / f"service-{number}.stdout.log"
        self.stderr_path = workdir / f"service-{number}.stderr.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path | None:
        """The embedded Redis's data directory, when the config asks for the embedded one."""
        redis = self.config.get("redis", {})
        if "DEFAULT" in self.config or redis.get("url", "") != "":
            return None
        return (self.workdir / redis.get("data_dir", "./data")).resolve()

    def start(self) -> "Service":
        """Launch and wait for /health; a port lost to another process is retried on a new one.
        Started already (launch() and module_launch() return started services), it is left as it
        is: a second process would outlive kill(), which knows only the last."""
        if self.process is not None and self.process.poll() is None:
            return self
        for _ in range(3):
            self.port = free_port()
            self._launch()
            if self._wait_healthy():
                return self
            if "address already in use" not in self.stderr().lower():
                break
        raise ServiceError(f"service did not become healthy:\n{self.output()}")

    def _launch(self) -> None:
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.process = subprocess.Popen(
                serve_command(self.config_path, self.port, self.workers),
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group: teardown can kill workers too
            )

    def _wait_healthy(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        with httpx.Client(trust_env=False, timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/health").status_code == 200:
                        return True
                time.sleep(0.05)
        self.kill()
        return False

    def stop(
        self, sig: signal.Signals = signal.SIGTERM, timeout: float = STOP_TIMEOUT_SECONDS
    ) -> int:
        """SIGTERM by default, as systemd or `docker stop` sends; returns the exit status."""
        assert self.process is not None, "never started"
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise ServiceError(
                    f"service ignored {sig.name} for {timeout} s:\n{self.output()}"
                ) from None
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group (main process and workers), then any
        embedded redis-server left for our data_dir (it runs in a session of its own)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self.data_dir is not None:
            for pid in redis_server_pids(self.data_dir):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def output(self, tail: int = 4000) -> str:
        return f"--- stdout ---\n{self.stdout()[-tail:]}\n--- stderr ---\n{self.stderr()[-tail:]}"

    def client(self, token: str | None = None, timeout: float = 15.0) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, trust_env=False, timeout=timeout)

    def async_client(self, token: str | None = None, timeout: float = 15.0) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        limits = httpx.Limits(max_connections=100)
        return httpx.AsyncClient(
            base_url=self.url, headers=headers, trust_env=False, timeout=timeout, limits=limits
        )

    def expect(self, response: httpx.Response, status: int) -> Any:
        """Assert the status; return the JSON body (None when empty). The failure message
        carries the body and the service's log, which is what one needs to see."""
        assert response.status_code == status, (
            f"{response.request.method} {response.request.url.path}: expected {status}, got "
            f"{response.status_code} {response.text[:500]}\n{self.output()}"
        )
        return response.json() if response.content else None

    def __repr__(self) -> str:
        return f"Service(port={self.port}, workdir={self.workdir})"


class ServiceLauncher:
    """Starts services under one directory and kills whatever is left of them at close()."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._services: list[Service] = []
        self._names = itertools.count(1)

    def __call__(
        self,
        config: ConfigSections,
        *,
        env: Mapping[str, str] | None = None,
        workers: int = 1,
        workdir: Path | None = None,
        base: ConfigSections = BASE_CONFIG,
    ) -> Service:
        """Start a service on BASE_CONFIG + config; reuse a workdir to restart "the same" one."""
        workdir = workdir or self.root / f"service-{next(self._names)}"
        service = Service(workdir, merged(base, config), env=env, workers=workers)
        self._services.append(service)
        return service.start()

    def close(self) -> None:
        for service in self._services:
            service.kill()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[ServiceLauncher]:
    """Dedicated services, for tests about start-up, config, restarts or workers."""
    launcher = ServiceLauncher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture(scope="module")
def module_launch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceLauncher]:
    """Services shared by a module's tests (each test uses its own session ids)."""
    launcher = ServiceLauncher(tmp_path_factory.mktemp("services"))
    try:
        yield launcher
    finally:
        launcher.close()


DEFAULT_ANSWER = "stub default answer"


@pytest.fixture(scope="module")
def module_stub() -> Iterator[ProviderStub]:
    """A provider stand-in on loopback, in a thread of its own, answering DEFAULT_ANSWER
    unless a test plans other replies."""
    with running_stub(openai_answering(DEFAULT_ANSWER)) as stub:
        yield stub


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


def assert_paired(messages: list[dict[str, Any]], questions: list[str]) -> None:
    """Every question stored once, each immediately followed by the echo model's reply to it
    (the echo provider repeats the user's text, so a reply names its question)."""
    assert len(messages) == 2 * len(questions), [m["content"] for m in messages]
    asked = []
    for question, answer in zip(messages[::2], messages[1::2], strict=True):
        assert question["role"] == "user", question
        assert answer["role"] == "assistant", answer
        assert f"You said: {question['content']} (" in answer["content"], (question, answer)
        asked.append(question["content"])
    assert sorted(asked) == sorted(questions)


def openai_config(stub: ProviderStub, **llm: str) -> dict[str, str]:
    """[llm] for the openai provider pointed at the stub; keyword arguments add or override."""
    return {"provider": "openai", "api_url": f"{stub.url}/v1", "max_retries": "0", **llm}


def stored_messages(service: Service, http: httpx.Client, session_id: str) -> list[tuple[str, str]]:
    """(role, content) of each message GET /chat/{session_id} shows; none for a 404."""
    response = http.get(f"/chat/{session_id}")
    if response.status_code == 404:
        return []
    shown = service.expect(response, 200)
    return [(message["role"], message["content"]) for message in shown["messages"]]


def assert_stored_once(
    service: Service, http: httpx.Client, session_id: str, message: str, reply: str
) -> None:
    """The session holds this one exchange, once: question, then reply."""
    assert stored_messages(service, http, session_id) == [
        ("user", message),
        ("assistant", reply),
    ]


def echo_reply(message: str, earlier: int = 0) -> str:
    """What the echo provider answers to `message` in a session with `earlier` messages."""
    return (
        "[echo: offline test model, no LLM provider configured] You said: "
        f"{message} ({earlier} earlier messages in this session)"
    )


@pytest.fixture
def sid(request: pytest.FixtureRequest) -> str:
    """A session id named after the test, with room left for a suffix per client."""
    return re.sub(r"[^A-Za-z0-9._:-]", "-", request.node.name)[-100:]


def words(count: int) -> str:
    """A message of `count` words; the echo model's reply to it has 16 + count words."""
    return " ".join(f"word{n}" for n in range(count))


def chat(session_id: str, message: str) -> dict[str, str]:
    return {"session_id": session_id, "message": message}
