"""WorkerPool: one multiprocessing.Pool-like API over tasks, threads and processes.

This module owns the front end: admission (bounded in-flight work), the
results (:class:`AsyncResult`, the map iterators), callbacks, statistics and
the lifecycle (close / join / terminate, the runtime's ``Phase.POOLS``).  The
execution engines are *backends* (``_pool_tasks``, ``_pool_threads``,
``_pool_processes``) behind the small :class:`Backend` interface, which a
cluster backend (Dask distributed) can implement later.

Design points:

* The unit of dispatch is a :class:`Job`: one call, or one chunk of a map.
  Backends call ``job.finish(ok, value)`` exactly once (it is idempotent, so a
  cancelled job's late result is simply dropped).  No task and no future per
  job on the hot path: results reach their consumer through a callback.
* Backpressure: at most ``max_inflight`` jobs are admitted; ``submit`` and
  friends wait for room.  The map iterators pull from their iterable only
  while their window has room, so mapping over an endless generator keeps
  memory bounded.
* Errors from process workers come back as the original exception (when it
  pickles) with a :class:`~anycore.errors.RemoteError` holding the remote
  traceback as its ``__cause__`` and a note, as concurrent.futures does;
  otherwise as the RemoteError itself.

Rejected: wrapping concurrent.futures executors (no crash isolation:
BrokenProcessPool ends the whole pool; cancelling does not stop running
work) and multiprocessing.Pool (hangs when a worker dies, cpython#96062); a
feeder task per map (the consumer's pull drives submission instead, which is
also what bounds memory).
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
import importlib
import itertools
import logging
import os
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Sized,
)
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

from .._core._backend import require_asyncio
from ..errors import PoolClosed, QueueFull, RuntimeStateError

__all__ = [
    "WorkerPool",
    "AsyncResult",
    "PoolStatistics",
    "MapIterator",
    "Backend",
    "Job",
    "PoolConfig",
]

T = TypeVar("T")
log = logging.getLogger("anycore.pools")

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

_pool_ids = itertools.count(1)


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


@dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of a pool (counts are jobs; a map chunk is one job).

    Attributes:
        backend: the backend's name.
        workers: workers alive.
        queued: jobs admitted and waiting for a worker.
        running: jobs handed to workers and not finished.
        done: jobs that finished successfully.
        failed: jobs that raised, crashed their worker, or were cancelled.
        crashed: workers that died unexpectedly and were replaced.
        max_inflight: the admission limit.
    """

    backend: str
    workers: int
    queued: int
    running: int
    done: int
    failed: int
    crashed: int
    max_inflight: int


