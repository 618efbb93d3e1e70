"""Start-up as an operator sees it: config mistakes, the seed's format, the embedded Redis,
several workers, and what is left running once the service stops."""

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.e2e.conftest import (
    ConfigSections,
    Service,
    ServiceLauncher,
    alive,
    assert_paired,
    free_port,
    redis_server_pids,
    run_serve,
    wait_until,
    worker_pids,
)
from tests.support.provider_stub import ProviderStub, json_reply, openai_body
from tests.support.redis_server import RedisServer

EMBEDDED: ConfigSections = {"redis": {"url": "", "data_dir": "./data"}}


SECRET = "s3cr3t-e2e-value"  # a config error must never print it


def assert_one_line_config_error(
    finished: subprocess.CompletedProcess[str], elapsed: float, *names: str
) -> None:
    output = f"exit {finished.returncode}\nstdout:\n{finished.stdout}\nstderr:\n{finished.stderr}"
    assert finished.returncode != 0, output
    assert elapsed < 5, output
    assert "Traceback" not in finished.stdout + finished.stderr, output
    assert SECRET not in finished.stdout + finished.stderr, output
    lines = finished.stderr.splitlines()
    assert len(lines) == 1, output
    assert all(name in lines[0] for name in names), output


# (config file text, environment, what the one line must name besides the file)
CONFIG_MISTAKES = {
    "unknown-provider": ("[llm]\nprovider = gpt-9\n", {}, ["[llm]", "provider"]),
    "port-not-integer": ("[server]\nport = eighty\n", {}, ["[server]", "port"]),
    "openai-without-api_url": (
        f"[llm]\nprovider = openai\napi_key = {SECRET}\n",
        {},
        ["[llm]", "api_url"],
    ),
    "unknown-key": ("[llm]\ntemprature = 0.5\n", {}, ["[llm]", "temprature"]),
    "unknown-section": ("[lml]\nprovider = echo\n", {}, ["[lml]"]),
    "redis-url-with-password-bad-port": (
        f"[redis]\nurl = redis://:{SECRET}@127.0.0.1:notaport/0\n",
        {},
        ["[redis]", "url"],
    ),
    "token-with-space": (f"[auth]\ntokens = a-token, {SECRET} x\n", {}, ["[auth]", "tokens"]),
    "duplicate-secret-key": (
        f"[llm]\napi_key = {SECRET}\napi_key = {SECRET}\n",
        {},
        ["llm", "api_key"],
    ),
    "seed-redis_port": (
        f"[DEFAULT]\nredis_host = 127.0.0.1\nredis_port = six\nredis_password = {SECRET}\n"
        f"JWT_TOKEN = {SECRET}\n",
        {},
        ["[DEFAULT]", "redis_port"],
    ),
    "environment-variable": (
        "[llm]\nprovider = echo\n",
        {"CHAT_LLM_TIMEOUT_SECONDS": "soon"},
        ["CHAT_LLM_TIMEOUT_SECONDS", "timeout_seconds"],
    ),
    "environment-redis-url-with-password": (
        "[llm]\nprovider = echo\n",
        {"CHAT_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:notaport/0"},
        ["CHAT_REDIS_URL"],
    ),
}


@pytest.mark.parametrize(
    ("text", "env", "names"), CONFIG_MISTAKES.values(), ids=CONFIG_MISTAKES.keys()
)
def test_a_config_mistake_exits_at_once_with_one_line_naming_file_section_and_key(
    tmp_path: Path, text: str, env: dict[str, str], names: list[str]
) -> None:
    path = tmp_path / "config.ini"
    path.write_text(text, encoding="utf-8")
    finished, elapsed = run_serve(path, tmp_path, env)
    file_named = [] if any(name.startswith("CHAT_") for name in names) else [str(path.resolve())]
    assert_one_line_config_error(finished, elapsed, *file_named, *names)


def test_a_missing_config_file_is_one_line_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.ini"
    finished, elapsed = run_serve(missing, tmp_path)
    assert_one_line_config_error(finished, elapsed, str(missing))


def test_a_syntax_error_is_one_line_saying_where_it_is(tmp_path: Path) -> None:
    path = tmp_path / "config.ini"
    path.write_text(f"[llm]\nprovider = echo\n{SECRET}\n", encoding="utf-8")
    finished, elapsed = run_serve(path, tmp_path)
    assert_one_line_config_error(finished, elapsed, str(path.resolve()))
    assert "line 3" in finished.stderr or "[llm]" in finished.stderr, finished.stderr


def test_the_seed_format_talks_to_its_redis_and_posts_to_api_url_exactly(
    launch: ServiceLauncher, provider_stub_thread: ProviderStub, redis_server: RedisServer
) -> None:
    endpoint = "/seed/deployments/e2e/generate?api-version=2024-02-01"
    seed = {
        "DEFAULT": {
            "redis_host": "127.0.0.1",
            "redis_port": str(redis_server.port),
            "redis_password": "",
            "api_url": provider_stub_thread.url + endpoint,
            "JWT_TOKEN": "jwt-e2e-token",
            "model": "seed-model",
        }
    }
    service = launch(seed, base={})
    provider_stub_thread.plan(json_reply(openai_body("seeded answer")))

    with service.client() as http:
        body = {"session_id": "seeded", "message": "hello seed"}
        assert service.expect(http.post("/chat/", json=body), 200)["response"] == "seeded answer"
        history = service.expect(http.get("/chat/seeded"), 200)
    assert [m["content"] for m in history["messages"]] == ["hello seed", "seeded answer"]

    [request] = provider_stub_thread.requests
    assert (request.method, request.path) == ("POST", endpoint)
    assert request.headers["authorization"] == "Bearer jwt-e2e-token"
    assert request.json["model"] == "seed-model"
    assert request.json["messages"] == [{"role": "user", "content": "hello seed"}]
    with redis.Redis.from_url(redis_server.url) as store:
        assert store.dbsize() > 0, "the history is not in the seed's Redis"


