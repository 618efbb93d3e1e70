"""The processes a benchmark run starts, and the guarantee that none outlives it.

Each child gets a process group of its own (so Ctrl-C reaches the harness first, which then
stops them in order) and is killed, group and all, by Children.kill_all() in the harness's
`finally`, whatever ended the run. Ports are free ports on 127.0.0.1 (never 6379 or 8000).
"""

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from tests.e2e.conftest import free_port
from tests.performance.provider_stub import MODEL

REPO_ROOT = Path(__file__).resolve().parents[2]
_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


@contextlib.contextmanager
def cpu_affinity(cpus: set[int] | None) -> Iterator[None]:
    """Children inherit the affinity of the thread that forks them: switch ours meanwhile."""
    if cpus is None:
        yield
        return
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, mine)


class Children:
    """Every process this run started."""

    def __init__(self) -> None:
        self._processes: list[subprocess.Popen[bytes]] = []

    def spawn(
        self,
        command: Sequence[str],
        *,
        cpus: set[int] | None = None,
        **options: Any,
    ) -> subprocess.Popen[bytes]:
        with cpu_affinity(cpus):
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, start_new_session=True, **options
            )
        self._processes.append(process)
        return process

    @staticmethod
    def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL to the whole group if it has not ended within timeout."""
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def kill_all(self) -> None:
        for process in reversed(self._processes):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self._processes.clear()


def _read_line(stream: IO[bytes], timeout: float) -> bytes:
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else b""


class Stub:
    """tests/performance/provider_stub.py in a process of its own (its own core time)."""

    def __init__(self, children: Children, workdir: Path, cpus: set[int] | None) -> None:
        log = (workdir / "stub.stderr.log").open("wb")
        self.process = children.spawn(
            [sys.executable, "-m", "tests.performance.provider_stub", "--port", "0"],
            cpus=cpus,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        assert self.process.stdout is not None
        line = _read_line(self.process.stdout, 20.0).decode().split()
        if len(line) != 2 or line[0] != "PORT":
            raise RuntimeError(f"the provider stub did not start; see {log.name}")
        self.port = int(line[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._client = httpx.AsyncClient(base_url=self.url, trust_env=False, timeout=10)

    @property
    def completions_url(self) -> str:
        return f"{self.url}/v1/chat/completions"

    async def stats(self) -> dict[str, float]:
        response = await self._client.get("/__bench/stats")
        response.raise_for_status()
        stats: dict[str, float] = response.json()
        return stats

    async def reset(self) -> None:
        (await self._client.post("/__bench/reset")).raise_for_status()

    async def set_delay(self, seconds: float) -> None:
        (await self._client.post(f"/__bench/delay/{round(seconds * 1000)}")).raise_for_status()

    async def set_stream(self, tokens: int, interval: float, first: float) -> None:
        """What a streamed answer is: `tokens` words, the first `first` seconds after the
        request, each next one `interval` later."""
        path = f"/__bench/stream/{tokens}/{round(interval * 1000)}/{round(first * 1000)}"
        (await self._client.post(path)).raise_for_status()

    async def last_body(self) -> bytes:
        response = await self._client.get("/__bench/last")
        response.raise_for_status()
        return response.content

    async def close(self) -> None:
        await self._client.aclose()
        Children.stop(self.process)


def service_environment(
    *, redis_url: str, provider_url: str, max_messages: int, config: Path, token: str
) -> dict[str, str]:
    """The service's settings, all as CHAT_* variables: auth on with this one token and
    metrics on (its default), as a deployment runs them; rate limit off (it would be a third
    Redis round trip per request) and cleanup off; provider openai at the stub. No CHAT_* or
    proxy variable of ours leaks in."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("CHAT_") and name.lower() not in _PROXY_VARIABLES
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(
        PYTHONUNBUFFERED="1",
        CHAT_CONFIG=str(config),  # an empty file: ./config.ini must not be read
        CHAT_AUTH_TOKENS=token,
        CHAT_AUTH_RATE_LIMIT="",
        CHAT_CLEANUP_ENABLED="false",
        CHAT_REDIS_URL=redis_url,
        CHAT_HISTORY_MAX_MESSAGES=str(max_messages),
        CHAT_LLM_PROVIDER="openai",
        CHAT_LLM_API_URL=f"{provider_url}/v1",
        CHAT_LLM_MODEL=MODEL,
    )
    return env


class Service:
    """`uvicorn --factory tests.performance.app:create_app`: uvloop, httptools, one worker
    unless told more (then uvicorn's manager process and its workers)."""

    def __init__(
        self,
        children: Children,
        workdir: Path,
        name: str,
        env: Mapping[str, str],
        *,
        cpus: set[int] | None,
        access_log: bool = False,
        workers: int = 1,
    ) -> None:
        self._children = children
        self.name = name
        self.workers = workers
        self.stderr_path = workdir / f"{name}.stderr.log"
        stdout_path = workdir / f"{name}.stdout.log"
        for _ in range(3):
            self.port = free_port()
            command = [
                sys.executable, "-m", "uvicorn", "--factory", "tests.performance.app:create_app",
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers),
                "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
                "--access-log" if access_log else "--no-access-log",
            ]  # fmt: skip
            with self.stderr_path.open("ab") as err, stdout_path.open("ab") as out:
                self.process = children.spawn(
                    command, cpus=cpus, cwd=workdir, env=dict(env), stdout=out, stderr=err
                )
            if self._wait_healthy(30.0):
                return
            Children.stop(self.process)
            if "address already in use" not in self.stderr().lower():
                break
        raise RuntimeError(f"the service did not start:\n{self.stderr()[-3000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def _wait_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=1.0) as client:
            while time.monotonic() < deadline and self.process.poll() is None:
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/health").status_code == 200:
                        return True
                time.sleep(0.05)
        return False

    def pids(self) -> list[int]:
        """The process uvicorn runs in and all its descendants (with --workers: the
        manager, its workers and whatever they started), from /proc/<pid>/task/*/children."""
        found, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                with contextlib.suppress(OSError):
                    todo += [int(child) for child in children.read_text().split()]
        return found

    def memory_kib(self) -> dict[str, int]:
        """VmHWM (peak resident set since start) and VmRSS, summed over pids(), from /proc;
        `processes`: how many were summed."""
        values = {"VmHWM": 0, "VmRSS": 0, "processes": 0}
        for pid in self.pids():
            try:
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            except OSError:  # ended meanwhile
                continue
            values["processes"] += 1
            for line in lines:
                name, _, rest = line.partition(":")
                if name in {"VmHWM", "VmRSS"}:
                    values[name] += int(rest.split()[0])
        return values

    def stop(self) -> None:
        Children.stop(self.process, timeout=15.0)
