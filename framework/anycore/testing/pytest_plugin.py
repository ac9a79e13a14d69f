"""A pytest plugin for testing code built on anycore.

Enable it in a ``conftest.py``::

    pytest_plugins = ["anycore.testing.pytest_plugin"]

It needs pytest-asyncio (>= 1.4) and gives:

* every async test run once per loop named by the ini option
  ``anycore_loops`` (default ``"asyncio uvloop"``; uvloop is skipped where it
  is not installed), through pytest-asyncio's loop-factory hook;
* ``anycore_runtime``: an open :class:`~anycore.Runtime` for the test (signals
  left alone), shut down in order when the test ends;
* ``fake_clock``: a :class:`~anycore.testing.FakeClock`, whose ``run`` drives
  a coroutine function on virtual time from a plain (sync) test;
* ``no_leaked_children``: fails the test if it leaves a child process behind.

Every async fixture here states its loop scope (``function``), so it never
ends up "attached to a different loop" than the test using it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import pytest
import pytest_asyncio

from .._runtime import Runtime, open_runtime
from ._clock import FakeClock

__all__ = ["anycore_runtime", "fake_clock", "loop_factories", "no_leaked_children"]

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factories(names: list[str]) -> dict[str, LoopFactory]:
    """Loop factories for the given loop names ("asyncio", "uvloop").

    uvloop is left out where it is not installed.

    Raises:
        ValueError: an unknown loop name.
    """
    factories: dict[str, LoopFactory] = {}
    for name in names:
        if name == "asyncio":
            factories[name] = asyncio.new_event_loop
        elif name == "uvloop":
            try:
                import uvloop
            except ImportError:
                continue
            factories[name] = uvloop.new_event_loop
        else:
            raise ValueError(f"unknown loop {name!r} in anycore_loops (asyncio, uvloop)")
    return factories


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "anycore_loops",
        "event loops every async test runs on (space-separated: asyncio uvloop)",
        default="asyncio uvloop",
    )


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, LoopFactory]:
    names = str(config.getini("anycore_loops")).split()
    return loop_factories(names or ["asyncio"])


@pytest_asyncio.fixture(loop_scope="function")
async def anycore_runtime() -> AsyncIterator[Runtime]:
    """An open runtime for the test; its shutdown phases run when it ends."""
    # pytest-asyncio runs a fixture's setup and teardown in different tasks,
    # and the runtime's cancel scope must be left by the task that entered
    # it: so the runtime lives in a task of its own for the test's duration.
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[Runtime] = loop.create_future()
    finished = asyncio.Event()

    async def host() -> None:
        async with open_runtime(handle_signals=False) as runtime:
            opened.set_result(runtime)
            await finished.wait()

    task = loop.create_task(host(), name="anycore_runtime fixture")
    waiting: set[asyncio.Future[Any]] = {opened, task}
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if not opened.done():
        await task  # it failed before opening: raise its error
    try:
        yield opened.result()
    finally:
        finished.set()
        await task


@pytest.fixture
def fake_clock() -> FakeClock:
    """Virtual time: ``fake_clock.run(main)`` runs ``main`` on a jumping clock."""
    return FakeClock()


def _children() -> set[int]:
    me = str(os.getpid())
    found = set()
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[1] == me and b"forkserver" not in cmdline and b"resource_tracker" not in cmdline:
            found.add(int(entry))
    return found


@pytest.fixture
def no_leaked_children() -> Iterator[None]:
    """Fail the test if a child process it started is still there (Linux)."""
    before = _children()
    yield
    deadline = time.monotonic() + 5.0
    leaked = _children() - before
    while leaked and time.monotonic() < deadline:
        time.sleep(0.02)  # a child being reaped right now: poll a bounded time
        leaked = _children() - before
    if leaked:
        pytest.fail(f"the test left child processes behind: {sorted(leaked)}")
