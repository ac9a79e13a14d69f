"""Stress tests: heavy, minutes rather than seconds.

They run only when asked for: ``make test-stress`` (``pytest tests/stress -m
stress``); ``make test`` collects and skips them.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stress: a heavy load test (run with -m stress)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "stress" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="a stress test: run it with make test-stress (-m stress)")
    for item in items:
        if item.get_closest_marker("stress") is not None:
            item.add_marker(skip)
