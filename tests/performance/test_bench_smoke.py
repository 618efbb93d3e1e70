"""The benchmark harness end to end in --smoke mode, so that `scripts/bench` cannot rot.

Each run starts its own redis-server, provider stand-in and service, as `scripts/bench`
does, with about a second per measurement. Nothing here is about speed: only that every
scenario ran and the table, JSON and chart were written.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.performance.bench import main
from tests.performance.loadgen import wrk_path
from tests.performance.processes import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.performance]

SCENARIOS = {"s1", "s2", "s3", "s3b", "s4", "s5", "s6"}
# wrk where installed (as the full run needs it); a fresh machine runs the built-in generator.
GENERATOR = "wrk" if wrk_path() is not None else "builtin"


@pytest.mark.timeout(300)
def test_a_smoke_run_writes_every_scenario(tmp_path: Path) -> None:
    generator = GENERATOR
    done = subprocess.run(
        [sys.executable, "-m", "tests.performance.bench", "--smoke", "--generator", generator,
         "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )  # fmt: skip
    output = f"--- stdout ---\n{done.stdout[-4000:]}\n--- stderr ---\n{done.stderr[-4000:]}"
    assert done.returncode == 0, output

    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["scenarios"]) == SCENARIOS, output
    assert results["meta"]["mode"] == "smoke"
    assert (generator == "wrk") == (results["meta"]["generator"] == "wrk")
    s1 = results["scenarios"]["s1"]
    assert set(s1["runs"]) == {"chat", "bare", "proxy", "noop", "stub"}
    assert all(run["requests"] > 0 for run in s1["runs"].values()), s1
    assert len(s1["rounds"]) == 2, s1  # the smoke plan's; a full run has 3
    for pair in s1["rounds"]:  # the bare route does the same job: the same provider request
        assert pair["bare"]["error_count"] == 0, pair
        assert pair["bare"]["provider_body_bytes_per_request"] == pytest.approx(
            pair["chat"]["provider_body_bytes_per_request"]
        ), pair
    s3b = results["scenarios"]["s3b"]
    assert set(s3b["runs"]) == {"1", "2"}, s3b
    for run in s3b["runs"].values():
        assert run["steady_rps"] > 0, run
        assert run["service_rss_end_mib"] > 0, run
    assert s3b["runs"]["2"]["service_processes"] >= 3, s3b  # uvicorn's manager and 2 workers
    s4 = results["scenarios"]["s4"]
    assert set(s4["lengths"]) == {"0", "50", "500"}
    for entry in s4["lengths"].values():  # with auth and metrics on
        assert entry["exact_non_200"] == 0, entry
        assert entry["redis_round_trips_per_request"] == 2, entry
    s6 = results["scenarios"]["s6"]
    one = s6["ttft_one_connection"]
    for run in (s6["relayed"], s6["direct"], one["service"], one["direct"]):
        assert run["error_count"] == 0, run
        assert run["ttft_ms"]["count"] > 0, run
    assert s6["relayed"]["tokens_per_stream"]["min"] == s6["tokens_per_reply"], s6["relayed"]
    assert s6["redis"]["round_trips_per_reply"] > 0, s6["redis"]
    assert s6["service_cpu_us_per_token"] is not None, s6
    assert {t["scenario"] for t in results["targets"]} == {
        "S1",
        "S2",
        "S3",
        "S3b",
        "S4",
        "S5",
        "S6",
    }

    table = (tmp_path / "results.md").read_text()
    labels = ("S1 (", "S1 rounds", "S2 (", "S3 (", "S3b (", "S4 (", "S5:", "| S6 streaming |")
    for label in (*labels, "S6:", "| met |"):
        assert label in table, table
        assert label in done.stdout
    assert (tmp_path / "chart.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_a_full_run_without_wrk_stops_with_a_clear_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--generator", "builtin"]) == 2
    assert "a full run needs wrk" in capsys.readouterr().err