class AsyncResult(Generic[T]):
    """The pending result of ``apply_async`` / ``submit`` / ``map_async``.

    ``await result`` is ``await result.get()``, except that cancelling the
    awaiting task cancels the work too (asyncio future semantics); ``get``
    with a timeout only stops waiting (multiprocessing semantics).
    """

    __slots__ = ("_callback", "_cancel", "_error_callback", "_fut", "_started")

    def __init__(
        self,
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> None:
        self._fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._callback = callback
        self._error_callback = error_callback
        self._cancel: Callable[[], None] | None = None
        self._fut.add_done_callback(self._on_fut_done)

    def _on_fut_done(self, fut: asyncio.Future[T]) -> None:
        if fut.cancelled() and self._cancel is not None:
            cancel, self._cancel = self._cancel, None
            cancel()

    def _set(self, ok: bool, value: Any) -> None:
        fut = self._fut
        if fut.done():
            return
        self._cancel = None
        if not ok and isinstance(value, asyncio.CancelledError):
            fut.cancel()
        elif ok:
            fut.set_result(value)
            if self._callback is not None:
                try:
                    self._callback(value)
                except Exception:
                    log.exception("pool result callback failed")
        else:
            fut.set_exception(value)
            fut.exception()  # mark retrieved: mp lets results go unread
            if self._error_callback is not None:
                try:
                    self._error_callback(value)
                except Exception:
                    log.exception("pool error callback failed")

    def _job_consumer(self, job: Job, ok: bool, value: Any) -> None:
        self._set(ok, value)

    def ready(self) -> bool:
        """True once the work finished (or failed, or was cancelled)."""
        return self._fut.done()

    def successful(self) -> bool:
        """True if the work finished without raising.

        Raises:
            ValueError: the result is not ready (as multiprocessing does).
        """
        if not self._fut.done():
            raise ValueError(f"{self!r} not ready")
        return not self._fut.cancelled() and self._fut.exception() is None

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until ready or *timeout* seconds passed; return :meth:`ready`."""
        if not self._fut.done():
            if timeout is None:
                await asyncio.shield(self._fut)
            else:
                await asyncio.wait((self._fut,), timeout=timeout)
        return self._fut.done()

    async def get(self, timeout: float | None = None) -> T:
        """Return the result, or raise the work's exception.

        Raises:
            TimeoutError: not ready within *timeout* seconds (the work goes on).
            asyncio.CancelledError: the work was cancelled.
        """
        if not self._fut.done():
            try:
                await self.wait(timeout)
            except asyncio.CancelledError:
                if self._fut.cancelled() and not _current_task_cancelling():
                    raise asyncio.CancelledError("the job was cancelled") from None
                raise
            if not self._fut.done():
                raise TimeoutError(f"result not ready after {timeout} s")
        if self._fut.cancelled():
            raise asyncio.CancelledError("the job was cancelled")
        return self._fut.result()

    def cancel(self) -> bool:
        """Cancel the work (a running process job's worker is replaced).

        Returns:
            False if the result was ready already.
        """
        return self._fut.cancel()

    def __await__(self) -> Generator[Any, None, T]:
        return self._fut.__await__()

    def __repr__(self) -> str:
        state = "pending" if not self._fut.done() else "done"
        return f"<AsyncResult {state}>"


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


_SENTINEL: Any = object()


#: ``progress=`` of the maps: True (a tqdm bar) or ``fn(done, total)``.
Progress = bool | Callable[[int, int | None], object] | None


class _Progress:
    """Counts a map's finished items and reports them.

    To a callback ``fn(done, total)`` (called on the loop thread, first with
    ``done=0``; ``total`` is None for an iterable without a length), or to a
    tqdm progress bar for ``progress=True`` (the ``anycore[progress]`` extra,
    imported only then).
    """

    def __init__(self, progress: bool | Callable[[int, int | None], object], total: int | None):
        self.done = 0
        self.total = total
        self._bar: Any = None
        self._fn: Callable[[int, int | None], object] | None = None
        self._closed = False
        if progress is True:
            try:
                tqdm = importlib.import_module("tqdm.auto").tqdm
            except ImportError as exc:
                raise ImportError(
                    "progress=True draws a bar with tqdm: `pip install anycore[progress]`, "
                    "or pass a callback, progress=fn(done, total)"
                ) from exc
            self._bar = tqdm(total=total, unit="item")
        elif callable(progress):
            self._fn = progress
            self._report()
        else:
            raise TypeError(
                f"progress must be True or a callable fn(done, total), not {progress!r}"
            )

    @classmethod
    def for_map(cls, progress: Progress, iterable: object) -> _Progress | None:
        if progress is None or progress is False:
            return None
        total = len(iterable) if isinstance(iterable, Sized) else None
        return cls(progress, total)

    def _report(self) -> None:
        assert self._fn is not None
        try:
            self._fn(self.done, self.total)
        except Exception:
            log.exception("progress callback %r failed", self._fn)

    def advance(self, n: int) -> None:
        if self._closed:
            return
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        else:
            self._report()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._bar is not None:
                self._bar.close()


class MapIterator(Generic[T]):
    """The async iterator behind imap / imap_unordered / map / starmap.

    It pulls a chunk from the iterable only while fewer than *window* of its
    jobs are outstanding, so at most ``window * chunksize`` items are taken
    ahead of what has been yielded.  Breaking out of ``async for`` leaves
    outstanding jobs running to completion (their results are dropped); use
    ``async with`` or :meth:`aclose` to cancel them at once.
    """

    def __init__(
        self,
        pool: WorkerPool,
        fn: Callable[..., Any],
        iterable: Iterable[Any] | AsyncIterable[Any],
        chunksize: int,
        ordered: bool,
        kind: int,
        window: int,
        progress: _Progress | None = None,
    ) -> None:
        if chunksize < 1:
            raise ValueError("chunksize must be at least 1")
        self._progress = progress
        self._pool = pool
        self._fn = fn
        self._kind = kind
        self._chunksize = chunksize
        self._ordered = ordered
        self._window = max(1, window)
        self._sync: Iterator[Any] | None = None
        self._async: AsyncIterator[Any] | None = None
        if isinstance(iterable, AsyncIterable):
            self._async = aiter(iterable)
        else:
            self._sync = iter(iterable)
        self._exhausted = False
        self._jobs: deque[Job] = deque()  # ordered: every outstanding job
        self._ready: deque[Job] = deque()  # unordered: finished jobs
        self._outstanding = 0
        self._current: list[Any] = []
        self._index = 0
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def __aiter__(self) -> MapIterator[T]:
        return self

    async def __anext__(self) -> T:
        if self._index < len(self._current):
            value = self._current[self._index]
            self._index += 1
            return value  # type: ignore[no-any-return]
        while True:
            chunk = await self._next_chunk()
            if chunk:
                self._current = chunk
                self._index = 1
                return chunk[0]  # type: ignore[no-any-return]

    async def _take(self) -> list[Any]:
        size = self._chunksize
        if self._sync is not None:
            if size == 1:
                item = next(self._sync, _SENTINEL)
                return [] if item is _SENTINEL else [item]
            return list(itertools.islice(self._sync, size))
        assert self._async is not None
        items: list[Any] = []
        for _ in range(size):
            try:
                items.append(await anext(self._async))
            except StopAsyncIteration:
                break
        return items

    async def _fill(self) -> None:
        pool = self._pool
        while not self._exhausted and self._outstanding < self._window:
            if pool._state != _RUNNING:
                raise PoolClosed("the pool is closed")
            items = await self._take()
            if not items:
                self._exhausted = True
                return
            if pool._inflight < pool._max_inflight:
                pool._inflight += 1
            else:
                await pool._admit_slow()
            job = Job(pool, self._fn, items, None, self._kind, self._on_done)
            self._outstanding += 1
            if self._ordered:
                self._jobs.append(job)
            pool._dispatch(job)

    def _on_done(self, job: Job, ok: bool, value: Any) -> None:
        job.outcome = (ok, value)
        if ok and self._progress is not None:
            self._progress.advance(len(value))
        if not self._ordered:
            self._ready.append(job)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    async def _next_chunk(self) -> list[Any]:
        if self._closed:
            raise StopAsyncIteration
        try:
            while True:
                await self._fill()
                if self._ordered:
                    if self._jobs:
                        head = self._jobs[0]
                        if head.outcome is not None:
                            self._jobs.popleft()
                            self._outstanding -= 1
                            return self._unpack(head)
                    elif self._exhausted:
                        self._end_progress()
                        raise StopAsyncIteration
                else:
                    if self._ready:
                        job = self._ready.popleft()
                        self._outstanding -= 1
                        return self._unpack(job)
                    if self._exhausted and not self._outstanding:
                        self._end_progress()
                        raise StopAsyncIteration
                await self._wait()
        except asyncio.CancelledError:
            self._cancel_outstanding()
            raise

    def _unpack(self, job: Job) -> list[Any]:
        assert job.outcome is not None
        ok, value = job.outcome
        job.outcome = None
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def _cancel_outstanding(self) -> None:
        for job in self._jobs:
            if job.state != FINISHED:
                self._pool._cancel_job(job)
        self._jobs.clear()
        self._ready.clear()

    def _end_progress(self) -> None:
        if self._progress is not None:
            self._progress.close()

    async def aclose(self) -> None:
        """Stop iterating and cancel the outstanding jobs."""
        self._end_progress()
        self._closed = True
        self._exhausted = True
        self._cancel_outstanding()
        # Unordered mode does not keep every job; the pool cancels what is left.
        self._pool._cancel_consumer(self._on_done)

    async def __aenter__(self) -> MapIterator[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


_NEW, _RUNNING, _CLOSED, _TERMINATED = "new", "running", "closed", "terminated"


def _default_workers(backend: str) -> int:
    cpus = os.cpu_count() or 1
    if backend == "threads":
        return min(32, cpus + 4)
    if backend == "tasks":
        return 64
    return cpus


class WorkerPool:
    """A pool of workers with multiprocessing.Pool's API, async.

    ``async with WorkerPool("processes", workers=4) as pool:`` starts the
    workers; leaving the block normally waits for the submitted work and
    stops the workers politely (close + join); leaving it with an exception
    or by cancellation terminates (pending work is cancelled, workers are
    stopped: SIGTERM, *grace*, SIGKILL).  Unlike ``multiprocessing.Pool``'s
    ``with``, a normal exit does not throw away submitted work.

    Backends:
        ``"tasks"``: coroutine functions as tasks on this loop, *workers*
        at a time (sync functions run inline).
        ``"threads"``: functions in *workers* threads.
        ``"processes"``: functions in *workers* processes; a worker that
        dies fails only its running job with WorkerCrashed and is replaced.
        ``"dask"``: functions on a Dask distributed cluster: ``address=``
        an existing scheduler, or none to start a LocalCluster of *workers*
        processes owned by the pool (the ``anycore[dask]`` extra; see
        docs/scale-out.md and ``anycore._workers._pool_dask`` for its options).
        A :class:`Backend` instance: anything else (a cluster).

    Args:
        backend: one of the names above or a Backend instance.
        workers: how many workers (default: CPUs for processes, CPUs + 4 up
            to 32 for threads, 64 for tasks).
        initializer: run as ``initializer(*initargs)`` in each new worker.
        initargs: its arguments.
        max_tasks_per_child: replace a process worker after this many jobs.
        max_inflight: jobs admitted at once (submit waits beyond it); also
            each map's window.  Default ``max(64, 16 * workers)``.
        name: the pool's name; worker ids are ``<name>-<n>``.
        context: multiprocessing start method or context (processes).
        grace: seconds between SIGTERM and SIGKILL when stopping a worker.
        max_message_size: the largest pickled message accepted (processes).
        backend_options: passed to the backend (dask: ``address``,
            ``allowed_failures``, ``memory_limit``, ``connect_timeout``).
    """

    def __init__(
        self,
        backend: str | Backend = "processes",
        workers: int | None = None,
        *,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        max_tasks_per_child: int | None = None,
        max_inflight: int | None = None,
        name: str | None = None,
        context: Any = None,
        grace: float = 2.0,
        max_message_size: int = 1 << 30,
        **backend_options: Any,
    ) -> None:
        if isinstance(backend, str):
            if backend not in ("tasks", "threads", "processes", "dask"):
                raise ValueError(f"unknown backend {backend!r}")
            self.backend_name = backend
        else:
            self.backend_name = type(backend).__name__
        if workers is None:
            workers = _default_workers(self.backend_name)
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if max_tasks_per_child is not None and max_tasks_per_child < 1:
            raise ValueError("max_tasks_per_child must be at least 1")
        if max_inflight is None:
            max_inflight = max(64, 16 * workers)
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self._backend_spec = backend
        if backend == "dask":  # imports distributed (the anycore[dask] extra) only now
            from ._pool_dask import DaskBackend

            self._backend_spec = DaskBackend(**backend_options)
        elif backend_options:
            raise TypeError(f"options {sorted(backend_options)} are not for {backend!r}")
        self._backend: Backend | None = None
        self.name = name or f"pool{next(_pool_ids)}"
        self._config = PoolConfig(
            name=self.name,
            workers=workers,
            initializer=initializer,
            initargs=tuple(initargs),
            max_tasks_per_child=max_tasks_per_child,
            context=context,
            grace=grace,
            max_message_size=max_message_size,
        )
        self._max_inflight = max_inflight
        self._inflight = 0
        self._admit_waiters: deque[asyncio.Future[None]] = deque()
        self._job_ids = itertools.count(1)
        self._jobs: dict[int, Job] = {}
        self._state = _NEW
        self._done = 0
        self._failed = 0
        self._idle: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._hooks: list[Any] = []

    # -- lifecycle -------------------------------------------------------------

    @property
    def workers(self) -> int:
        """The configured number of workers."""
        return self._config.workers

    async def start(self) -> None:
        """Start the workers (``async with`` does it).

        Raises:
            RuntimeStateError: the pool was started before.
            BackendNotSupported: called from a trio task.
        """
        spec = self._backend_spec
        require_asyncio(
            f"WorkerPool({spec!r})" if isinstance(spec, str) else "WorkerPool",
            "on trio use anyio.to_process.run_sync() or anyio.to_thread.run_sync(), "
            "bounded by an anyio.CapacityLimiter",
        )
        if self._state != _NEW:
            raise RuntimeStateError("the pool was started already")
        if isinstance(spec, Backend):
            backend = spec
        elif spec == "tasks":
            from ._pool_tasks import TaskBackend

            backend = TaskBackend()
        elif spec == "threads":
            from ._pool_threads import ThreadBackend

            backend = ThreadBackend()
        else:
            from ._pool_processes import ProcessBackend

            backend = ProcessBackend()
        self._backend = backend
        self._state = _RUNNING
        try:
            await backend.start(self._config)
        except BaseException:
            self._state = _TERMINATED
            await backend.shutdown(graceful=False)
            raise
        self._register_runtime()

    def _register_runtime(self) -> None:
        from ._child import current_runtime, runtime_phase

        rt = current_runtime()
        if rt is None:
            return
        self._hooks.append(
            rt.add_shutdown_step(runtime_phase("POOLS"), f"pool {self.name}", self._runtime_step)
        )
        backend = self._backend
        assert backend is not None
        self._hooks.append(rt.add_force_exit_hook(backend.force_kill))

    async def _runtime_step(self) -> None:
        self.close()
        await self.join()

    def close(self) -> None:
        """Accept no more work; what was submitted still runs (Pool.close).

        Lazy maps (imap and friends) stop taking input too: their next
        chunk raises PoolClosed.
        """
        if self._state in (_NEW, _RUNNING):
            self._state = _CLOSED
            self._fail_admission_waiters()

    async def join(self) -> None:
        """Wait for the submitted work, then stop the workers (Pool.join).

        If the wait is cancelled the pool is terminated before the
        cancellation propagates.

        Raises:
            RuntimeStateError: the pool is still open (call close() first).
        """
        if self._state in (_NEW, _RUNNING):
            raise RuntimeStateError("join() needs close() or terminate() first")
        try:
            while self._jobs and self._state == _CLOSED:
                self._idle = asyncio.Event()
                await self._idle.wait()
        except BaseException:
            await self.terminate()
            raise
        await self._stop_backend(graceful=self._state == _CLOSED)

    async def terminate(self) -> None:
        """Cancel all pending and running work and stop the workers now.

        Outstanding results fail with PoolClosed; process workers get
        SIGTERM, then SIGKILL after *grace* seconds.
        """
        import anyio

        with anyio.CancelScope(shield=True):
            if self._state != _TERMINATED:
                self._state = _TERMINATED
                self._fail_admission_waiters()
                backend = self._backend
                for job in list(self._jobs.values()):
                    if backend is not None:
                        backend.cancel(job)
                    job.finish(False, PoolClosed("the pool was terminated"))
                if self._idle is not None:
                    self._idle.set()
            await self._stop_backend(graceful=False)

    async def _stop_backend(self, graceful: bool) -> None:
        import anyio

        with anyio.CancelScope(shield=True):
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                try:
                    await task
                except BaseException:
                    pass
            backend, self._backend = self._backend, None
            if backend is not None:
                await backend.shutdown(graceful=graceful)
            hooks, self._hooks = self._hooks, []
            for h in hooks:
                h.remove()

    async def aclose(self) -> None:
        """Terminate the pool (idempotent)."""
        await self.terminate()

    async def __aenter__(self) -> WorkerPool:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            await self.join()
        else:
            await self.terminate()

    def _fail_admission_waiters(self) -> None:
        waiters, self._admit_waiters = self._admit_waiters, deque()
        for fut in waiters:
            if not fut.done():
                fut.set_exception(PoolClosed("the pool is closed"))

    # -- admission and bookkeeping --------------------------------------------

    def _check_open(self) -> None:
        if self._state != _RUNNING:
            if self._state == _NEW:
                raise RuntimeStateError("the pool is not started (use async with)")
            raise PoolClosed("the pool is closed")

    async def _admit(self) -> None:
        self._check_open()
        if self._inflight < self._max_inflight:
            self._inflight += 1
            return
        await self._admit_slow()

    async def _admit_slow(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._admit_waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release()  # the slot was handed to us: pass it on
            raise

    def _release(self) -> None:
        waiters = self._admit_waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # hand the slot over
                return
        self._inflight -= 1

    def _dispatch(self, job: Job) -> None:
        backend = self._backend
        assert backend is not None
        self._jobs[job.id] = job
        job.context = backend.capture_context()
        backend.dispatch(job)

    def _finished(self, job: Job, ok: bool, value: Any) -> None:
        del self._jobs[job.id]
        if ok:
            self._done += 1
        else:
            self._failed += 1
        self._release()
        try:
            job.consumer(job, ok, value)
        finally:
            if not self._jobs and self._idle is not None:
                self._idle.set()

    def _cancel_job(self, job: Job) -> None:
        if job.state == FINISHED:
            return
        backend = self._backend
        if backend is not None:
            backend.cancel(job)
        job.finish(False, asyncio.CancelledError())

    def _cancel_consumer(self, consumer: Callable[..., Any]) -> None:
        for job in list(self._jobs.values()):
            if job.consumer == consumer:
                self._cancel_job(job)

    # -- single calls ----------------------------------------------------------

    async def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> AsyncResult[T]:
        """Submit ``fn(*args, **kwargs)``; wait for room, return its AsyncResult.

        ``value = await (await pool.submit(fn, x))``; cancelling a task that
        awaits the AsyncResult cancels the job.

        Raises:
            PoolClosed: the pool is closed.
        """
        await self._admit()
        return self._start_call(fn, args, kwargs, None, None)

    def submit_nowait(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> AsyncResult[T]:
        """Like :meth:`submit` but never waits.

        Raises:
            QueueFull: ``max_inflight`` jobs are already admitted.
            PoolClosed: the pool is closed.
        """
        self._check_open()
        if self._inflight >= self._max_inflight or self._admit_waiters:
            raise QueueFull()
        self._inflight += 1
        return self._start_call(fn, args, kwargs, None, None)

    def _start_call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> AsyncResult[Any]:
        result: AsyncResult[Any] = AsyncResult(callback, error_callback)
        job = Job(self, fn, args, kwargs or None, CALL, result._job_consumer)
        result._cancel = lambda: self._cancel_job(job)
        self._dispatch(job)
        return result

    async def apply(
        self,
        fn: Callable[..., T],
        args: Iterable[Any] = (),
        kwds: dict[str, Any] | None = None,
    ) -> T:
        """Run ``fn(*args, **kwds)`` on a worker and return its result.

        Cancelling the caller cancels the job (and replaces a process
        worker that was running it).
        """
        await self._admit()
        result: AsyncResult[T] = self._start_call(fn, tuple(args), kwds, None, None)
        return await result

    async def apply_async(
        self,
        fn: Callable[..., T],
        args: Iterable[Any] = (),
        kwds: dict[str, Any] | None = None,
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult[T]:
        """Start ``fn(*args, **kwds)``; return its AsyncResult once admitted.

        *callback* gets the result, *error_callback* the exception, on the
        loop's thread.
        """
        await self._admit()
        return self._start_call(fn, tuple(args), kwds, callback, error_callback)

    # -- maps -----------------------------------------------------------------

    def _auto_chunksize(self, n: int) -> int:
        backend = self._backend
        if backend is not None and not backend.auto_chunks:
            return 1
        chunksize, extra = divmod(n, self._config.workers * 4)
        return max(1, chunksize + (1 if extra else 0))

    def imap(
        self,
        fn: Callable[..., T],
        iterable: Iterable[Any] | AsyncIterable[Any],
        chunksize: int = 1,
        *,
        progress: Progress = None,
    ) -> MapIterator[T]:
        """Ordered lazy map: ``async for r in pool.imap(fn, items)``.

        *iterable* may be sync or async and endless: it is consumed at most
        ``max_inflight * chunksize`` items ahead of the results.  *progress*:
        ``fn(done, total)`` called as items finish (``total`` None without a
        length), or True for a tqdm bar (the ``anycore[progress]`` extra).
        """
        self._check_open()
        reporter = _Progress.for_map(progress, iterable)
        return MapIterator(self, fn, iterable, chunksize, True, MAP, self._max_inflight, reporter)

    def imap_unordered(
        self,
        fn: Callable[..., T],
        iterable: Iterable[Any] | AsyncIterable[Any],
        chunksize: int = 1,
        *,
        progress: Progress = None,
    ) -> MapIterator[T]:
        """Like :meth:`imap`, yielding results as they finish."""
        self._check_open()
        reporter = _Progress.for_map(progress, iterable)
        return MapIterator(self, fn, iterable, chunksize, False, MAP, self._max_inflight, reporter)

    def istarmap(
        self,
        fn: Callable[..., T],
        iterable: Iterable[Iterable[Any]] | AsyncIterable[Iterable[Any]],
        chunksize: int = 1,
        *,
        progress: Progress = None,
    ) -> MapIterator[T]:
        """Like :meth:`imap` with ``fn(*args)`` for each item."""
        self._check_open()
        reporter = _Progress.for_map(progress, iterable)
        return MapIterator(
            self, fn, iterable, chunksize, True, STARMAP, self._max_inflight, reporter
        )

    async def _collect(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        kind: int,
        progress: Progress = None,
    ) -> list[Any]:
        self._check_open()
        items = iterable if isinstance(iterable, list | tuple) else list(iterable)
        if chunksize is None:
            chunksize = self._auto_chunksize(len(items))
        reporter = _Progress.for_map(progress, items)
        it: MapIterator[Any] = MapIterator(
            self, fn, items, chunksize, True, kind, self._max_inflight, reporter
        )
        out: list[Any] = []
        done = False
        try:
            while True:
                try:
                    out.extend(await it._next_chunk())
                except StopAsyncIteration:
                    done = True
                    return out
        finally:
            if not done:
                await it.aclose()

    async def map(
        self,
        fn: Callable[..., T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        progress: Progress = None,
    ) -> list[T]:
        """Ordered map into a list (Pool.map); chunksize chosen as Pool.map does.

        The first failure cancels the rest and is raised.  *progress*:
        ``fn(done, total)`` called on the loop thread as chunks finish (first
        with 0), or True for a tqdm bar (the ``anycore[progress]`` extra).
        """
        return await self._collect(fn, iterable, chunksize, MAP, progress)

    async def starmap(
        self,
        fn: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        *,
        progress: Progress = None,
    ) -> list[T]:
        """Like :meth:`map` with ``fn(*args)`` for each item (Pool.starmap)."""
        return await self._collect(fn, iterable, chunksize, STARMAP, progress)

    async def map_async(
        self,
        fn: Callable[..., T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult[list[T]]:
        """Start :meth:`map` in the background; return its AsyncResult."""
        return self._spawn_collect(fn, iterable, chunksize, MAP, callback, error_callback)

    async def starmap_async(
        self,
        fn: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult[list[T]]:
        """Start :meth:`starmap` in the background; return its AsyncResult."""
        return self._spawn_collect(fn, iterable, chunksize, STARMAP, callback, error_callback)

    def _spawn_collect(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        kind: int,
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> AsyncResult[Any]:
        self._check_open()
        items = list(iterable)
        result: AsyncResult[Any] = AsyncResult(callback, error_callback)

        async def run() -> None:
            try:
                value = await self._collect(fn, items, chunksize, kind)
            except asyncio.CancelledError:
                result._fut.cancel()
                raise
            except BaseException as exc:
                result._set(False, exc)
            else:
                result._set(True, value)

        task = asyncio.get_running_loop().create_task(run(), name=f"{self.name} map_async")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

        def cancel() -> None:
            task.cancel()

        result._cancel = cancel
        return result

    async def scatter(self, obj: Any) -> Any:
        """Send a large argument to the workers once; pass the result instead.

        On dask it returns a handle (a Dask future) that jobs receive as
        *obj*, without sending it again; the other backends return *obj*.

        Raises:
            PoolClosed: the pool is closed.
        """
        self._check_open()
        backend = self._backend
        assert backend is not None
        return await backend.scatter(obj)

    # -- introspection ---------------------------------------------------------

    def statistics(self) -> PoolStatistics:
        """Return a :class:`PoolStatistics` snapshot."""
        backend = self._backend
        workers, queued, running = backend.counts() if backend is not None else (0, 0, 0)
        crashed = getattr(backend, "crashed", 0)
        return PoolStatistics(
            backend=self.backend_name,
            workers=workers,
            queued=queued,
            running=running,
            done=self._done,
            failed=self._failed,
            crashed=crashed,
            max_inflight=self._max_inflight,
        )

    def __repr__(self) -> str:
        return f"<WorkerPool {self.name} {self.backend_name} workers={self.workers} {self._state}>"


def run_job_body(job_kind: int, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """Execute a job's work in the current thread (threads and processes)."""
    if job_kind == CALL:
        value = fn(*args, **kwargs) if kwargs else fn(*args)
        if isinstance(value, Awaitable) and asyncio.iscoroutine(value):
            from ._child import _run_awaitable

            value = _run_awaitable(value)
        return value
    if job_kind == MAP:
        return [fn(x) for x in args]
    return [fn(*x) for x in args]


def copy_context() -> contextvars.Context:
    """Capture the caller's context (tasks and threads)."""
    return contextvars.copy_context()
