# Design: which async library is running us.
#
# Servers, clients and datagram endpoints pick a driver by backend: the fast
# asyncio.Protocol path when an asyncio loop (stdlib or uvloop) runs the caller,
# the portable anyio path otherwise (trio).  This module owns that one question.
#
# Rejected: the library-sniffing package that trio depends on.  anyio no longer
# depends on it and anycore's runtime dependencies are uvloop, anyio and
# structlog only; it is present in dev only because trio pulls it in.
# Rejected: anyio's private ``get_async_backend``.
#
# Trio is asked first: in trio's guest mode an asyncio loop is also running in
# the thread, but the caller is a trio task and needs the portable path.
#
# It also owns the two helpers every primitive uses to be portable:
# ``require_asyncio`` (a clear BackendNotSupported at the call, never a bare
# "no running event loop") and ``BackgroundJob``, work that outlives the call
# that starts it (a timer, a server's accept loops) run in a task of its own,
# so that every cancel scope and task group it opens is entered and exited in
# that one task (trio checks this: "Cancel scope stack corrupted").  On
# asyncio the job is an asyncio task, on trio a system task.
#
# And ``running_loop()``: the running asyncio loop, or on trio a stand-in
# (``TrioLoop``) with the four loop methods anycore's thread-safe primitives
# use (``create_future``, ``call_soon_threadsafe``, ``is_closed``,
# ``is_running``) and futures that trio tasks can await.  That keeps the
# queues' and locks' hand-off logic one piece of code for both libraries.
# Rejected: a second, trio-only implementation of each primitive.

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
from asyncio.events import _get_running_loop
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Literal, cast

import anyio

from ..errors import BackendNotSupported, RuntimeStateError

__all__ = [
    "BackgroundJob",
    "asyncio_loop",
    "current_backend",
    "loop_key",
    "require_asyncio",
    "running_loop",
    "running_on_asyncio",
]

logger = logging.getLogger("anycore.tasks")

Backend = Literal["asyncio", "trio"]


def current_backend() -> Backend:
    """Name the async library running the current task.

    Returns:
        ``"trio"`` inside a trio task (guest mode included), ``"asyncio"``
        inside an asyncio task (the stdlib loop or uvloop).

    Raises:
        RuntimeError: called outside any running event loop.
    """
    trio = sys.modules.get("trio")  # never imported here: trio is optional
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return "trio"
    asyncio.get_running_loop()  # raises RuntimeError outside a loop
    return "asyncio"


def running_on_asyncio() -> bool:
    """Whether the fast asyncio.Protocol path can serve the caller.

    Returns:
        True inside an asyncio task, False inside a trio task.

    Raises:
        RuntimeError: called outside any running event loop.
    """
    return current_backend() == "asyncio"


def loop_key() -> object | None:
    """What identifies the running event loop: the asyncio loop, or trio's run
    token; ``None`` outside any loop."""
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            token: object = trio.lowlevel.current_trio_token()
        except RuntimeError:
            pass
        else:
            return token
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def require_asyncio(what: str, instead: str) -> None:
    """Raise :class:`BackendNotSupported` unless an asyncio loop runs the caller.

    Args:
        what: the primitive, as the user called it (``"spawn()"``).
        instead: what to use on trio.

    Raises:
        BackendNotSupported: the caller is a trio task.
        RuntimeStateError: no event loop runs the caller at all.
    """
    try:
        backend = current_backend()
    except RuntimeError:
        raise RuntimeStateError(f"{what} must be called in async code (no loop runs)") from None
    if backend != "asyncio":
        raise BackendNotSupported(f"{what} needs asyncio (or uvloop), not {backend}; {instead}")


