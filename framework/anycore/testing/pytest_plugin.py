"""A pytest plugin for testing code built on anycore.

Installed with anycore, it is loaded by pytest through the ``pytest11``
entry point named ``anycore.testing.pytest_plugin``: its fixtures are there
without a conftest.  (Listing it in ``pytest_plugins``, or ``-p
anycore.testing.pytest_plugin``, loads the same plugin once; ``-p
no:anycore.testing.pytest_plugin`` turns it off.)  It gives:

* ``log_capture``: what the test logs, stdlib and structlog, as dicts with
  their context (:func:`~anycore.testing.capture_logs`);
* ``loopback_server``: ``await loopback_server(Handler)`` starts a server on
  a free loopback port, closed when the test ends;
* ``anycore_runtime``: an open :class:`~anycore.Runtime` for
  the test (signals left alone), shut down in order when the test ends;
* ``fake_clock``: a :class:`~anycore.testing.FakeClock`, whose ``run`` drives
  a coroutine function on virtual time from a plain (sync) test;
* ``no_leaked_children``: fails the test if it leaves a child process behind;
* opt-in, with pytest-asyncio: the ini option ``anycore_loops`` (say
  ``"asyncio uvloop"``) runs every async test once per loop named there,
  through pytest-asyncio's loop-factory hook.  Unset (the default), each
  async test runs once, on the loop the user configured.

The async fixtures are plain ``@pytest.fixture`` async generators, so both
pytest-asyncio (in ``auto`` mode) and anyio's pytest plugin
(``@pytest.mark.anyio``, on asyncio and trio) run them; each one lives in the
test's own loop (pytest-asyncio: ``asyncio_default_fixture_loop_scope =
function``), so none is "attached to a different loop" than its test.
pytest-asyncio runs a fixture's setup and teardown in different tasks: what
the fixtures start (a runtime, a server's accept loop) lives in a background
task of its own, so every cancel scope is left by the task that entered it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import anyio
import pytest

from .._core._backend import BackgroundJob
from .._core._runtime import Runtime, open_runtime
from .._net._handler import Handler
from .._net._server import Server, serve
from ..errors import RuntimeStateError
from ._clock import FakeClock
from ._logs import LogCapture, capture_logs

__all__ = [
    "anycore_runtime",
    "fake_clock",
    "log_capture",
    "loop_factories",
    "loopback_server",
    "no_leaked_children",
]

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
        "run every async test once per event loop named here (space-separated: "
        "asyncio uvloop); unset: once, on the loop pytest-asyncio is configured with",
        default="",
    )


class _Loops:
    """Registered only when ``anycore_loops`` is set: pytest-asyncio then
    parametrizes every async test over these loops."""

    def __init__(self, factories: dict[str, LoopFactory]) -> None:
        self.factories = factories

    def pytest_asyncio_loop_factories(
        self, config: pytest.Config, item: pytest.Item
    ) -> Mapping[str, LoopFactory]:
        return self.factories


def pytest_configure(config: pytest.Config) -> None:
    names = str(config.getini("anycore_loops")).split()
    if names:
        if not config.pluginmanager.hasplugin("asyncio"):
            raise pytest.UsageError(
                "anycore_loops needs pytest-asyncio (pip install pytest-asyncio); "
                "with anyio's plugin, parametrize the anyio_backend fixture instead"
            )
        factories = loop_factories(names)
        if not factories:
            raise pytest.UsageError(f"anycore_loops = {' '.join(names)}: none is installed")
        config.pluginmanager.register(_Loops(factories), "anycore-loops")


@pytest.fixture
def log_capture() -> Iterator[LogCapture]:
    """What the test logs (stdlib and structlog), as dicts with their context."""
    with capture_logs() as logs:
        yield logs


@pytest.fixture
async def loopback_server() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """``await loopback_server(Handler, **serve_options)``: a started server on
    ``tcp://127.0.0.1:0`` (``server.endpoints[0].port``); closed at the end."""
    servers: list[Server] = []

    async def start(
        handler_factory: Callable[[], Handler],
        endpoint: str = "tcp://127.0.0.1:0",
        **options: Any,
    ) -> Server:
        server = serve(handler_factory, endpoint, **options)
        await server.start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in reversed(servers):
            await server.aclose()


@pytest.fixture
async def anycore_runtime() -> AsyncIterator[Runtime]:
    """An open runtime for the test; its shutdown phases run when it ends."""
    # pytest-asyncio runs a fixture's setup and teardown in different tasks,
    # and the runtime's cancel scope must be left by the task that entered
    # it: so the runtime lives in a task of its own for the test's duration.
    opened = anyio.Event()
    finished = anyio.Event()
    box: list[Runtime] = []

    async def host() -> None:
        try:
            async with open_runtime(handle_signals=False) as runtime:
                box.append(runtime)
                opened.set()
                await finished.wait()
        finally:
            opened.set()

    job = BackgroundJob(host, name="anycore_runtime fixture")
    await opened.wait()
    if not box:
        await job.wait()
        raise RuntimeStateError(f"the test runtime did not open: {job.exception!r}")
    try:
        yield box[0]
    finally:
        finished.set()
        await job.wait()


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
