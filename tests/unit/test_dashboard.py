"""docs/grafana/chat-service.json: a dashboard Grafana can import, whose every query names a
series this service exports (read from a real scrape after a chat and a stream), and which
has a panel for every chat_ family the service exports, so a new metric gets one."""

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from entrypoints.asgi import create_app
from entrypoints.config import CleanupSettings, LlmSettings, RedisSettings, Settings

pytestmark = pytest.mark.unit

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana" / "chat-service.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# The sample names a family of each type exports (no `_created`: the service disables them).
_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}

# chat_ families exported but shown by no panel, each with the reason.
NOT_ON_THE_DASHBOARD: dict[str, str] = {
    # Litestar's plugin makes it at the first 5xx only (so a scrape may lack it); the 5xx
    # ratio panel reads chat_requests_total by status_code, which always exists.
    "chat_requests_error": "the 5xx among chat_requests_total",
}

# What is not a metric name in PromQL: strings (label values, `$model`), label matchers,
# range selectors (`[$__rate_interval]`), grouping label lists, and function calls.
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])[A-Za-z_:][\w:]*(?![\w:])(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
_KEYWORDS |= {"group_left", "group_right", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    for pattern in (_STRINGS, _MATCHERS, _RANGES, _GROUPING):
        expr = pattern.sub(" ", expr)
    return {name for name in _IDENTIFIER.findall(expr) if name.lower() not in _KEYWORDS}


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside a collapsed row too."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


@pytest.fixture(scope="module")
def queries(dashboard: dict[str, Any]) -> dict[str, list[str]]:
    """Each panel's title and the expressions of its targets."""
    return {
        panel["title"]: [target["expr"] for target in panel["targets"]]
        for panel in all_panels(dashboard["panels"])
        if panel["type"] != "row"
    }


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Each chat_ family of a real scrape and the sample names it exports. A chat and a
    stream make Litestar's HTTP families; a family without samples yet (fallbacks, store
    calls: the memory store makes none) is known by its TYPE line."""
    settings = Settings(
        redis=RedisSettings(url="memory://"),
        cleanup=CleanupSettings(enabled=False),
        llm=LlmSettings(echo_word_seconds=0),
    )
    with TestClient(create_app(settings)) as client:
        assert client.post("/chat/", json={"message": "hi"}).status_code == 200
        assert client.post("/chat/stream", json={"message": "hi"}).status_code == 200
        scrape = client.get("/metrics")
    assert scrape.status_code == 200
    families: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(scrape.text):
        if not family.name.startswith("chat_"):
            continue
        names = {family.name + suffix for suffix in _SUFFIXES[family.type]}
        seen = {sample.name for sample in family.samples}
        assert seen <= names, (family.name, seen - names)
        families[family.name] = names
    return families


def test_the_dashboard_is_one_grafana_can_import(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"]
    assert dashboard["uid"]
    assert dashboard["schemaVersion"] >= 36
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    model = variables["model"]
    assert model["datasource"] == DATASOURCE
    assert model["query"]["query"] == model["definition"]
    assert model["definition"] == "label_values(chat_model_requests_total, model)"

    panels = list(all_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert any(panel["type"] == "row" for panel in panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= grid.keys(), panel["title"]
        assert min(grid["w"], grid["h"]) > 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert all(refs), panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_every_query_names_a_series_the_service_exports(
    queries: dict[str, list[str]], exported: dict[str, set[str]]
) -> None:
    series = set().union(*exported.values())
    for title, exprs in queries.items():
        for expr in exprs:
            names = metric_names(expr)
            assert names, (title, expr)
            assert all(name.startswith("chat_") for name in names), (title, expr)
            assert names <= series, (title, sorted(names - series))


def test_counters_are_rated_and_histograms_read_by_bucket(queries: dict[str, list[str]]) -> None:
    """rate() and increase() only over counters (a histogram's series are counters too), and
    each quantile from the rates of `_bucket` summed by `le`."""
    rated = re.compile(r"\b(?:rate|increase)\((\w+)")
    for title, exprs in queries.items():
        for expr in exprs:
            for name in rated.findall(expr):
                assert name.endswith(("_total", "_bucket", "_sum", "_count")), (title, expr)
            if "histogram_quantile" in expr:
                assert re.search(r"sum by \(le\b", expr), (title, expr)
                assert re.search(r"rate\(\w+_bucket\b", expr), (title, expr)
            for name in metric_names(expr):
                if name.endswith("_bucket"):
                    assert "histogram_quantile" in expr, (title, expr)


def test_every_family_the_service_exports_has_a_panel(
    queries: dict[str, list[str]], exported: dict[str, set[str]]
) -> None:
    shown = set().union(*(metric_names(expr) for exprs in queries.values() for expr in exprs))
    missing = {name for name, series in exported.items() if not series & shown}
    assert missing <= set(NOT_ON_THE_DASHBOARD), sorted(missing)


def test_metric_names_reads_promql_as_grafana_sends_it() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, operation) (rate(chat_store_duration_seconds_bucket"
        '{operation!="reply_log.wait", model=~"$model"}[$__rate_interval]))) '
        "/ on (operation) group_left chat_x_total or vector(0)"
    )
    assert metric_names(expr) == {"chat_store_duration_seconds_bucket", "chat_x_total"}
