"""A run's results as a table (Markdown, printed and written), JSON and a PNG chart."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Target:
    scenario: str
    measure: str
    value: str
    goal: str
    met: bool | None  # None: reported, no target


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def targets(results: dict[str, Any]) -> list[Target]:
    s = results["scenarios"]
    found: list[Target] = []
    if "s1" in s:
        s1 = s["s1"]
        over_bare = s1["chat_over_bare"]
        rounds = " / ".join(_ratio(r["chat_over_bare"]) for r in s1["rounds"])
        found += [
            Target(
                "S1",
                f"/chat/ req/s over /bench/bare req/s, median of {len(s1['rounds'])} rounds' "
                f"ratios ({rounds})",
                _ratio(over_bare),
                ">= 0.80x",
                over_bare is not None and over_bare >= 0.8,
            ),
            Target(
                "S1",
                "/chat/ over /bench/bare, ratio of the medians",
                _ratio(s1["chat_over_bare_of_medians"]),
                "-",
                None,
            ),
            Target(
                "S1",
                "/bench/bare's service CPU per request over /chat/'s, median of the rounds (the "
                "req/s ratio when the service's core is the limit)",
                _ratio(s1.get("bare_cpu_over_chat_cpu")),
                "-",
                None,
            ),
            Target(
                "S1", "/chat/ req/s over bare proxy req/s", _ratio(s1["chat_over_proxy"]), "-", None
            ),
            Target("S1", "/chat/ req/s over no-op req/s", _ratio(s1["chat_over_noop"]), "-", None),
        ]
    if "s2" in s:
        s2 = s["s2"]
        found += [
            Target(
                "S2",
                "added p50 latency",
                f"{s2['added_p50_ms']:.2f} ms",
                "<= 1 ms",
                s2["added_p50_ms"] <= 1.0,
            ),
            Target(
                "S2",
                "added p99 latency",
                f"{s2['added_p99_ms']:.2f} ms",
                "<= 3 ms",
                s2["added_p99_ms"] <= 3.0,
            ),
        ]
    if "s3" in s:
        s3 = s["s3"]
        found += [
            Target(
                "S3",
                f"throughput over ideal {s3['ideal_rps']:g} req/s",
                f"{s3['throughput_over_ideal']:.2f}x ({s3['steady_rps']:.0f} req/s)",
                ">= 0.90x",
                s3["throughput_over_ideal"] >= 0.9,
            ),
            Target("S3", "errors", str(s3["errors"]), "0", s3["errors"] == 0),
            Target("S3", "p99 latency", f"{s3['run']['p99_ms']:.0f} ms", "-", None),
        ]
    if "s3b" in s:
        s3b = s["s3b"]
        many, one = s3b["runs"][str(s3b["workers"])], s3b["runs"]["1"]
        scaling = s3b["workers_over_one"]
        # A side that failed its clients (a service past its capacity answers 503 fast, and
        # its closed-loop clients ask again at once) has no requests/s to scale from.
        failing = {
            name: run
            for name, run in (("1 worker", one), (f"{s3b['workers']} workers", many))
            if run["errors"] > 0.01 * max(run["run"]["requests"], 1)
        }
        valid = not failing
        failed = ", ".join(
            f"{name}: {run['errors']:,} errors (wrk counted {run['run']['requests']:,} answers)"
            for name, run in failing.items()
        )
        found += [
            Target(
                "S3b",
                f"{s3b['workers']} workers: throughput over ideal {s3b['ideal_rps']:g} req/s",
                f"{many['throughput_over_ideal']:.2f}x ({many['steady_rps']:.0f} req/s)",
                ">= 0.90x",
                many["throughput_over_ideal"] >= 0.9,
            ),
            Target(
                "S3b",
                f"{s3b['workers']} workers: total RSS at the end / peak "
                f"({many['service_processes']} processes)",
                f"{many['service_rss_end_mib']:.0f} / {many['service_peak_rss_mib']:.0f} MiB",
                "-",
                None,
            ),
            Target(
                "S3b",
                f"{s3b['workers']} workers over 1 worker, steady req/s "
                f"({many['steady_rps']:.0f} / {one['steady_rps']:.0f})",
                _ratio(scaling) + ("" if valid else f"; not a comparison: {failed}"),
                ">= 1.70x",
                valid and scaling is not None and scaling >= 1.7,
            ),
            Target(
                "S3b",
                f"errors, {s3b['workers']} workers / 1 worker",
                f"{many['errors']} / {one['errors']}",
                "-",
                None,
            ),
        ]
    if "s4" in s:
        trips = {k: v["redis_round_trips_per_request"] for k, v in s["s4"]["lengths"].items()}
        found.append(
            Target(
                "S4",
                "Redis round trips per request, history " + "/".join(trips),
                " / ".join(f"{v:.2f}" for v in trips.values()),
                "exactly 2",
                all(abs(v - 2) < 1e-9 for v in trips.values()),
            )
        )
    if "s5" in s:
        s5 = s["s5"]
        per_message, goal_bytes = s5["redis_bytes_per_message"], s5["target_bytes_per_message"]
        rss = s5["service_peak_rss_mib"]
        found += [
            Target(
                "S5",
                f"Redis bytes per message ({s5['raw_bytes_per_message']} B of text)",
                f"{per_message:.0f} B",
                f"<= {goal_bytes:.0f} B",
                per_message <= goal_bytes,
            ),
            Target(
                "S5",
                "service peak RSS during S3",
                "not measured (S3 not run)" if rss is None else f"{rss:.0f} MiB",
                "< 200 MB",
                None if rss is None else rss * 1024 * 1024 < 200e6,
            ),
        ]
    if "s6" in s:
        s6, redis = s["s6"], s["s6"]["redis"]
        over = s6["relayed_over_ideal"]
        trips, allowed = redis["round_trips_per_reply"], redis["allowed_round_trips"]
        cpu = s6["service_cpu_us_per_token"]
        found += [
            Target(
                "S6",
                f"{s6['streams']} streams: tokens/s relayed over ideal "
                f"{s6['ideal_tokens_per_s']:,.0f}",
                f"{over:.2f}x ({s6['relayed']['tokens_per_second']:,.0f} tokens/s)",
                ">= 0.90x",
                over >= 0.9,
            ),
            Target(
                "S6",
                "added time to first token, 1 connection, p50",
                f"{s6['added_ttft_p50_ms']:.2f} ms",
                "<= 2 ms",
                s6["added_ttft_p50_ms"] <= 2.0,
            ),
            Target(
                "S6",
                "added time to first token, 1 connection, p99",
                f"{s6['added_ttft_p99_ms']:.2f} ms",
                "-",
                None,
            ),
            Target(
                "S6",
                f"Redis round trips per reply ({redis['reply_ms_mean']:.0f} ms replies)",
                f"{trips:.2f}",
                f"<= {allowed:.2f} (4 + 1 per 100 ms)",
                trips <= allowed + 1e-9,
            ),
            Target(
                "S6",
                "service CPU per relayed token",
                "-" if cpu is None else f"{cpu:.0f} us",
                "-",
                None,
            ),
            Target(
                "S6",
                "errors (all streams)",
                str(s6["relayed"]["error_count"]),
                "0",
                s6["relayed"]["error_count"] == 0,
            ),
        ]
    return found


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _run_row(scenario: str, name: str, run: dict[str, Any], note: str = "") -> str:
    errors = str(run["error_count"])
    if run["error_count"]:
        errors += " (" + ", ".join(f"{k} {v}" for k, v in run["errors"].items() if v) + ")"
    cpu = run.get("service_cpu_ms_per_request")
    return _row(
        [
            scenario,
            name,
            f"{run['rps']:,.0f}",
            f"{run['p50_ms']:.2f}",
            f"{run['p99_ms']:.2f}",
            "-" if cpu is None else f"{cpu:.2f}",
            errors,
            note,
        ]
    )


def _s1_rows(s1: dict[str, Any]) -> list[str]:
    runs, where = s1["runs"], f"S1 ({s1['connections']} conns)"
    rows, median = [], f"median of {len(s1['rounds'])} rounds; "
    for name, label in (
        ("chat", "POST /chat/"),
        ("bare", "POST /bench/bare"),
        ("proxy", "POST /bench/proxy"),
    ):
        note = f"{runs[name]['provider_body_bytes_per_request']:,.0f} B to provider/request"
        if name == "chat":
            note = f"{s1['sessions']} sessions x {s1['history_messages']} msgs; " + note
        rows.append(_run_row(where, label, runs[name], (median if name != "proxy" else "") + note))
    rows.append(_run_row(where, "POST /bench/noop", runs["noop"]))
    rows.append(_run_row(where, "stub direct", runs["stub"], "the generator's ceiling"))
    return rows


def _stream_row(name: str, run: dict[str, Any], ideal: float, cpu_us: float | None) -> str:
    errors = str(run["error_count"])
    if run["error_count"]:
        errors += " (" + ", ".join(f"{k} {v}" for k, v in run["errors"].items() if v) + ")"
    ttft = run["ttft_ms"]
    return _row(
        [
            name,
            str(run["streams"]),
            f"{run['tokens_per_second']:,.0f}",
            f"{run['tokens_per_second'] / ideal:.2f}x" if ideal else "-",
            f"{ttft['p50']:.2f}",
            f"{ttft['p99']:.2f}",
            "-" if cpu_us is None else f"{cpu_us:.0f}",
            errors,
        ]
    )


HEAD_S6 = [
    "S6 streaming", "streams", "tokens/s", "over ideal", "TTFT p50 ms", "TTFT p99 ms",
    "CPU us/token", "errors",
]  # fmt: skip


def _s6_lines(s6: dict[str, Any]) -> list[str]:
    ideal, one, redis = s6["ideal_tokens_per_s"], s6["ttft_one_connection"], s6["redis"]
    share = s6["stub_cpu_share"]
    commands = ", ".join(f"{c} {v:.2f}" for c, v in redis["client_commands_per_reply"].items())
    return [
        "",
        _row(HEAD_S6),
        _row(["---", "--:", "--:", "--:", "--:", "--:", "--:", "--:"]),
        _stream_row("POST /chat/stream", s6["relayed"], ideal, s6["service_cpu_us_per_token"]),
        _stream_row("stand-in direct", s6["direct"], ideal, None),
        _stream_row(
            f"POST /chat/stream, {one['tokens_per_reply']}-word replies", one["service"], 0, None
        ),
        _stream_row(
            f"stand-in direct, {one['tokens_per_reply']}-word replies", one["direct"], 0, None
        ),
        "",
        f"S6: the stand-in sends {s6['tokens_per_reply']} words, the first "
        f"{s6['first_token_s'] * 1000:g} ms after the request and each next "
        f"{s6['interval_s'] * 1000:g} ms later. Ideal = streams x words / reply time = "
        f"{s6['streams']} x {s6['tokens_per_reply']} / {s6['reply_seconds']:g} s = "
        f"{ideal:,.0f} tokens/s (a new stream the moment the last ends). Tokens/s are the "
        "`delta` events (stand-in: words) received in the measured window; TTFT is from "
        "writing the request to reading the first one, by the same generator (its own "
        "process) for the service and the stand-in. Added TTFT = service - stand-in direct, "
        "one connection. CPU per token: the service's CPU time over the window's tokens "
        f"(the service used {_percent(s6['service_cpu_share'])} of its core; the stand-in "
        f"{_percent(share['relayed'])} of one, and {_percent(share['direct'])} when read "
        f"directly). Service peak RSS {s6['service_peak_rss_mib']:.0f} MiB; service CPU per "
        f"{one['tokens_per_reply']}-word reply at one connection "
        f"{_number(one.get('service_cpu_ms_per_reply'))} ms.",
        f"S6 Redis: {redis['replies']} replies one at a time, {redis['reply_ms_mean']:.0f} ms "
        f"each from request to `done`: {redis['round_trips_per_reply']:.2f} round trips per "
        f"reply ({commands}; commands the service's clients sent, by INFO commandstats less "
        f"those only its Lua scripts run; Redis counted {redis['reads_per_reply']:.2f} reads "
        "per reply).",
    ]


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def render(results: dict[str, Any]) -> str:
    meta, s = results["meta"], results["scenarios"]
    load = "/".join(f"{x:.1f}" for x in meta["load_average_before"])
    lines = [
        f"Benchmark ({meta['mode']} run, {meta['date']}, commit {meta['commit']}"
        f"{' + local changes' if meta['uncommitted_changes'] else ''})",
        f"machine: {meta['cpus']} x {meta['cpu_model']}; service pinned to CPU "
        f"{meta['service_cpus']}; load average before {load}; generator: {meta['generator']}"
        f"; {meta['plan']['duration']:g} s per run",
    ]
    if set(s) & {"s1", "s2", "s3", "s3b", "s4"}:
        lines += [
            "",
            _row(["scenario", "run", "req/s", "p50 ms", "p99 ms", "CPU ms/req", "errors", "notes"]),
            _row(["---"] * 2 + ["--:"] * 5 + ["---"]),
        ]
    if "s1" in s:
        lines += _s1_rows(s["s1"])
    if "s2" in s:
        s2 = s["s2"]
        lines.append(_run_row("S2 (1 conn)", "POST /chat/", s2["runs"]["chat"]))
        lines.append(
            _run_row(
                "S2 (1 conn)",
                "stub direct",
                s2["runs"]["stub"],
                f"same {s2['provider_request_bytes']:,} B provider request",
            )
        )
    if "s3" in s:
        s3 = s["s3"]
        lines.append(
            _run_row(
                f"S3 ({s3['clients']} clients)",
                f"POST /chat/, provider {s3['provider_delay_s']:g} s",
                dict(s3["run"], rps=s3["steady_rps"]),
                f"steady-state req/s (ideal {s3['ideal_rps']:g}); "
                f"peak RSS {s3['service_peak_rss_mib']:.0f} MiB",
            )
        )
    if "s3b" in s:
        s3b = s["s3b"]
        for workers, run in s3b["runs"].items():
            lines.append(
                _run_row(
                    f"S3b ({s3b['clients']} clients)",
                    f"POST /chat/, {workers} worker{'s' if workers != '1' else ''}, provider "
                    f"{s3b['provider_delay_s']:g} s",
                    dict(run["run"], rps=run["steady_rps"]),
                    f"steady-state req/s (ideal {s3b['ideal_rps']:g}); every CPU; total RSS "
                    f"end {run['service_rss_end_mib']:.0f} MiB, peak "
                    f"{run['service_peak_rss_mib']:.0f} MiB over {run['service_processes']} "
                    "process(es)",
                )
            )
    for length, entry in s.get("s4", {}).get("lengths", {}).items():
        lines.append(
            _run_row(
                f"S4 (max_messages {s['s4']['max_messages']})",
                f"POST /chat/, history {length}",
                entry["run"],
                f"{entry['provider_body_bytes_per_request']:,.0f} B to provider/request; "
                f"{entry['redis_round_trips_per_request']:.2f} Redis round trips/request",
            )
        )
    lines.append("")
    if "s5" in s:
        s5 = s["s5"]
        lines.append(
            f"S5: {s5['sessions']:,} sessions x {s5['messages_per_session']} messages of "
            f"{s5['message_chars']} characters: {s5['redis_bytes_per_message']:.0f} B per "
            f"message in Redis (used_memory delta; MEMORY USAGE says "
            f"{s5['memory_usage_per_message']:.0f}), stored entry "
            f"~{s5['stored_entry_bytes_approx']} B."
        )
    if "s6" in s:
        lines += [*_s6_lines(s["s6"]), ""]
    if "s1" in s:
        s1, runs = s["s1"], s["s1"]["runs"]
        per_round = "; ".join(
            f"{n}: /chat/ {r['chat']['rps']:,.0f}, bare {r['bare']['rps']:,.0f} "
            f"({_ratio(r['chat_over_bare'])})"
            for n, r in enumerate(s1["rounds"], 1)
        )
        lines.append(
            f"S1 rounds (/chat/ then /bench/bare, req/s): {per_round}. Target: the median of "
            f"the rounds' ratios, {_ratio(s1['chat_over_bare'])}."
        )
        lines.append(
            f"Load generator check: no-op {runs['noop']['rps']:,.0f} req/s and stub direct "
            f"{runs['stub']['rps']:,.0f} req/s against /chat/ {runs['chat']['rps']:,.0f} req/s."
        )
    lines += [
        "",
        _row(["scenario", "measure", "value", "target", "met"]),
        _row(["---", "---", "--:", "--:", "---"]),
    ]
    marks = {True: "yes", False: "**NO**", None: "-"}
    for target in targets(results):
        lines.append(
            _row([target.scenario, target.measure, target.value, target.goal, marks[target.met]])
        )
    wrk_ran = bool(set(s) & {"s1", "s2", "s3", "s3b", "s4"})
    if meta["mode"] != "full" or ("NOT wrk" in meta["generator"] and wrk_ran):
        lines += ["", "(smoke run: the numbers only show that the harness works)"]
    return "\n".join(lines)


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def _log_if_wide(axes: Any, values: list[float]) -> None:
    """A log scale when the bars span more than 30x, so that the small ones stay visible."""
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 30:
        axes.set_yscale("log")
        axes.set_ylabel(axes.get_ylabel() + " (log scale)")


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib  # the `bench` extra (also in `dev`)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["scenarios"]
    panels: list[tuple[str, list[str], list[dict[str, Any]], str]] = []
    if "s1" in s:
        panels.append(
            (
                f"S1 overhead ({s['s1']['connections']} conns; medians)",
                ["/chat/", "bare", "proxy", "no-op", "stub"],
                [s["s1"]["runs"][k] for k in ("chat", "bare", "proxy", "noop", "stub")],
                "requests/s",
            )
        )
    if "s2" in s:
        runs = s["s2"]["runs"]
        panels.append(
            ("S2 one connection", ["/chat/", "stub"], [runs["chat"], runs["stub"]], "requests/s")
        )
    if "s3" in s:
        s3, ms = s["s3"], 1000 * s["s3"]["provider_delay_s"]
        panels.append(
            (
                f"S3 provider {s3['provider_delay_s']:g} s, {s3['clients']} clients",
                ["/chat/", "ideal"],
                [
                    dict(s3["run"], rps=s3["steady_rps"]),
                    {"rps": s3["ideal_rps"], "p50_ms": ms, "p99_ms": ms},
                ],
                "requests/s",
            )
        )
    if "s3b" in s:
        s3b, ms = s["s3b"], 1000 * s["s3b"]["provider_delay_s"]
        many, one = s3b["runs"][str(s3b["workers"])], s3b["runs"]["1"]
        panels.append(
            (
                f"S3b provider {s3b['provider_delay_s']:g} s, {s3b['clients']} clients",
                [f"{s3b['workers']} workers", "1 worker", "ideal"],
                [
                    dict(many["run"], rps=many["steady_rps"]),
                    dict(one["run"], rps=one["steady_rps"]),
                    {"rps": s3b["ideal_rps"], "p50_ms": ms, "p99_ms": ms},
                ],
                "requests/s",
            )
        )
    if "s4" in s:
        lengths = s["s4"]["lengths"]
        panels.append(
            (
                f"S4 history length (max {s['s4']['max_messages']})",
                [f"{k} msgs" for k in lengths],
                [v["run"] for v in lengths.values()],
                "requests/s",
            )
        )
    if "s6" in s:
        s6 = s["s6"]

        def bar(run: dict[str, Any], tokens_per_s: float | None = None) -> dict[str, Any]:
            rate = run["tokens_per_second"] if tokens_per_s is None else tokens_per_s
            return {"rps": rate, "p50_ms": run["ttft_ms"]["p50"], "p99_ms": run["ttft_ms"]["p99"]}

        one, first = s6["ttft_one_connection"], 1000 * s6["first_token_s"]
        panels.append(
            (
                f"S6 {s6['streams']} streams (TTFT: 1 connection)",
                ["/chat/stream", "direct", "ideal"],
                [
                    bar(one["service"], s6["relayed"]["tokens_per_second"]),
                    bar(one["direct"], s6["direct"]["tokens_per_second"]),
                    {"rps": s6["ideal_tokens_per_s"], "p50_ms": first, "p99_ms": first},
                ],
                "tokens/s",
            )
        )
    ratios = _target_ratios(s)
    columns = len(panels) + ("s5" in s) + bool(ratios)
    figure, axes = plt.subplots(
        2,
        max(columns, 1),
        figsize=(max(4.4 * columns, 9.0), 8),  # wide enough for the title
        constrained_layout=True,
        squeeze=False,
    )
    colors = ["#3b75af", "#ef8636", "#519e3e", "#8d69b8", "#999999"]
    for column, (title, labels, runs, unit) in enumerate(panels):
        top, bottom = axes[0][column], axes[1][column]
        rps = [r["rps"] for r in runs]
        bars = top.bar(labels, rps, color=colors[: len(labels)])
        top.bar_label(bars, labels=[f"{v:,.0f}" for v in rps], fontsize=8)
        top.set_title(title, fontsize=10)
        top.set_ylabel(unit)
        xs = range(len(labels))
        width = 0.38
        p50 = [r["p50_ms"] for r in runs]
        p99 = [r["p99_ms"] for r in runs]
        b50 = bottom.bar([x - width / 2 for x in xs], p50, width, label="p50", color="#7fa7d0")
        b99 = bottom.bar([x + width / 2 for x in xs], p99, width, label="p99", color="#d0605e")
        bottom.bar_label(b50, labels=[_ms(v) for v in p50], fontsize=7)
        bottom.bar_label(b99, labels=[_ms(v) for v in p99], fontsize=7)
        bottom.set_xticks(list(xs), labels)
        bottom.set_ylabel("latency, ms")
        bottom.legend(fontsize=8)
        _log_if_wide(top, rps)
        _log_if_wide(bottom, p50 + p99)
    if ratios:
        _ratio_panel(axes[0][len(panels)], axes[1][len(panels)], ratios, s)
    if "s5" in s:
        s5 = s["s5"]
        top, bottom = axes[0][-1], axes[1][-1]
        values = [
            s5["raw_bytes_per_message"],
            s5["redis_bytes_per_message"],
            s5["target_bytes_per_message"],
        ]
        bars = top.bar(["text", "in Redis", "target"], values, color=["#999", "#3b75af", "#ccc"])
        top.bar_label(bars, labels=[f"{v:.0f}" for v in values], fontsize=8)
        top.set_title(f"S5 Redis bytes per {s5['message_chars']}-char message", fontsize=10)
        if s5["service_peak_rss_mib"] is not None:
            rss = [s5["service_peak_rss_mib"], 200e6 / 2**20]
            bars = bottom.bar(["peak RSS (S3)", "target"], rss, color=["#3b75af", "#ccc"])
            bottom.bar_label(bars, labels=[f"{v:.0f}" for v in rss], fontsize=8)
            bottom.set_ylabel("MiB")
    meta = results["meta"]
    figure.suptitle(
        f"chat-service benchmark, {meta['mode']} run {meta['date']}, {meta['cpus']} CPUs, "
        f"generator {meta['generator']}",
        fontsize=11,
    )
    figure.savefig(path, dpi=80)
    plt.close(figure)


def _target_ratios(s: dict[str, Any]) -> list[tuple[str, float, float]]:
    """The issue's ratio targets: (label, measured, target)."""
    found = []
    if "s1" in s and s["s1"]["chat_over_bare"] is not None:
        found.append(("S1 /chat/\nover bare", s["s1"]["chat_over_bare"], 0.8))
    if "s3" in s:
        found.append(("S3 over\nideal", s["s3"]["throughput_over_ideal"], 0.9))
    if "s3b" in s:
        s3b = s["s3b"]
        found.append(("S3b over\nideal", s3b["throughput_over_ideal"], 0.9))
        if s3b["workers_over_one"] is not None:
            found.append((f"{s3b['workers']} workers\nover 1", s3b["workers_over_one"], 1.7))
    if "s6" in s:
        found.append(("S6 over\nideal", s["s6"]["relayed_over_ideal"], 0.9))
    return found