def _stop_leftover_redis(data_dir: Path) -> None:
    """SIGTERM (redis-server saves its append-only file) whatever still serves data_dir, so
    the next start has to read the disk rather than find the old server answering."""
    for pid in redis_server_pids(data_dir):
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not redis_server_pids(data_dir), 10, "leftover redis-server to stop")


def test_the_embedded_redis_keeps_history_across_a_restart(
    launch: ServiceLauncher, tmp_path: Path
) -> None:
    workdir = tmp_path / "embedded"
    first = launch(EMBEDDED, workdir=workdir)
    assert first.data_dir is not None
    with first.client() as http:
        for message in ("remember me", "and this"):
            body = {"session_id": "durable", "message": message}
            first.expect(http.post("/chat/", json=body), 200)
        before = first.expect(http.get("/chat/durable"), 200)
    first.stop()
    _stop_leftover_redis(first.data_dir)  # a no-op once the service stops its own server

    second = launch(EMBEDDED, workdir=workdir)
    with second.client() as http:
        assert second.expect(http.get("/chat/durable"), 200) == before
    assert any(first.data_dir.rglob("chat.aof*")), "no append-only file under data_dir"


@pytest.mark.parametrize(
    "sig",
    [
        signal.SIGTERM,
        signal.SIGINT,
    ],
    ids=["SIGTERM", "SIGINT"],
)
def test_stopping_the_service_stops_its_embedded_redis(
    launch: ServiceLauncher, sig: signal.Signals
) -> None:
    service = launch(EMBEDDED)
    assert service.data_dir is not None
    assert len(redis_server_pids(service.data_dir)) == 1
    service.stop(sig)
    time.sleep(0.2)  # a server the service had stopped is already gone; give a leak no excuse
    assert redis_server_pids(service.data_dir) == [], service.output()


def _bytes_read(pid: int) -> int:
    """What a process has read through system calls so far, sockets included."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["rchar"])


def _ready_lines(service: Service) -> list[str]:
    return [line for line in service.stderr().splitlines() if " ready: " in line]


async def test_two_workers_share_one_embedded_redis_and_one_history(
    launch: ServiceLauncher,
) -> None:
    questions = [f"worker question {n}" for n in range(30)]
    config = {**EMBEDDED, "history": {"max_messages": str(4 * len(questions))}}
    service = launch(config, workers=2)
    assert service.process is not None
    assert service.data_dir is not None
    # /health answers as soon as one worker does; the other may still be starting.
    wait_until(lambda: len(_ready_lines(service)) == 2, 15, "both workers ready")
    socket_path = str(service.data_dir / "redis.sock")
    assert all(socket_path in line for line in _ready_lines(service)), _ready_lines(service)
    assert all("config=" in line for line in _ready_lines(service)), _ready_lines(service)
    # Said to the operator once per service, not once per worker.
    assert service.stderr().count("AUTH IS OFF") == 1, service.output()
    workers = worker_pids(service.process.pid)
    assert len(workers) == 2, workers
    assert len(redis_server_pids(service.data_dir)) == 1

    before = {pid: _bytes_read(pid) for pid in workers}
    # Waves of a few concurrent requests, each on a new connection: the workers take turns
    # accepting (one burst would mostly be accepted by whichever worker woke first).
    async with service.async_client() as http:
        for wave in range(0, len(questions), 3):
            responses = await asyncio.gather(
                *(
                    http.post(
                        "/chat/",
                        json={"session_id": "two-workers", "message": question},
                        headers={"connection": "close"},
                    )
                    for question in questions[wave : wave + 3]
                )
            )
            for response in responses:
                service.expect(response, 200)
        history = service.expect(await http.get("/chat/two-workers"), 200)
    served = {pid: _bytes_read(pid) - before[pid] for pid in workers}
    # An idle worker reads ~50 bytes a second (its supervisor's pings); a serving one, kilobytes.
    assert all(read > 5000 for read in served.values()), f"not both workers served: {served}"
    assert_paired(history["messages"], questions)
    assert len(redis_server_pids(service.data_dir)) == 1

    assert service.stop() == 0, service.output()
    assert redis_server_pids(service.data_dir) == [], service.output()
    assert not [pid for pid in workers if alive(pid)]


def test_a_redis_that_does_not_answer_is_named_at_start_and_by_ready(
    launch: ServiceLauncher,
) -> None:
    port = free_port()  # nothing listens there
    service = launch({"redis": {"url": f"redis://:{SECRET}@127.0.0.1:{port}/0"}})

    warning = f"redis at 127.0.0.1:{port} does not answer: requests will get 503 until it does"
    wait_until(lambda: warning in service.stderr(), 10, "the warning")
    with service.client() as http:
        ready = http.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["detail"] == (
        f"history store not ready: redis at 127.0.0.1:{port} did not answer"
    )
    assert SECRET not in service.output()
