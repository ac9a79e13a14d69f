"""Stress tests: heavy, minutes rather than seconds (``pytest tests/stress -m stress``)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stress: a heavy load test (run with -m stress)")
