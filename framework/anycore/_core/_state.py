"""Cross-cutting state: the few values several layers read, in one leaf module.

Owns the connection context (set by the stream drivers on every entry into
handler code), the worker id (set in pool workers and child processes), the
exit-flush hooks (run by anycore's children before they exit) and the link
between the runtime and the layers below it that must take part in its
shutdown without loading it (the runtime registers how to find the running
one and announces each one it opens).  The logging layer reads them all; the
networking, process and runtime layers write them.  Keeping them here, in
a module that imports nothing of anycore but the shutdown phases, lets each
side import them by name without loading the other: ``from anycore.logging
import FileHandler`` loads neither the child-process toolkit nor the
runtime, and the framers and drivers do not load logging.

Rejected: reaching the owning modules through ``sys.modules`` (a string
import that type checkers and readers cannot follow), and each layer keeping
its own copy (the values must be the same objects).
"""

from __future__ import annotations

import contextvars
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Protocol

from ._phases import Phase

__all__ = [
    "WORKER_ID",
    "ShutdownSteps",
    "connection_context",
    "register_exit_flush",
    "run_exit_flush",
    "running_runtime",
    "runtime_lookup",
    "runtime_open_hooks",
    "runtime_opened",
]

#: The logging context of the connection whose handler is running: a dict with
#: ``connection_id`` and ``peer`` (``None`` outside connection callbacks).
connection_context: contextvars.ContextVar[dict[str, object] | None] = contextvars.ContextVar(
    "anycore_connection", default=None
)

#: The id of the pool worker or child process running this code (``None`` in
#: the parent).
WORKER_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "anycore.worker_id", default=None
)

_EXIT_FLUSH: list[Callable[[], object]] = []


def register_exit_flush(fn: Callable[[], object]) -> Callable[[], object]:
    """Run *fn* in this process before an anycore child or pool worker exits.

    multiprocessing ends children with ``os._exit``, which skips ``atexit``
    and every other hook, so a log handler with buffered records would lose
    them.  anycore's children call these hooks (newest first) on every exit
    they control: return, exception, ``sys.exit``, SIGTERM, and a pool worker
    retiring or shutting down.  Nothing runs on SIGKILL or a segfault.

    Args:
        fn: a callable taking no arguments; its exceptions are printed, not raised.

    Returns:
        A function that unregisters *fn*.
    """
    _EXIT_FLUSH.append(fn)

    def unregister() -> None:
        try:
            _EXIT_FLUSH.remove(fn)
        except ValueError:
            pass

    return unregister


def run_exit_flush() -> None:
    """Run the registered exit-flush hooks, newest first, then flush stdio."""
    for fn in reversed(list(_EXIT_FLUSH)):
        try:
            fn()
        except Exception:
            traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


class ShutdownSteps(Protocol):
    """What a layer below the runtime uses of it: adding a shutdown step."""

    def add_shutdown_step(
        self, phase: Phase, name: str, step: Callable[[], Awaitable[None]]
    ) -> object: ...


#: How to find the runtime of the running loop: one function, appended by
#: ``anycore._core._runtime`` when it loads (empty before: no runtime exists).
runtime_lookup: list[Callable[[], ShutdownSteps | None]] = []

#: Called with the loop of every runtime that opens (logging binds its
#: handlers' flush to it).
runtime_open_hooks: list[Callable[[object], None]] = []


def running_runtime() -> ShutdownSteps | None:
    """The runtime bound to the running loop, or ``None`` (without loading it)."""
    return runtime_lookup[0]() if runtime_lookup else None


def runtime_opened(loop: object) -> None:
    """Announce a runtime opening on ``loop`` to :data:`runtime_open_hooks`."""
    for hook in list(runtime_open_hooks):
        hook(loop)
