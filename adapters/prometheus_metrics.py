"""The service's own Prometheus metrics; the HTTP ones (`chat_requests_total`...) are
Litestar's plugin's. With several worker processes, prometheus_client's multiprocess mode:
each worker writes its samples to files in one directory, and a scrape sums them all."""

import contextlib
import functools
import glob
import multiprocessing
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple, get_args

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)

from application.telemetry import FallbackReason, ModelCall, ModelOutcome, StreamOutcome

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Litestar adds the charset to a text/* media type itself.
MEDIA_TYPE = CONTENT_TYPE_LATEST.partition("; charset")[0]
_SHARED_PREFIX = "chat-service-metrics-"

_MODEL_SECONDS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
_FIRST_TOKEN_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32)
_STORE_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class _Families(NamedTuple):
    model_requests: Counter
    model_seconds: Histogram
    first_token_seconds: Histogram
    model_tokens: Counter
    model_retries: Counter
    fallbacks: Counter
    streams_active: Gauge
    stream_outcomes: Counter
    store_seconds: Histogram
    store_errors: Counter
    rate_limited: Counter
    replays: Counter
    cleanup_runs: Counter
    cleanup_deleted: Counter


@functools.cache
def _families() -> _Families:
    """Made once per process, on first use (never at import): the registry is the
    process's, and a process may build several apps (tests do). No `_created` series: a
    scrape is easier to read without them, and rate() does not need them."""
    disable_created_metrics()  # type: ignore[no-untyped-call]
    return _Families(
        Counter(
            "chat_model_requests_total",
            "Calls to a model (its retries included), by how they ended",
            ["model", "outcome"],
        ),
        Histogram(
            "chat_model_duration_seconds",
            "A model call from request to its last text",
            ["model"],
            buckets=_MODEL_SECONDS,
        ),
        Histogram(
            "chat_model_time_to_first_token_seconds",
            "A streamed model call from request to its first text",
            ["model"],
            buckets=_FIRST_TOKEN_SECONDS,
        ),
        Counter(
            "chat_model_tokens_total",
            "Tokens of the replies' prompts (input) and texts (output), as the provider "
            "counted them or estimated",
            ["model", "kind", "source"],
        ),
        Counter("chat_model_retries_total", "Provider requests sent again", ["model"]),
        Counter(
            "chat_fallbacks_total",
            "Requests handed from one model to the next, and why",
            ["from_model", "to_model", "reason"],
        ),
        Gauge(
            "chat_streams_active",
            "Streamed replies being written now",
            multiprocess_mode="livesum",
        ),
        Counter("chat_stream_outcomes_total", "Streamed replies, by how they ended", ["outcome"]),
        Histogram(
            "chat_store_duration_seconds",
            "Calls to the store (Redis), by operation",
            ["operation"],
            buckets=_STORE_SECONDS,
        ),
        Counter(
            "chat_store_errors_total",
            "Store calls that failed or timed out, by operation",
            ["operation"],
        ),
        Counter("chat_rate_limited_total", "Requests refused by the rate limit (429)"),
        Counter(
            "chat_idempotent_replays_total",
            "Repeated requests (same Idempotency-Key) answered without asking a model",
        ),
        Counter("chat_cleanup_runs_total", "Cleanup runs this service performed"),
        Counter("chat_cleanup_deleted_total", "Chat histories the cleanup deleted"),
    )


class PrometheusMetrics:
    """The use cases' Telemetry as metrics, and what the adapters tell: store calls,
    provider retries, rate limiting, cleanups. Each configured model's series exist from
    the start (at 0), so a dashboard's rates have a baseline."""

    def __init__(self, models: Sequence[str] = ()) -> None:
        self._families = f = _families()
        # A labelled series looked up once: prometheus_client's labels() costs more than
        # the inc() it precedes.
        self._calls = functools.cache(f.model_requests.labels)
        self._call_seconds = functools.cache(f.model_seconds.labels)
        self._first_token = functools.cache(f.first_token_seconds.labels)
        self._tokens = functools.cache(f.model_tokens.labels)
        self._store_seconds = functools.cache(f.store_seconds.labels)
        for model in models:
            for outcome in get_args(ModelOutcome):
                f.model_requests.labels(model, outcome)
            f.model_retries.labels(model)
        for ending in get_args(StreamOutcome):
            f.stream_outcomes.labels(ending)

    def model_called(self, call: ModelCall) -> None:
        self._calls(call.model, call.outcome).inc()
        self._call_seconds(call.model).observe(call.seconds)
        if call.first_token_seconds is not None:
            self._first_token(call.model).observe(call.first_token_seconds)
        if (usage := call.usage) is not None:
            self._tokens(call.model, "input", usage.source).inc(usage.input_tokens)
            self._tokens(call.model, "output", usage.source).inc(usage.output_tokens)

    def fell_back(self, from_model: str, to_model: str, reason: FallbackReason) -> None:
        self._families.fallbacks.labels(from_model, to_model, reason).inc()

    def stream_started(self) -> None:
        self._families.streams_active.inc()

    def stream_ended(self, outcome: StreamOutcome) -> None:
        self._families.streams_active.dec()
        self._families.stream_outcomes.labels(outcome).inc()

    def replayed(self) -> None:
        self._families.replays.inc()

    def store_call(self, operation: str, seconds: float, failed: bool) -> None:
        self._store_seconds(operation).observe(seconds)
        if failed:
            self._families.store_errors.labels(operation).inc()

    def retried(self, model: str) -> None:
        self._families.model_retries.labels(model).inc()

    def rate_limited(self) -> None:
        self._families.rate_limited.inc()

    def cleaned_up(self, deleted: int) -> None:
        self._families.cleanup_runs.inc()
        self._families.cleanup_deleted.inc(deleted)


def exposition() -> bytes:
    """Every metric of this service, in Prometheus' text format: this process's, or, in
    multiprocess mode, every worker's summed. A worker that died without saying so (a
    crash) has its gauges' files removed first, so streams it held are not counted."""
    directory = os.environ.get(MULTIPROCESS_ENV)
    if not directory:
        return generate_latest(REGISTRY)
    for pid in _pids_with_live_gauges(directory):
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def share_between_workers() -> None:
    """In a worker of several, count in the directory all its server's workers share.

    `chat-service serve --workers N` prepared it (for_workers). Plain `uvicorn --workers N`
    runs no code of ours before its workers: each then takes the directory named for its
    manager process (pid and start time: a new server's starts empty)."""
    if MULTIPROCESS_ENV not in os.environ:
        parent = multiprocessing.parent_process()
        if parent is None or parent.pid is None:
            return  # a single process: its own registry
        directory = _named_for(parent.pid)
        directory.mkdir(mode=0o700, exist_ok=True)
        os.environ[MULTIPROCESS_ENV] = str(directory)
    # prometheus_client chose its value class when it was imported; metrics made from now on
    # (none are made before the app is built) write to the directory.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def worker_stopped() -> None:
    """A worker stopping: its gauges (streams, requests in progress) no longer count."""
    if directory := os.environ.get(MULTIPROCESS_ENV):
        multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]


def for_workers() -> Path | None:
    """In a `serve` about to start workers: their directory (MULTIPROCESS_ENV), empty. The
    operator's, emptied, if one is set; else one named for this process, to remove when it
    stops (returned)."""
    if configured := os.environ.get(MULTIPROCESS_ENV):
        for name in glob.glob(os.path.join(configured, "*.db")):
            os.remove(name)
        return None
    directory = _named_for(os.getpid())
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700)
    os.environ[MULTIPROCESS_ENV] = str(directory)
    return directory


def _named_for(manager: int) -> Path:
    """The directory of the workers of process `manager`; those of managers that are gone
    (killed, not stopped) are removed on the way."""
    root = Path(tempfile.gettempdir())
    _remove_stale(root)
    return root / f"{_SHARED_PREFIX}{manager}-{_started(manager)}"


def _pids_with_live_gauges(directory: str) -> Iterable[int]:
    names = glob.glob(os.path.join(directory, "gauge_live*_*.db"))
    return {int(match[1]) for name in names if (match := re.search(r"_(\d+)\.db$", name))}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _started(pid: int) -> str:
    """When the process started (clock ticks since boot), or "" where /proc is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]


def _remove_stale(root: Path) -> None:
    for directory in root.glob(f"{_SHARED_PREFIX}*-*"):
        match = re.fullmatch(rf"{_SHARED_PREFIX}(\d+)-(\d*)", directory.name)
        if match and not (_alive(int(match[1])) and _started(int(match[1])) == match[2]):
            with contextlib.suppress(OSError):
                shutil.rmtree(directory)
