"""The backend contract of a WorkerPool: Job, PoolConfig, Backend.

This module is what an execution engine implements and nothing else: the
unit of dispatch (:class:`Job`, with its kinds and states), what a backend is
told when it starts (:class:`PoolConfig`), the interface itself
(:class:`Backend`) and the helper that computes a job's value the way the
front end expects it (:func:`run_job_body`).  The backends (``_pool_tasks``,
``_pool_threads``, ``_pool_processes``, ``_pool_dask``) import it, the front
end (``_pools``) imports it and picks a backend by name, and ``anycore.abc``
publishes it for engine authors (its docstring is the contract, method by
method).

Design points:

* A backend calls ``job.finish(ok, value)`` exactly once per job; it is
  idempotent, so a cancelled job's late result is simply dropped.  No task
  and no future per job on the hot path: the result reaches its consumer
  through a callback set by the front end.
* A Job knows its pool only to report to it (``pool._finished``) and to take
  an id; a backend never calls the pool.

Rejected: the contract in the front end's module (the backends imported the
front end, which imports them by name: an import circle).
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._pools import WorkerPool

__all__ = [
    "CALL",
    "FINISHED",
    "MAP",
    "QUEUED",
    "RUNNING",
    "STARMAP",
    "Backend",
    "Job",
    "PoolConfig",
    "copy_context",
    "run_job_body",
]

#: A job's kind: one call ``fn(*args, **kwargs)``.
CALL = 0
#: A job's kind: a map chunk, ``fn(x)`` for each item.
MAP = 1
#: A job's kind: a starmap chunk, ``fn(*x)`` for each item.
STARMAP = 2
#: A job's state: admitted, not yet running.
QUEUED = 0
#: A job's state: handed to a worker.
RUNNING = 1
#: A job's state: finished (its outcome reported).
FINISHED = 2


class Job:
    """One unit of work: a call, or a chunk of a map.

    Attributes:
        fn: the callable.
        args: CALL: the positional arguments; MAP / STARMAP: the chunk's items.
        kwargs: CALL's keyword arguments.
        kind: CALL, MAP (``fn(x)`` per item) or STARMAP (``fn(*x)`` per item).
        context: what the backend captured at submission (a contextvars copy
            for tasks and threads, a snapshot for processes).
        state: QUEUED, RUNNING or FINISHED.
        slot: reserved for the backend.
    """

    __slots__ = (
        "args",
        "consumer",
        "context",
        "fn",
        "id",
        "kind",
        "kwargs",
        "outcome",
        "pool",
        "slot",
        "state",
    )

    def __init__(
        self,
        pool: WorkerPool,
        fn: Callable[..., Any],
        args: Any,
        kwargs: dict[str, Any] | None,
        kind: int,
        consumer: Callable[[Job, bool, Any], None],
    ) -> None:
        self.pool = pool
        self.id = next(pool._job_ids)
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.kind = kind
        self.consumer = consumer
        self.context: Any = None
        self.state = QUEUED
        self.slot: Any = None
        self.outcome: tuple[bool, Any] | None = None

    def finish(self, ok: bool, value: Any) -> None:
        """Deliver the result (*ok*) or the exception; later calls are ignored."""
        if self.state == FINISHED:
            return
        self.state = FINISHED
        self.pool._finished(self, ok, value)

    def __repr__(self) -> str:
        return f"<Job {self.id} {getattr(self.fn, '__qualname__', self.fn)!r} state={self.state}>"


@dataclass(frozen=True)
class PoolConfig:
    """What a backend is told when it starts.

    Attributes:
        name: the pool's name (worker ids are ``<name>-<n>``).
        workers: how many workers to run.
        initializer: called as ``initializer(*initargs)`` in each new worker.
        initargs: its arguments.
        max_tasks_per_child: process workers are replaced after this many jobs.
        context: the multiprocessing start method or context (processes).
        grace: seconds between SIGTERM and SIGKILL when stopping a worker.
        max_message_size: the largest pickled message accepted (processes).
    """

    name: str
    workers: int
    initializer: Callable[..., Any] | None
    initargs: tuple[Any, ...]
    max_tasks_per_child: int | None
    context: Any
    grace: float
    max_message_size: int


class Backend(abc.ABC):
    """The execution engine under a :class:`WorkerPool`.

    A backend runs jobs on its workers and reports each job's outcome with
    ``job.finish(ok, value)``.  The front end does admission, ordering,
    results and the lifecycle; a backend only runs and stops.
    """

    #: Whether map() picks a chunk size automatically (worth it across IPC).
    auto_chunks: bool = True

    @abc.abstractmethod
    async def start(self, config: PoolConfig) -> None:
        """Start the workers; return once the pool can take jobs."""

    @abc.abstractmethod
    def capture_context(self) -> Any:
        """Capture the caller's context for a job (called on submission)."""

    @abc.abstractmethod
    def dispatch(self, job: Job) -> None:
        """Run *job* (now or when a worker is free); never blocks."""

    @abc.abstractmethod
    def cancel(self, job: Job) -> None:
        """Stop *job*: drop it if queued, stop its worker if it runs.

        The front end finishes the job itself right after this call.
        """

    @abc.abstractmethod
    def counts(self) -> tuple[int, int, int]:
        """Return ``(workers alive, jobs queued in the backend, jobs running)``."""

    @abc.abstractmethod
    async def shutdown(self, graceful: bool) -> None:
        """Stop every worker.

        Args:
            graceful: True after all jobs finished (workers exit politely);
                False to stop them now (SIGTERM, grace, SIGKILL for processes).
        """

    def force_kill(self) -> None:  # noqa: B027 - optional hook
        """Kill everything now (sync; the runtime's forced exit calls it)."""

    async def scatter(self, obj: Any) -> Any:
        """Place *obj* with the workers once; return what jobs take instead.

        Local backends return *obj* itself (it is sent with each job).
        """
        return obj


def run_job_body(job_kind: int, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """Execute a job's work in the current thread (threads and processes)."""
    if job_kind == CALL:
        value = fn(*args, **kwargs) if kwargs else fn(*args)
        if isinstance(value, Awaitable) and asyncio.iscoroutine(value):
            from ._start import run_awaitable

            value = run_awaitable(value)
        return value
    if job_kind == MAP:
        return [fn(x) for x in args]
    return [fn(*x) for x in args]


def copy_context() -> contextvars.Context:
    """Capture the caller's context (tasks and threads)."""
    return contextvars.copy_context()
