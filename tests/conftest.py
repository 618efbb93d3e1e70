"""Markers by folder, so `pytest -m unit` (or integration, e2e) runs one layer alone; how many
pytest-xdist workers `-n auto` (pyproject's addopts) starts."""

import os
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.support.redis_server",
    "tests.support.redis_tls",
    "tests.support.redis_cluster",
    "tests.support.redis_sentinel",
    "tests.support.provider_stub",
]

_LAYERS = ("unit", "integration", "e2e")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """Two workers per core: most of a test's time is spent waiting on the services, Redis
    servers and browsers it starts, so a second worker per core keeps the cores busy (on 2
    cores the suite took 2.6 min with 4 workers, about 4 with 2). `--dist loadfile` keeps a
    file on one worker, so a run of one file gets none: it runs in this process, as without
    xdist. PYTEST_XDIST_AUTO_NUM_WORKERS, when set, decides instead (None defers to xdist)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    files = {arg.split("::", 1)[0] for arg in config.args}
    if len(files) == 1 and Path(config.invocation_params.dir, *files).is_file():
        return 0
    return 2 * len(os.sched_getaffinity(0))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for layer in _LAYERS:
            if layer in parts:
                item.add_marker(layer)
