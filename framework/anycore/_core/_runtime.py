"""The per-loop runtime: loop selection, ordered shutdown, signal policy.

One :class:`Runtime` is bound to one event loop.  Components (servers,
supervisors, pools, log sinks) register *shutdown steps* in a :class:`Phase`;
shutdown runs the phases in order, each step under the runtime's deadline, and
whatever does not finish in time is cancelled and reported.  Shutdown starts
when main returns, when SIGINT/SIGTERM arrives (if the runtime owns signals),
or when :meth:`Runtime.shutdown` is called.

``anycore.run()`` is ``asyncio.Runner`` with a loop factory (uvloop when
installed) plus a runtime around main.  Loop *policies* are deliberately not
used: they are deprecated from Python 3.14 on.  An application that runs its
own loop gets the same runtime with ``async with open_runtime():``; without
one, every primitive cleans up in its own scope and nothing here is needed.

``open_runtime`` also works under trio (through anyio): the runtime is keyed
by ``loop_key()`` (the asyncio loop, or trio's run token), the shutdown runs
in a ``BackgroundJob`` and the signal policy on anyio's signal receiver; only
the asyncio-task parts (``spawn``, ``Runtime.tasks``) stay asyncio's.

The body of ``open_runtime`` (main) runs inside an anyio cancel scope that the
shutdown sequence cancels after servers have stopped accepting and drained.
Rejected: cancelling the host task directly, which cannot be told apart from
an outside cancellation once it reaches ``__aexit__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import anyio

from ..errors import LoopUnavailable, RuntimeStateError
from . import _state
from ._backend import BackgroundJob, loop_key
from ._phases import Phase

__all__ = [
    "GracefulExit",
    "Phase",
    "Runtime",
    "ShutdownReport",
    "current_runtime",
    "open_runtime",
    "run",
]

T = TypeVar("T")
LoopName = Literal["auto", "uvloop", "asyncio"]

logger = logging.getLogger("anycore.runtime")


class GracefulExit(SystemExit):
    """Raised by :func:`run` when a graceful shutdown cancelled main.

    It is a :class:`SystemExit` with status 0, so an uncaught one ends the
    process quietly and successfully.  ``signal`` is the signal that started
    the shutdown, or ``None`` when :meth:`Runtime.shutdown` was called.
    """

    def __init__(self, sig: int | None) -> None:
        super().__init__(0)
        self.signal = sig


@dataclass(frozen=True)
class StepResult:
    """How one shutdown step ended."""

    phase: Phase
    name: str
    outcome: Literal["done", "timed out", "failed"]
    error: BaseException | None = None


@dataclass
class ShutdownReport:
    """What shutdown did: why it started and how every step ended."""

    reason: str = ""
    signal: int | None = None
    steps: list[StepResult] = field(default_factory=list)

    @property
    def unfinished(self) -> list[str]:
        """Names of the steps cancelled at their deadline."""
        return [s.name for s in self.steps if s.outcome == "timed out"]

    @property
    def failed(self) -> list[str]:
        """Names of the steps that raised."""
        return [s.name for s in self.steps if s.outcome == "failed"]


class Handle:
    """Returned by the runtime's registration methods; ``remove()`` undoes it."""

    __slots__ = ("_entry", "_registry")

    def __init__(self, registry: list[Any], entry: Any) -> None:
        self._registry = registry
        self._entry = entry

    def remove(self) -> None:
        """Unregister (idempotent)."""
        with contextlib.suppress(ValueError):
            self._registry.remove(self._entry)


# loop_key() (an asyncio loop, trio's run token) -> the runtime open on it.
_runtimes: dict[object, Runtime] = {}


def current_runtime() -> Runtime | None:
    """The runtime bound to the running loop, or ``None`` when there is none."""
    key = loop_key()
    return None if key is None else _runtimes.get(key)


_state.runtime_lookup.append(current_runtime)


