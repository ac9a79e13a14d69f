"""WorkerPool: one multiprocessing.Pool-like API over tasks, threads and processes.

This module owns the front end: admission (bounded in-flight work), the
pool's API (submit / apply / the maps), callbacks, statistics and the
lifecycle (close / join / terminate, the runtime's ``Phase.POOLS``).  What a
caller holds meanwhile is ``_pool_results``' (:class:`AsyncResult`, the map
iterators).  The execution engines are *backends* (``_pool_tasks``,
``_pool_threads``, ``_pool_processes``, ``_pool_dask``) behind the small
interface of ``_pool_contract`` (:class:`Backend`, :class:`Job`), which
another engine implements to plug in (``anycore.abc``).

Design points:

* The unit of dispatch is a :class:`Job`: one call, or one chunk of a map.
  The front end gives it an id, has the backend capture the caller's context
  and dispatch it, and hands its outcome to its consumer (an AsyncResult or a
  map iterator) when the backend reports it.
* Backpressure: at most ``max_inflight`` jobs are admitted; ``submit`` and
  friends wait for room, and a slot freed by a finished job is handed to the
  oldest waiter.
* Backends by name: :data:`_BACKENDS` maps each name to a function that
  imports the backend's module only when a pool asks for it (the dask
  backend needs the ``anycore[dask]`` extra), and makes the backend with the
  pool's backend options.

Rejected: wrapping concurrent.futures executors (no crash isolation:
BrokenProcessPool ends the whole pool; cancelling does not stop running
work) and multiprocessing.Pool (hangs when a worker dies, cpython#96062).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from .._core._backend import require_asyncio
from .._core._runtime import Phase, current_runtime
from ..errors import PoolClosed, QueueFull, RuntimeStateError
from ._pool_contract import CALL, FINISHED, MAP, STARMAP, Backend, Job, PoolConfig
from ._pool_results import AsyncResult, MapIterator, MapProgress, Progress

__all__ = ["PoolStatistics", "WorkerPool"]

T = TypeVar("T")

_pool_ids = itertools.count(1)
_NEW, _RUNNING, _CLOSED, _TERMINATED = "new", "running", "closed", "terminated"


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
            if backend not in _BACKENDS:
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
        # The backend is made now, so that wrong backend options fail here.
        if isinstance(backend, str):
            self._by_name = True
            self._backend_spec = _BACKENDS[backend](backend_options)
        else:
            if backend_options:
                raise TypeError(f"options {sorted(backend_options)} are not for {backend!r}")
            self._by_name = False
            self._backend_spec = backend
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
        require_asyncio(
            f"WorkerPool({self.backend_name!r})" if self._by_name else "WorkerPool",
            "on trio use anyio.to_process.run_sync() or anyio.to_thread.run_sync(), "
            "bounded by an anyio.CapacityLimiter",
        )
        if self._state != _NEW:
            raise RuntimeStateError("the pool was started already")
        backend = self._backend_spec
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
        rt = current_runtime()
        if rt is None:
            return
        self._hooks.append(
            rt.add_shutdown_step(Phase.POOLS, f"pool {self.name}", self._runtime_step)
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
        reporter = MapProgress.for_map(progress, iterable)
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
        reporter = MapProgress.for_map(progress, iterable)
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
        reporter = MapProgress.for_map(progress, iterable)
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
        reporter = MapProgress.for_map(progress, items)
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


# -- the backends, by name --------------------------------------------------------


def _no_options(name: str, options: dict[str, Any]) -> None:
    if options:
        raise TypeError(f"options {sorted(options)} are not for {name!r}")


def _tasks_backend(options: dict[str, Any]) -> Backend:
    _no_options("tasks", options)
    from ._pool_tasks import TaskBackend

    return TaskBackend()


def _threads_backend(options: dict[str, Any]) -> Backend:
    _no_options("threads", options)
    from ._pool_threads import ThreadBackend

    return ThreadBackend()


def _processes_backend(options: dict[str, Any]) -> Backend:
    _no_options("processes", options)
    from ._pool_processes import ProcessBackend

    return ProcessBackend()


def _dask_backend(options: dict[str, Any]) -> Backend:
    from ._pool_dask import DaskBackend  # imports distributed (the anycore[dask] extra)

    return DaskBackend(**options)


#: The backends a pool can be given by name: name -> ``make(backend_options)``.
_BACKENDS: dict[str, Callable[[dict[str, Any]], Backend]] = {
    "tasks": _tasks_backend,
    "threads": _threads_backend,
    "processes": _processes_backend,
    "dask": _dask_backend,
}
