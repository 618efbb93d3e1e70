"""Markers by folder, so `pytest -m unit` (or integration, e2e) runs one layer alone."""

from pathlib import Path

import pytest

pytest_plugins = ["tests.support.redis_server", "tests.support.provider_stub"]

_LAYERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for layer in _LAYERS:
            if layer in parts:
                item.add_marker(layer)