def asyncio_loop(what: str, instead: str) -> asyncio.AbstractEventLoop:
    """The running asyncio loop, or the clear error :func:`require_asyncio` gives."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        require_asyncio(what, instead)
        raise  # pragma: no cover - require_asyncio raised already


class TrioFuture:
    """The part of :class:`asyncio.Future` anycore's primitives use, for trio.

    Resolved in the trio thread only (threads go through
    :meth:`TrioLoop.call_soon_threadsafe`).  A task cancelled while awaiting
    it cancels it, as with asyncio futures.
    """

    __slots__ = ("_cancelled", "_event", "_exception", "_result")

    def __init__(self) -> None:
        import trio

        self._event = trio.Event()
        self._result: Any = None
        self._exception: BaseException | None = None
        self._cancelled = False

    def done(self) -> bool:
        return self._event.is_set()

    def cancelled(self) -> bool:
        return self._cancelled

    def set_result(self, result: Any) -> None:
        if self._event.is_set():
            raise asyncio.InvalidStateError("the future is done already")
        self._result = result
        self._event.set()

    def set_exception(self, exception: BaseException) -> None:
        if self._event.is_set():
            raise asyncio.InvalidStateError("the future is done already")
        self._exception = exception
        self._event.set()

    def cancel(self) -> bool:
        if self._event.is_set():
            return False
        self._cancelled = True
        self._event.set()
        return True

    def result(self) -> Any:
        if self._cancelled:
            raise asyncio.CancelledError
        if self._exception is not None:
            raise self._exception
        return self._result

    async def _wait(self) -> Any:
        try:
            await self._event.wait()
        except BaseException:
            self.cancel()
            raise
        return self.result()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._wait().__await__()


class TrioLoop:
    """What anycore's thread-safe primitives need of a loop, for one trio run."""

    def __init__(self, token: Any) -> None:
        self._token = token
        self._closed = False

    def create_future(self) -> TrioFuture:
        return TrioFuture()

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> None:
        import trio

        try:
            self._token.run_sync_soon(callback, *args)
        except trio.RunFinishedError:
            self._closed = True
            raise RuntimeError("the trio run has finished") from None

    def is_closed(self) -> bool:
        if not self._closed:
            try:
                self.call_soon_threadsafe(_nothing)
            except RuntimeError:
                pass
        return self._closed

    def is_running(self) -> bool:
        return not self.is_closed()


def _nothing() -> None:
    pass


_trio_loop_var: Any = None  # a trio RunVar, made when trio is first seen


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop; inside a trio run, its :class:`TrioLoop`.

    The trio stand-in has only the loop methods listed in :class:`TrioLoop`
    (it is typed as a loop for the primitives that call those).  ``None``
    outside any loop.
    """
    loop = _get_running_loop()
    if loop is not None:
        return loop
    trio = sys.modules.get("trio")
    if trio is None:
        return None
    try:
        token = trio.lowlevel.current_trio_token()
    except RuntimeError:
        return None
    global _trio_loop_var
    if _trio_loop_var is None:
        _trio_loop_var = trio.lowlevel.RunVar("anycore_trio_loop")
    stand_in = _trio_loop_var.get(None)
    if stand_in is None:
        stand_in = TrioLoop(token)
        _trio_loop_var.set(stand_in)
    return cast(asyncio.AbstractEventLoop, stand_in)


# Jobs running on asyncio: referenced here until they end (cpython#117379).
_jobs: set[asyncio.Task[None]] = set()


class BackgroundJob:
    """``await fn()`` in a task of its own, outside the caller's scopes.

    The job's failure is logged on ``anycore.tasks`` and kept in
    :attr:`exception`; :meth:`cancel` stops it; awaiting the job (or
    :meth:`wait`) waits until it has ended.  Create it inside a running loop
    (in a task or in a loop callback).
    """

    def __init__(self, fn: Callable[[], Awaitable[object]], name: str) -> None:
        self.name = name
        self.exception: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        self._fn = fn
        # Made in the job's task: outside a task (a loop callback) anyio cannot.
        self._scope: anyio.CancelScope | None = None
        self._cancelled = False
        self._done = anyio.Event()
        if current_backend() == "trio":
            import trio

            trio.lowlevel.spawn_system_task(
                self._run, name=name, context=contextvars.copy_context()
            )
        else:
            task = asyncio.get_running_loop().create_task(self._run(), name=name)
            _jobs.add(task)
            task.add_done_callback(_jobs.discard)
            self.task = task

    async def _run(self) -> None:
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                if self._cancelled:
                    scope.cancel()
                await self._fn()
        except Exception as exc:
            self.exception = exc
            logger.error("background task %r failed", self.name, exc_info=exc)
        finally:
            self._done.set()

    def cancel(self) -> None:
        """Cancel the job (idempotent; nothing happens once it has ended)."""
        self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()

    def done(self) -> bool:
        """Whether the job has ended."""
        return self._done.is_set()

    async def wait(self) -> None:
        """Wait until the job has ended (however it ended)."""
        await self._done.wait()

    def __await__(self) -> Generator[Any, None, None]:
        return self.wait().__await__()
