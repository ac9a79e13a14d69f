"""Background tasks, task listing and task-local state.

The threading module's vocabulary, re-expressed for tasks:

* a daemon thread       -> :func:`spawn`: a named background task that the
  runtime owns, keeps referenced (cpython#117379: unreferenced tasks can be
  garbage-collected mid-flight) and cancels at shutdown; its failure is logged,
  never silently lost;
* ``threading.enumerate`` / ``active_count`` -> :func:`live_tasks` /
  :func:`active_count`;
* ``threading.local``   -> :class:`TaskLocal`, built on contextvars;
* the stoppable thread's suspend / resume -> :class:`PauseSwitch`, pause
  points the task chooses (stop is cancellation).

Structured concurrency (anyio task groups) remains the first choice for work
whose lifetime a caller owns; ``spawn`` is for work that belongs to the
application as a whole.

``spawn``, ``live_tasks`` and ``active_count`` are about asyncio tasks: under
trio they raise :class:`~anycore.errors.BackendNotSupported`, naming the
task-group way.  :class:`TaskLocal` works everywhere (contextvars).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import anyio

from ._backend import BackgroundJob, require_asyncio
from ._runtime import current_runtime

__all__ = ["PauseSwitch", "TaskLocal", "active_count", "live_tasks", "spawn", "start_job"]

_USE_TASK_GROUPS = (
    "on trio, start background work in a task group that outlives it "
    "(async with anyio.create_task_group() as tg: tg.start_soon(fn))"
)

T = TypeVar("T")
logger = logging.getLogger("anycore.tasks")

# Tasks spawned without a runtime: referenced here until they finish.
_unowned: set[asyncio.Task[Any]] = set()


def _report(task: asyncio.Task[Any]) -> None:
    _unowned.discard(task)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        logger.error("background task %r failed", task.get_name(), exc_info=exc)


def spawn(fn: Callable[..., Awaitable[T]], *args: Any, name: str | None = None) -> asyncio.Task[T]:
    """Start ``fn(*args)`` as a named background task (a "daemon task").

    With a runtime the task is owned by it and cancelled in the ``TASKS`` phase
    of shutdown; without one it is kept referenced until it ends.  Either way
    an exception it raises is logged on the ``anycore.tasks`` logger.

    Returns:
        The :class:`asyncio.Task`; await or cancel it as usual.

    Raises:
        BackendNotSupported: called under trio (use a task group there).
    """
    require_asyncio("spawn()", _USE_TASK_GROUPS)

    async def runner() -> T:
        return await fn(*args)

    task_name = name or getattr(fn, "__qualname__", None) or repr(fn)
    task = asyncio.get_running_loop().create_task(runner(), name=task_name)
    runtime = current_runtime()
    if runtime is not None:
        runtime.track_task(task)
    else:
        _unowned.add(task)
    task.add_done_callback(_report)
    return task


def start_job(fn: Callable[[], Awaitable[object]], *, name: str) -> BackgroundJob:
    """Run ``fn()`` as a background job owned by the runtime (any backend).

    Internal helper of timers and other primitives that start work from a
    synchronous call; users have :func:`spawn` and task groups.
    """
    job = BackgroundJob(fn, name=name)
    runtime = current_runtime()
    if runtime is not None:
        runtime.track_job(job)
    return job


def live_tasks() -> list[asyncio.Task[Any]]:
    """The running loop's unfinished tasks, by name (``threading.enumerate``).

    Raises:
        BackendNotSupported: called under trio.
    """
    require_asyncio("live_tasks()", "on trio, see trio.lowlevel.current_root_task()")
    return sorted(asyncio.all_tasks(), key=lambda t: t.get_name())


def active_count() -> int:
    """How many tasks are alive on the running loop (``threading.active_count``).

    Raises:
        BackendNotSupported: called under trio.
    """
    require_asyncio("active_count()", "on trio, see trio.lowlevel.current_root_task()")
    return len(asyncio.all_tasks())


class TaskLocal:
    """Attributes local to a task and the tasks it starts (``threading.local``).

    Each task runs in a copy of its creator's context, so a task sees the
    values set before it was started, and what it sets stays its own::

        request = TaskLocal(user=None)

        async def handle(user):
            request.user = user      # visible in this task and its children
            await process()

    Args:
        **defaults: initial values, seen where nothing was set.
    """

    __slots__ = ("_defaults", "_var")

    def __init__(self, **defaults: Any) -> None:
        var: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
            f"TaskLocal@{id(self):x}"
        )
        object.__setattr__(self, "_var", var)
        object.__setattr__(self, "_defaults", MappingProxyType(dict(defaults)))

    def _values(self) -> Mapping[str, Any]:
        var: contextvars.ContextVar[Mapping[str, Any]] = object.__getattribute__(self, "_var")
        return var.get(object.__getattribute__(self, "_defaults"))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values()[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        # Copy-on-write: the mapping in a parent's context is never mutated.
        values = dict(self._values())
        values[name] = value
        object.__getattribute__(self, "_var").set(MappingProxyType(values))

    def __delattr__(self, name: str) -> None:
        values = dict(self._values())
        try:
            del values[name]
        except KeyError:
            raise AttributeError(name) from None
        object.__getattribute__(self, "_var").set(MappingProxyType(values))


class PauseSwitch:
    """Pause and resume a task at points it chooses (the stoppable thread's suspend).

    The classic stoppable thread checks flags in its loop: *stop* (here: cancel
    the task) and *suspend* / *resume*.  A coroutine cannot be frozen from
    outside between two arbitrary lines, and should not be: it may hold a lock
    or be half-way through a write.  So the task says where it may pause:
    ``await switch.checkpoint()`` returns at once while running and waits
    while paused.  Works on asyncio and trio (an anyio Event).

    ::

        switch = PauseSwitch()
        async def worker():
            while True:
                await switch.checkpoint()
                ...one step of work...
        switch.pause(); switch.resume(); task.cancel()
    """

    __slots__ = ("_paused", "_resumed", "pauses")

    def __init__(self) -> None:
        self._paused = False
        self._resumed: anyio.Event | None = None  # while paused
        self.pauses = 0  #: how many times pause() took effect

    @property
    def paused(self) -> bool:
        """Whether the switch is paused now."""
        return self._paused

    def pause(self) -> None:
        """Make the next :meth:`checkpoint` wait until :meth:`resume`."""
        if not self._paused:
            self._paused = True
            self._resumed = None
            self.pauses += 1

    def resume(self) -> None:
        """Let waiting and future checkpoints through."""
        self._paused = False
        event, self._resumed = self._resumed, None
        if event is not None:
            event.set()

    async def checkpoint(self) -> None:
        """Return at once while running; wait (cancellably) while paused."""
        while self._paused:
            if self._resumed is None:
                self._resumed = anyio.Event()
            await self._resumed.wait()