class Runtime:
    """Ordered shutdown, reload hooks and background tasks for one loop.

    Created by :func:`open_runtime` (and :func:`run`); use
    :func:`current_runtime` to find it.

    Args:
        shutdown_timeout: overall deadline, in seconds, for the steps of each
            phase after ``DRAIN``.
        drain_timeout: deadline for the ``STOP_ACCEPTING`` and ``DRAIN`` phases,
            during which connections may finish their work.
        handle_signals: whether SIGINT/SIGTERM start the graceful shutdown
            (a second SIGINT forces exit with status 130) and SIGHUP runs the
            reload hooks.  Only possible in the main thread.
    """

    def __init__(
        self,
        *,
        shutdown_timeout: float = 10.0,
        drain_timeout: float = 5.0,
        handle_signals: bool = True,
    ) -> None:
        self.shutdown_timeout = shutdown_timeout
        self.drain_timeout = drain_timeout
        self._drain_deadline: float | None = None
        self.handle_signals = handle_signals
        self.report = ShutdownReport()
        self._steps: dict[Phase, list[tuple[str, Callable[[], Awaitable[None]]]]] = {
            phase: [] for phase in Phase
        }
        self._force_hooks: list[Callable[[], None]] = []
        self._reload_hooks: list[Callable[[], object]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._jobs: set[BackgroundJob] = set()  # on trio: background work owned here
        self._loop: asyncio.AbstractEventLoop | None = None  # asyncio only
        self._open = False
        self._main_scope: anyio.CancelScope | None = None
        self._shutdown_task: BackgroundJob | None = None
        self._signal_handles: list[Any] = []
        self._interrupts = 0

    # -- registration ---------------------------------------------------------

    def add_shutdown_step(
        self, phase: Phase, name: str, step: Callable[[], Awaitable[None]]
    ) -> Handle:
        """Run ``await step()`` during ``phase`` of shutdown.

        Steps of a phase run concurrently and are cancelled at the phase's
        deadline.  Returns a handle whose ``remove()`` unregisters the step
        (do that when the component closes by itself).
        """
        if phase in (Phase.MAIN, Phase.TASKS):
            raise ValueError(f"{phase.name} is the runtime's own phase")
        entry = (name, step)
        self._steps[phase].append(entry)
        return Handle(self._steps[phase], entry)

    def add_force_exit_hook(self, hook: Callable[[], None]) -> Handle:
        """Call ``hook()`` (synchronously) right before a forced exit.

        A forced exit (a second SIGINT) skips every graceful step; hooks are the
        last chance to, for instance, SIGKILL child process groups.
        """
        self._force_hooks.append(hook)
        return Handle(self._force_hooks, hook)

    def add_reload_hook(self, hook: Callable[[], object]) -> Handle:
        """Call ``hook()`` on SIGHUP (or :meth:`reload`); async hooks are awaited."""
        self._reload_hooks.append(hook)
        return Handle(self._reload_hooks, hook)

    # -- state ------------------------------------------------------------------

    @property
    def shutting_down(self) -> bool:
        """Whether shutdown has started."""
        return self._shutdown_task is not None

    def track_task(self, task: asyncio.Task[Any]) -> None:
        """Own ``task``: keep it referenced and cancel it in the TASKS phase."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def track_job(self, job: BackgroundJob) -> None:
        """Own ``job`` (any backend): cancel it in the TASKS phase."""
        if job.task is not None:
            self.track_task(job.task)
        else:
            self._jobs = {j for j in self._jobs if not j.done()}
            self._jobs.add(job)

    @property
    def tasks(self) -> frozenset[asyncio.Task[Any]]:
        """The live background tasks this runtime owns."""
        return frozenset(self._tasks)

    # -- triggers ---------------------------------------------------------------

    def shutdown(self, reason: str = "requested") -> BackgroundJob:
        """Start the graceful shutdown (idempotent).

        Returns the job running it: ``await`` it to wait until shutdown is
        complete (it also has ``done()``).  Must be called on the runtime's
        loop (from another thread use ``loop.call_soon_threadsafe(runtime.shutdown)``,
        or ``anyio.from_thread.run_sync`` on trio).
        """
        if self._shutdown_task is None:
            if not self._open:
                raise RuntimeStateError("the runtime is not running")
            self.report.reason = reason
            logger.info("shutdown started: %s", reason)
            self._shutdown_task = BackgroundJob(self._run_shutdown, name="anycore-shutdown")
        return self._shutdown_task

    async def reload(self) -> None:
        """Run the reload hooks (what SIGHUP does)."""
        for hook in list(self._reload_hooks):
            try:
                result = hook()
                if isinstance(result, Awaitable):
                    await result
            except Exception:
                logger.exception("reload hook %r failed", hook)

    # -- signals ----------------------------------------------------------------

    def _on_stop_signal(self, sig: int) -> None:
        if sig == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts >= 2:
                self.force_exit(130)
                return
        if self.report.signal is None and not self.shutting_down:
            self.report.signal = sig
        self.shutdown(f"received {signal.Signals(sig).name}")

    def force_exit(self, status: int) -> None:
        """Run the force-exit hooks and end the process at once with ``status``."""
        logger.warning("forced exit (status %d)", status)
        for hook in list(self._force_hooks):
            try:
                hook()
            except Exception:
                logger.exception("force-exit hook %r failed", hook)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)

    def _install_signals(self) -> None:
        if not self.handle_signals:
            return
        if threading.current_thread() is not threading.main_thread():
            logger.debug("runtime outside the main thread: not handling signals")
            return
        from ._signals import on_signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._signal_handles.append(on_signal(sig, self._on_stop_signal))
        if hasattr(signal, "SIGHUP"):
            self._signal_handles.append(
                on_signal(signal.SIGHUP, lambda _sig: self.spawn_internal(self.reload()))
            )

    def _remove_signals(self) -> None:
        while self._signal_handles:
            self._signal_handles.pop().remove()

    def spawn_internal(self, coro: Coroutine[Any, Any, Any]) -> None:
        async def body() -> None:
            await coro

        self.track_job(BackgroundJob(body, name="anycore-runtime"))

    # -- the shutdown sequence --------------------------------------------------

    async def _run_phase(self, phase: Phase, timeout: float) -> None:
        steps = list(self._steps[phase])
        if not steps:
            return
        outcomes: dict[str, StepResult] = {}

        async def run_step(name: str, step: Callable[[], Awaitable[None]]) -> None:
            try:
                await step()
            except Exception as exc:
                logger.exception("shutdown step %r failed", name)
                outcomes[name] = StepResult(phase, name, "failed", exc)
            else:
                outcomes[name] = StepResult(phase, name, "done")

        with anyio.move_on_after(timeout):
            async with anyio.create_task_group() as tg:
                for name, step in steps:
                    tg.start_soon(run_step, name, step, name=f"shutdown:{name}")
        for name, _ in steps:
            result = outcomes.get(name) or StepResult(phase, name, "timed out")
            if result.outcome == "timed out":
                logger.warning("shutdown step %r did not finish in %.1fs", name, timeout)
            self.report.steps.append(result)

    async def _cancel_tasks(self, timeout: float) -> None:
        jobs = [j for j in self._jobs if not j.done()]
        for job in jobs:
            job.cancel()
        with anyio.move_on_after(timeout):
            for job in jobs:
                await job.wait()
        for job in jobs:
            if not job.done():
                logger.warning("background task %r did not stop in %.1fs", job.name, timeout)
                self.report.steps.append(StepResult(Phase.TASKS, job.name, "timed out"))
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            logger.warning("background task %r did not stop in %.1fs", task.get_name(), timeout)
            self.report.steps.append(StepResult(Phase.TASKS, task.get_name(), "timed out"))

    def drain_time_left(self) -> float | None:
        """Seconds left for draining, once shutdown began (``None`` before).

        The runtime's ``drain_timeout`` bounds the whole drain - stopping
        servers and finishing their connections - however the servers were
        configured: a server closing during shutdown waits at most this long.
        """
        if self._drain_deadline is None:
            return None
        return max(0.0, self._drain_deadline - anyio.current_time())

    async def _run_shutdown(self) -> None:
        self._drain_deadline = anyio.current_time() + self.drain_timeout
        await self._run_phase(Phase.STOP_ACCEPTING, self.drain_time_left() or 0.0)
        await self._run_phase(Phase.DRAIN, self.drain_time_left() or 0.0)
        if self._main_scope is not None:
            self._main_scope.cancel()
        for phase in (Phase.PROCESSES, Phase.POOLS):
            await self._run_phase(phase, self.shutdown_timeout)
        await self._cancel_tasks(self.shutdown_timeout)
        await self._run_phase(Phase.LOGS, self.shutdown_timeout)
        logger.info("shutdown complete")


@contextlib.asynccontextmanager
async def open_runtime(
    *,
    shutdown_timeout: float = 10.0,
    drain_timeout: float = 5.0,
    handle_signals: bool = True,
) -> AsyncIterator[Runtime]:
    """Bind a :class:`Runtime` to the running loop for the body of the block.

    The body is *main*: a graceful shutdown (signal or :meth:`Runtime.shutdown`)
    first stops servers and drains connections, then cancels the body, which
    then leaves the block normally.  When the body ends, by returning or by
    raising, the remaining shutdown phases run before the block exits.

    Args:
        shutdown_timeout: deadline per phase after the drain phases.
        drain_timeout: deadline for stopping servers and draining connections.
        handle_signals: install the SIGINT/SIGTERM/SIGHUP policy (main thread).

    It works on asyncio, uvloop and trio (through anyio): on trio the signal
    policy runs on anyio's signal receiver, and only the asyncio task-based
    parts (:func:`~anycore.spawn`, :attr:`Runtime.tasks`) are unavailable.

    Raises:
        RuntimeStateError: a runtime is already open on this loop, or no loop runs.
    """
    key = loop_key()
    if key is None:
        raise RuntimeStateError("open_runtime() must be used in async code (no loop runs)")
    if key in _runtimes:
        raise RuntimeStateError("a runtime is already open on this loop")
    runtime = Runtime(
        shutdown_timeout=shutdown_timeout,
        drain_timeout=drain_timeout,
        handle_signals=handle_signals,
    )
    loop = key if isinstance(key, asyncio.AbstractEventLoop) else None
    runtime._loop = loop
    runtime._open = True
    _runtimes[key] = runtime
    try:
        runtime._install_signals()
        for handle in runtime._signal_handles:
            await handle.wait_installed()  # on trio a background job installs them
    except BaseException:
        runtime._open = False
        runtime._remove_signals()
        del _runtimes[key]
        raise
    # Log handlers already used on this loop must flush in its LOGS phase too.
    if loop is not None:
        _state.runtime_opened(loop)
    try:
        with anyio.CancelScope() as scope:
            runtime._main_scope = scope
            try:
                yield runtime
            finally:
                runtime._main_scope = None
                # Main is over (returned, raised, or was cancelled by shutdown):
                # finish the remaining phases, whatever cancellation is pending.
                with anyio.CancelScope(shield=True):
                    await runtime.shutdown("main finished")
    finally:
        runtime._open = False
        runtime._remove_signals()
        del _runtimes[key]


def _loop_factory(loop: LoopName) -> Callable[[], asyncio.AbstractEventLoop]:
    if loop not in ("auto", "uvloop", "asyncio"):
        raise ValueError(f"loop must be 'auto', 'uvloop' or 'asyncio', not {loop!r}")
    if loop == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if loop == "uvloop":
            raise LoopUnavailable("uvloop is not installed (pip install uvloop)") from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _check_main(main: object) -> None:
    """Refuse what ``run()`` cannot call, with what to pass instead (as trio does)."""
    if inspect.iscoroutine(main):
        name = getattr(main, "__qualname__", "main")
        main.close()  # never awaited by design: no RuntimeWarning about it
        raise TypeError(
            f"anycore.run() takes an async function, but got the coroutine {name}() "
            f"that calling it made: pass the function, not a coroutine "
            f"(anycore.run({name}), arguments after it: anycore.run({name}, arg1, ...))"
        )
    if inspect.isawaitable(main):
        raise TypeError(
            f"anycore.run() takes an async function, not an awaitable {type(main).__name__}: "
            "wrap it in an async def and pass that function"
        )
    if not callable(main):
        raise TypeError(f"anycore.run() takes an async function, not {main!r}")


def _not_async(main: object, result: object) -> TypeError:
    name = getattr(main, "__qualname__", repr(main))
    return TypeError(
        f"anycore.run() takes an async function, but {name} returned "
        f"{type(result).__name__}, not a coroutine: define it with 'async def' "
        f"(plain code can run in async code through anyio.to_thread.run_sync)"
    )


def run(
    main: Callable[..., Awaitable[T]],
    *args: Any,
    loop: LoopName = "auto",
    debug: bool = False,
    shutdown_timeout: float = 10.0,
    drain_timeout: float = 5.0,
    handle_signals: bool = True,
) -> T:
    """Run ``await main(*args)`` on a new event loop inside a runtime.

    uvloop is used when installed (``loop="auto"``); ``loop="asyncio"`` forces
    the default loop.  SIGINT and SIGTERM start the graceful shutdown; once it
    is complete, :class:`GracefulExit` (a ``SystemExit`` with status 0) is
    raised; likewise when :meth:`Runtime.shutdown` cancelled main.  A second
    SIGINT exits at once with status 130.

    Returns:
        What ``main`` returned.

    Raises:
        Whatever ``main`` raised; an exception group holding a single error is
        unwrapped to that error.
        GracefulExit: a graceful shutdown cancelled main.
        LoopUnavailable: ``loop="uvloop"`` but uvloop is not installed.
        TypeError: ``main`` is a coroutine (``run(main())``) or not a
            coroutine function; the message says what to pass instead.
    """
    _check_main(main)
    factory = _loop_factory(loop)
    runtime_box: list[Runtime] = []

    async def wrapper() -> T:
        async with open_runtime(
            shutdown_timeout=shutdown_timeout,
            drain_timeout=drain_timeout,
            handle_signals=handle_signals,
        ) as runtime:
            runtime_box.append(runtime)
            # Called first, then checked (as trio does): a sync function that
            # returns an awaitable, such as a decorator's wrapper, is fine.
            result = main(*args)
            if not inspect.isawaitable(result):
                raise _not_async(main, result)
            return await result
        # Reached only when shutdown cancelled main.
        raise _MainCancelled

    with asyncio.Runner(loop_factory=factory, debug=debug) as runner:
        try:
            return runner.run(wrapper())
        except _MainCancelled:
            raise GracefulExit(runtime_box[0].report.signal) from None
        except BaseExceptionGroup as group:
            raise _unwrap(group) from None


class _MainCancelled(Exception):
    pass