def _ratio_panel(
    top: Any, bottom: Any, ratios: list[tuple[str, float, float]], s: dict[str, Any]
) -> None:
    """Top: each ratio target, measured (bar) against its goal (black tick). Bottom: S3b's
    total RSS, or nothing."""
    labels = [label for label, _, _ in ratios]
    measured = [value for _, value, _ in ratios]
    colors = ["#519e3e" if value >= goal else "#d0605e" for _, value, goal in ratios]
    bars = top.bar(labels, measured, color=colors)
    top.bar_label(bars, labels=[f"{v:.2f}x" for v in measured], fontsize=8)
    top.scatter(labels, [goal for _, _, goal in ratios], marker="_", s=600, color="black")
    top.set_title("ratio targets (black: goal)", fontsize=10)
    top.set_ylabel("ratio")
    top.tick_params(axis="x", labelsize=7)
    if "s3b" not in s:
        bottom.set_axis_off()
        return
    s3b = s["s3b"]
    names, end, peak = [], [], []
    for workers, run in s3b["runs"].items():
        names.append(f"{workers} worker{'s' if workers != '1' else ''}")
        end.append(run["service_rss_end_mib"])
        peak.append(run["service_peak_rss_mib"])
    xs, width = range(len(names)), 0.38
    b_end = bottom.bar([x - width / 2 for x in xs], end, width, label="end", color="#7fa7d0")
    b_peak = bottom.bar([x + width / 2 for x in xs], peak, width, label="peak", color="#d0605e")
    bottom.bar_label(b_end, labels=[f"{v:.0f}" for v in end], fontsize=7)
    bottom.bar_label(b_peak, labels=[f"{v:.0f}" for v in peak], fontsize=7)
    bottom.set_xticks(list(xs), names)
    bottom.set_ylabel("S3b service total RSS, MiB")
    bottom.legend(fontsize=8)


def write(results: dict[str, Any], text: str, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.md", out / "chart.png"]
    paths[0].write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(text + "\n", encoding="utf-8")
    chart(results, paths[2])
    return paths
