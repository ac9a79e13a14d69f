"""Who flushes anycore's log handlers, and when.

Owns the process-wide registry of live anycore handlers and the hooks that
drain them: the runtime's ``Phase.LOGS`` shutdown step (registered the first
time a handler is used on a loop that has a runtime), ``atexit``, fork
(handlers reset their writer in the child), multiprocessing children (their
exit path skips ``atexit``) and anycore's own child machinery
(the exit-flush hooks of ``anycore._core._state``).

Rejected: one global writer thread for every sink (a slow sink would delay
the others, and order per handler is all that is promised) and flushing from
``__del__`` (runs at arbitrary times, often after the interpreter started
tearing modules down).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import anyio

from .._core import _state
from .._core._phases import Phase

__all__ = ["aflush_all", "close_all", "flush_all", "register", "unregister"]


class _Managed(Protocol):
    def wait_flushed(self, timeout: float | None = None) -> bool: ...
    async def aflush(self, timeout: float | None = None) -> bool: ...
    def close(self) -> None: ...
    def _after_fork_child(self) -> None: ...


_handlers: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()
_last_loop: object = None
_runtimes: weakref.WeakSet[Any] = weakref.WeakSet()
# Loops anycore runs for itself (the child-record listener): never bound to.
private_loops: weakref.WeakSet[Any] = weakref.WeakSet()
# Called with a timeout before handlers are flushed (the listener reads what
# children already sent, so that it is flushed too).
pre_flush_hooks: list[Callable[[float], None]] = []
# Set by anycore.logging.configure / structured_formatter: records get
# rendered by structlog in this process (children then only route theirs).
structlog_configured = False


def register(handler: _Managed) -> None:
    """Track ``handler`` so that shutdown, exit and fork hooks reach it."""
    with _lock:
        _handlers.add(handler)
    _maybe_install_mp_hooks()
    loop = asyncio._get_running_loop()
    if loop is not None:
        note_loop(loop)


def unregister(handler: _Managed) -> None:
    """Stop tracking ``handler`` (it was closed)."""
    with _lock:
        _handlers.discard(handler)


def _live() -> list[Any]:
    with _lock:
        return list(_handlers)


def note_loop(loop: object) -> None:
    """Called when a handler is used on a loop not seen before.

    Registers one ``Phase.LOGS`` step with that loop's runtime, if it has one,
    which drains every anycore handler without blocking the loop.
    """
    global _last_loop
    _last_loop = loop
    if loop in private_loops:
        return
    # Found through _state: no runtime exists before its module was loaded,
    # and loading it here would cost the loop tens of milliseconds for nothing.
    runtime = _state.running_runtime()
    if runtime is None or runtime in _runtimes:
        return
    _runtimes.add(runtime)
    runtime.add_shutdown_step(Phase.LOGS, "anycore.logging", _runtime_logs_step)


def last_loop() -> object:
    """The loop :func:`note_loop` saw last (a cheap identity check for emit)."""
    return _last_loop


async def aflush_all(timeout: float | None = None) -> None:
    """Drain every live anycore handler without blocking the loop."""
    for hook in list(pre_flush_hooks):
        with contextlib.suppress(Exception):
            await anyio.to_thread.run_sync(hook, 5.0 if timeout is None else timeout)
    handlers = _live()
    if handlers:
        await asyncio.gather(*(h.aflush(timeout) for h in handlers), return_exceptions=True)


async def _runtime_logs_step() -> None:
    # The loop is about to close: drain, then let loop-bound handlers drop
    # their sender tasks and connections (they bind again on a later loop).
    await aflush_all()
    for handler in _live():
        detach = getattr(handler, "_adetach", None)
        if detach is not None:
            with contextlib.suppress(Exception):
                await detach()


def flush_all(timeout: float | None = 5.0) -> None:
    """Drain every live anycore handler, blocking this thread.

    This is the function child processes call right before ``os._exit``.
    """
    _run_pre_flush_hooks(5.0 if timeout is None else timeout)
    for handler in _live():
        with contextlib.suppress(Exception):
            handler.wait_flushed(timeout)


def close_all() -> None:
    """Flush and close every live anycore handler (what ``atexit`` runs)."""
    _run_pre_flush_hooks(5.0)
    for handler in _live():
        try:
            handler.close()
        except Exception as exc:  # pragma: no cover - defensive at exit
            sys.stderr.write(f"anycore.logging: closing {handler!r} failed: {exc!r}\n")


def _run_pre_flush_hooks(timeout: float) -> None:
    for hook in list(pre_flush_hooks):
        with contextlib.suppress(Exception):
            hook(timeout)


def _after_fork_child() -> None:
    global _last_loop
    _last_loop = None
    pre_flush_hooks.clear()
    for handler in list(_handlers):
        handler._after_fork_child()


class _MPHook:
    """multiprocessing's exit path (``os._exit`` after finalizers) flushes us."""

    def install_finalizer(self) -> None:
        import multiprocessing.util as mpu

        mpu.Finalize(None, flush_all, exitpriority=10)

    def after_fork(self) -> None:
        self.install_finalizer()


_mp_hook = _MPHook()


def _install_process_hooks() -> None:
    atexit.register(close_all)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_maybe_install_mp_hooks, after_in_child=_after_fork_child)
    _maybe_install_mp_hooks()
    _state.register_exit_flush(flush_all)  # anycore's children run it before they exit


_mp_installed = False


def _maybe_install_mp_hooks() -> None:
    # Only once multiprocessing is in use: importing it costs ~20 ms.  The
    # before-fork hook catches a multiprocessing import that came after ours.
    global _mp_installed
    if _mp_installed or "multiprocessing" not in sys.modules:
        return
    _mp_installed = True
    import multiprocessing.util as mpu

    # Spawned/forkserver children run this at import; forked children get the
    # finalizer from the after-fork hook (the fork bootstrap clears the
    # finalizer registry it inherited).
    _mp_hook.install_finalizer()
    mpu.register_after_fork(_mp_hook, _MPHook.after_fork)


_install_process_hooks()
_state.runtime_open_hooks.append(note_loop)
