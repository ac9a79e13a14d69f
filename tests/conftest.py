"""Test-suite wiring.

anycore's own pytest plugin gives the suite its fixtures (as it gives them to
users).  Every async test runs twice: on the default asyncio loop and on
uvloop, the plugin's loop factories, each wrapped to record what reaches the
loop's exception handler (pytest-asyncio's loop-factory hook parametrizes
them; the plugin's ``anycore_loops`` opt-in would do the same without the
recording).  Hypothesis runs without deadlines (the machines are shared and
noisy); CI gets more examples.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Mapping

import pytest
from hypothesis import HealthCheck, settings

pytest_plugins = ["anycore.testing.pytest_plugin"]

# Both loops, always: a machine without uvloop must not pass by running less.
LOOPS = ["asyncio", "uvloop"]

settings.register_profile(
    "dev", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


# What the loops' exception handlers were called with during the current test.
_loop_errors: list[dict[str, object]] = []


def _record_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    _loop_errors.append(context)
    loop.default_exception_handler(context)


def _watched(factory: Callable[[], asyncio.AbstractEventLoop]) -> asyncio.AbstractEventLoop:
    loop = factory()
    loop.set_exception_handler(_record_loop_error)
    return loop


@functools.cache
def _factories() -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    # Imported here, after pytest_plugins loaded (and assertion-rewrote) the plugin.
    from anycore.testing.pytest_plugin import loop_factories

    found = {name: functools.partial(_watched, f) for name, f in loop_factories(LOOPS).items()}
    assert list(found) == LOOPS, f"the suite runs on {LOOPS}; installed: {list(found)}"
    return found


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return _factories()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_loop_errors: the test expects the loop's exception handler to run"
    )


@pytest.fixture(autouse=True)
def _no_unhandled_loop_errors(request: pytest.FixtureRequest) -> object:
    """Fail a test during which the event loop's exception handler was called
    (a task's exception never retrieved, a callback that raised, ...)."""
    _loop_errors.clear()
    yield
    if _loop_errors and request.node.get_closest_marker("allow_loop_errors") is None:
        messages = [str(c.get("message")) + ": " + repr(c.get("exception")) for c in _loop_errors]
        _loop_errors.clear()
        pytest.fail(f"the loop's exception handler was called: {messages}")


# -- leak checks ------------------------------------------------------------------

_INFRASTRUCTURE = ("forkserver", "resource_tracker", "semaphore_tracker", "anycore-guard")


def _children() -> dict[int, str]:
    """This process's children: pid -> state letter and command line."""
    me = str(os.getpid())
    found: dict[int, str] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:  # pragma: no cover - not Linux
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces; unlike
        # the command line, it survives in a zombie.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[1] == me and not any(word in cmdline for word in _INFRASTRUCTURE):
            found[int(entry)] = f"{fields[0]} ({comm}) {cmdline.strip()}"
    return found


@pytest.fixture(autouse=True)
def _no_leaked_child_processes() -> object:
    """Fail a test that leaves a child process (alive or zombie) behind."""
    before = set(_children())
    yield
    import time

    deadline = time.monotonic() + 5.0
    leaked = {pid: desc for pid, desc in _children().items() if pid not in before}
    while leaked and time.monotonic() < deadline:
        time.sleep(0.02)  # children being reaped right now: poll a bounded time
        leaked = {pid: desc for pid, desc in _children().items() if pid not in before}
    if leaked:
        pytest.fail(f"test left child processes behind: {leaked}")
