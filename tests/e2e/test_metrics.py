"""GET /metrics as an operator scrapes it: after real traffic (chat, stream, a fallback, a
failure, a rate limit, a repeated request) on a service of 2 workers over one redis-server,
every scrape, whichever worker answers it, counts every worker's requests.

The providers are two OpenAI-compatible stand-ins: the primary (`gpt`, one retry) and its
fallback (`backup`, none)."""

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import (
    BASE_CONFIG,
    Service,
    ServiceLauncher,
    chat,
    merged,
    wait_until,
    worker_pids,
)
from tests.e2e.sse import check_whole, read_events
from tests.e2e.test_embedded_owner import UvicornService
from tests.support.provider_stub import (
    ProviderStub,
    error_reply,
    openai_answering,
    running_stub,
    windowed,
)
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.e2e

TOKEN, LIMITED = "metrics-chat-token", "metrics-limited-token"
SCRAPE = "metrics-scrape-secret"
RATE = 10  # per minute and token
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def providers() -> Iterator[tuple[ProviderStub, ProviderStub]]:
    with (
        running_stub(windowed("openai", 100_000, answer="The primary answers.")) as primary,
        running_stub(openai_answering("The backup answers.")) as backup,
    ):
        yield primary, backup


@pytest.fixture(scope="module")
def service(
    module_launch: ServiceLauncher,
    module_redis: RedisServer,
    providers: tuple[ProviderStub, ProviderStub],
) -> Service:
    primary, backup = providers
    model = {"provider": "openai", "timeout_seconds": "5", "max_tokens": "64"}
    return module_launch(
        {
            "redis": {"url": module_redis.url, "key_prefix": "metrics"},
            "auth": {"tokens": f"{TOKEN}, {LIMITED}", "rate_limit": f"{RATE}/minute"},
            "metrics": {"token": SCRAPE},
            "llm": model
            | {
                "api_url": f"{primary.url}/v1",
                "name": "gpt",
                "max_retries": "1",
                "fallbacks": "backup",
                "cooldown_failures": "1000",
            },
            "llm.backup": model | {"api_url": f"{backup.url}/v1", "max_retries": "0"},
        },
        workers=2,
    )


def samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    """A sample's value, 0 when absent; labels not given are summed over."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in found.items() if n == name and wanted <= have)


def scrape(service: Service) -> Samples:
    with service.client(SCRAPE) as client:
        response = client.get("/metrics")
    assert response.status_code == 200, f"{response.text}\n{service.output()}"
    assert response.headers["content-type"].startswith("text/plain; version=")
    return samples(response.text)


def test_every_scrape_counts_the_traffic_of_every_worker(
    service: Service, providers: tuple[ProviderStub, ProviderStub]
) -> None:
    primary, backup = providers
    session = f"m-{uuid.uuid4().hex[:8]}"
    refused = 0
    with service.client(TOKEN) as client:
        service.expect(client.post("/chat/", json=chat(session, "hello")), 200)
        with client.stream("POST", "/chat/stream", json=chat(session, "stream it")) as response:
            assert check_whole(read_events(response)).name == "done"
        key = {"Idempotency-Key": f"k-{session}"}
        first = service.expect(client.post("/chat/", json=chat(session, "once"), headers=key), 200)
        again = service.expect(client.post("/chat/", json=chat(session, "once"), headers=key), 200)
        assert again == first
        primary.plan(error_reply(503), error_reply(503))  # and its one retry
        answered = service.expect(client.post("/chat/", json=chat(session, "fall back")), 200)
        assert answered["model"] == "backup"
        primary.plan(error_reply(500), error_reply(500))
        backup.plan(error_reply(500))
        service.expect(client.post("/chat/", json=chat(session, "all fail")), 502)
    with service.client(LIMITED) as client:
        for _ in range(2 * RATE + 5):  # whatever minute boundary falls in between
            refused += client.get(f"/chat/{session}").status_code == 429
    assert refused > 0

    scrapes = [scrape(service) for _ in range(8)]  # each answered by one worker or the other
    counted = [
        (
            value(found, "chat_requests_total", path="/chat", method="POST"),
            value(found, "chat_rate_limited_total"),
        )
        for found in scrapes
    ]
    assert set(counted) == {(5.0, float(refused))}, counted
    found = scrapes[-1]

    def requests(**labels: str) -> float:
        return value(found, "chat_requests_total", **labels)

    assert requests(path="/chat", status_code="200") == 4
    assert requests(path="/chat", status_code="502") == 1
    assert requests(path="/chat/stream", status_code="200") == 1
    assert requests(status_code="429") == refused
    assert not [labels for (_, labels) in found if any(session in v for _, v in labels)]
    assert value(found, "chat_request_duration_seconds_count", path="/chat/stream") == 1

    def model_requests(model: str, outcome: str) -> float:
        return value(found, "chat_model_requests_total", model=model, outcome=outcome)

    assert (model_requests("gpt", "ok"), model_requests("gpt", "error")) == (3, 2)
    assert (model_requests("backup", "ok"), model_requests("backup", "error")) == (1, 1)
    assert value(found, "chat_model_retries_total", model="gpt") == 2
    assert value(found, "chat_model_retries_total", model="backup") == 0
    fallbacks = value(found, "chat_fallbacks_total", from_model="gpt", to_model="backup")
    assert fallbacks == value(found, "chat_fallbacks_total", reason="error") == 2
    assert value(found, "chat_model_duration_seconds_count", model="gpt") == 5
    assert value(found, "chat_model_time_to_first_token_seconds_count", model="gpt") == 1
    assert value(found, "chat_model_tokens_total", model="gpt", source="provider", kind="input") > 0
    assert value(found, "chat_model_tokens_total", model="backup", source="estimate") > 0
    assert value(found, "chat_stream_outcomes_total", outcome="done") == 1
    assert value(found, "chat_streams_active") == 0
    assert value(found, "chat_idempotent_replays_total") == 1
    assert value(found, "chat_store_duration_seconds_count", operation="history.append") == 4
    assert value(found, "chat_store_duration_seconds_count", operation="history.load") >= 5
    assert value(found, "chat_store_errors_total") == 0
    assert value(found, "chat_cleanup_runs_total") == 0  # the cleanup is off in these tests


def test_each_worker_counts_in_the_directory_the_scrape_sums(service: Service) -> None:
    """Both workers wrote samples; the directory is the service's own."""
    assert service.process is not None
    workers = set(worker_pids(service.process.pid))
    assert len(workers) == 2
    directories = set()
    for pid in workers:  # what `serve` gave its workers when it started them
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        directories |= {
            v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"PROMETHEUS_")
        }
    [directory] = directories

    def writers() -> set[int]:
        files = Path(directory).glob("*.db")
        return {int(m[1]) for f in files if (m := re.search(r"_(\d+)\.db$", f.name))}

    wait_until(lambda: writers() == workers, 5, "both workers write metrics")


def test_metrics_need_their_own_token_never_a_chat_one(service: Service) -> None:
    for token in (None, TOKEN, "wrong"):
        with service.client(token) as client:
            response = client.get("/metrics")
        body = service.expect(response, 401)
        assert "[metrics] token" in body["detail"]
        assert response.headers["www-authenticate"] == "Bearer"
    with httpx.Client(base_url=service.url, trust_env=False) as client:
        response = client.get("/metrics", headers={"authorization": f"bearer  {SCRAPE}"})
    assert response.status_code == 200


def test_plain_uvicorn_workers_share_one_count_that_starts_empty(
    tmp_path: Path, module_redis: RedisServer
) -> None:
    """`uvicorn --workers 2` runs none of our code before its workers: they find their
    directory by their manager's pid and start time, so a restart counts from zero."""
    config = {"redis": {"url": module_redis.url, "key_prefix": "metrics-uvicorn"}}
    for run in range(2):
        service = UvicornService(tmp_path / f"run-{run}", merged(BASE_CONFIG, config), workers=2)
        try:
            service.start()
            wait_until(lambda s=service: s.stderr().count(" ready: ") == 2, 20, "workers ready")
            with httpx.Client(base_url=service.url, trust_env=False) as client:
                for n in range(6):  # new connections: the kernel spreads them over the workers
                    response = client.post(
                        "/chat/", json=chat(f"u{run}-{n}", "hi"), headers={"connection": "close"}
                    )
                    assert response.status_code == 200, service.output()
                totals = {
                    value(samples(client.get("/metrics").text), "chat_requests_total", path="/chat")
                    for _ in range(6)
                }
            assert totals == {6.0}, service.output()
        finally:
            service.stop()
