"""SIGTERM in the middle of traffic, as systemd or `docker stop` sends it.

The service runs on its embedded Redis with the openai provider pointed at a loopback stub
that takes DELAY to answer, so requests pile up waiting on the provider. SIGTERM arrives
while IN_FLIGHT of them wait, and more keep coming after it. What a client saw answered
with a 200 must be in its session once the service is started again on the same data_dir;
what was refused must not be.
"""

import asyncio
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ServiceLauncher, openai_config, redis_server_pids, wait_until
from tests.support.provider_stub import json_reply, openai_body, running_stub, slow

DELAY = 0.8  # the provider's answer time
IN_FLIGHT = 50  # requests waiting on the provider when SIGTERM arrives
SESSIONS = 10
GRACE = 30  # seconds `chat-service serve` gives in-flight requests (uvicorn's graceful shutdown)
EXIT_WITHIN = 20  # seconds from SIGTERM to exit: the last answers take DELAY; the rest is slack

# What it means when a worker of several did not log its stop although the rest passed: uvicorn
# re-raises SIGTERM in each worker after the graceful shutdown, which kills the worker before
# Litestar's queued log handler (a thread, drained at exit) has written its last lines.
STOPPED_LINE_LOST = "a worker's last log lines were lost at exit"


@dataclass(frozen=True)
class Outcome:
    session_id: str
    question: str
    result: int | str  # the status, or the name of the transport error
    reply: str | None


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_under_load_answers_in_flight_requests_and_keeps_what_was_answered(
    launch: ServiceLauncher, tmp_path: Path, workers: int
) -> None:
    with running_stub(slow(json_reply(openai_body("unplanned")), DELAY)) as stub:
        # The stub's n-th request gets "answer n": its request log says whose reply is whose.
        stub.plan(*(slow(json_reply(openai_body(f"answer {n}")), DELAY) for n in range(1000)))
        config = {
            "redis": {"url": "", "data_dir": "./data"},
            "history": {"max_messages": "500"},
            "llm": openai_config(stub, timeout_seconds="20"),
            # Running, so that it has to be stopped; no slot falls due during the test.
            "cleanup": {"enabled": "true", "interval_seconds": str(10**6)},
        }
        workdir = tmp_path / "service"
        service = await asyncio.to_thread(launch, config, workers=workers, workdir=workdir)
        await asyncio.to_thread(
            wait_until,
            lambda: service.stderr().count(" ready: ") == workers,
            20,
            "all workers ready",
        )
        process = service.process
        assert process is not None
        assert service.data_dir is not None
        assert len(redis_server_pids(service.data_dir)) == 1

        outcomes: list[Outcome] = []
        limits = httpx.Limits(max_connections=IN_FLIGHT + 20)
        async with httpx.AsyncClient(
            base_url=service.url, trust_env=False, timeout=GRACE + 15, limits=limits
        ) as http:

            async def ask(session_id: str, question: str) -> Outcome:
                body = {"session_id": session_id, "message": question}
                try:
                    response = await http.post("/chat/", json=body)
                except httpx.TransportError as error:
                    outcome = Outcome(session_id, question, type(error).__name__, None)
                else:
                    reply = response.json().get("response") if response.content else None
                    outcome = Outcome(session_id, question, response.status_code, reply)
                outcomes.append(outcome)
                return outcome

            async def keep_asking(client: int) -> None:
                """Traffic that goes on after the signal, until the service is gone."""
                for n in range(100):
                    if process.poll() is not None:
                        return
                    await ask(f"term-{(client + n) % SESSIONS}", f"after SIGTERM {client}.{n}")
                    await asyncio.sleep(0.02)

            waves = [
                asyncio.create_task(ask(f"term-{n % SESSIONS}", f"in flight {n}"))
                for n in range(IN_FLIGHT)
            ]
            for _ in range(400):  # until every one of them waits on the provider
                if len(stub.requests) >= IN_FLIGHT:
                    break
                await asyncio.sleep(0.05)
            in_flight = sum(not task.done() for task in waves)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            later = [asyncio.create_task(keep_asking(client)) for client in range(5)]

            first = await asyncio.gather(*waves)
            try:
                exit_code = await asyncio.to_thread(process.wait, EXIT_WITHIN)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running {EXIT_WITHIN} s after SIGTERM:\n{service.output()}")
            exited_after = time.monotonic() - signalled
            await asyncio.gather(*later)
        gone = redis_server_pids(service.data_dir)
        replies = {
            r.json["messages"][-1]["content"]: f"answer {n}" for n, r in enumerate(stub.requests)
        }

    acked = [o for o in outcomes if o.result == 200]
    after = [o for o in outcomes if o.question.startswith("after SIGTERM")]
    figures = (
        f"{workers} worker(s): {in_flight} of {IN_FLIGHT} requests in flight at SIGTERM, "
        f"{sum(o.result == 200 for o in first)} answered 200; after SIGTERM "
        f"{sum(o.result == 200 for o in after)} answered 200, "
        f"{sum(isinstance(o.result, str) for o in after)} refused or cut "
        f"({sorted({o.result for o in after if isinstance(o.result, str)})}); "
        f"exit {exit_code} after {exited_after:.1f} s"
    )
    print(f"\nshutdown: {figures}")

    assert in_flight >= IN_FLIGHT // 2, f"too few requests in flight to test anything: {figures}"
    assert exit_code == 0, (figures, service.output())
    # Every request the service had taken is answered, in full and before the process ends.
    assert [o.result for o in first] == [200] * IN_FLIGHT, (figures, service.output())
    # A request after the signal is either served like any other or never taken.
    unexpected = [o for o in after if o.result != 200 and not isinstance(o.result, str)]
    assert not unexpected, (figures, unexpected, service.output())
    for outcome in acked:
        assert outcome.reply == replies[outcome.question], outcome

    assert gone == [], f"the embedded redis-server outlived the service: {gone}"

    # Started again on the same data_dir: every answered exchange is there, paired, and
    # nothing else is.
    second = await asyncio.to_thread(launch, config, workers=1, workdir=workdir)
    stored: set[tuple[str, str, str]] = set()
    async with second.async_client() as http:
        for n in range(SESSIONS):
            session_id = f"term-{n}"
            response = await http.get(f"/chat/{session_id}")
            if response.status_code == 404:
                continue
            messages = second.expect(response, 200)["messages"]
            assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
            stored |= {
                (session_id, q["content"], a["content"])
                for q, a in zip(messages[::2], messages[1::2], strict=True)
            }
    answered = {(o.session_id, o.question, o.reply) for o in acked}
    missing = answered - stored
    print(f"shutdown: after restart {len(answered)} answered exchanges, {len(missing)} missing")
    assert not missing, (figures, sorted(missing))
    assert stored == answered, ("stored but never answered", sorted(stored - answered))

    # Each worker said it stopped its cleanup job (checked last: see STOPPED_LINE_LOST).
    stopped = service.stderr().count("cleanup scheduler stopped")
    assert stopped == workers, f"{stopped} of {workers}: {STOPPED_LINE_LOST}\n{service.output()}"


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_closing_the_terminal_lets_two_workers_finish_what_they_answer(
    launch: ServiceLauncher,
) -> None:
    """A closing terminal sends SIGHUP to the whole process group, workers included: the
    manager stops them gracefully, so a reply under way is still given and kept."""
    with running_stub(slow(json_reply(openai_body("worth the wait")), 2 * DELAY)) as stub:
        config = {"redis": {"url": "", "data_dir": "./data"}, "llm": openai_config(stub)}
        service = launch(config, workers=2)
        assert service.process is not None
        assert service.data_dir is not None
        wait_until(lambda: service.stderr().count(" ready: ") == 2, 20, "both workers ready")
        body = {"session_id": "hup", "message": "still there?"}
        with service.client() as http, ThreadPoolExecutor(1) as pool:
            answer = pool.submit(http.post, "/chat/", json=body)
            wait_until(lambda: len(stub.requests) == 1, 10, "the provider asked")
            os.killpg(service.process.pid, signal.SIGHUP)
            assert answer.result().status_code == 200, answer.result().text
        assert service.process.wait(EXIT_WITHIN) == 0, service.output()
        assert redis_server_pids(service.data_dir) == [], service.output()
