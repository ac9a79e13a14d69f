"""A WorkerPool's results: AsyncResult, the map iterators, progress.

What a caller holds while a pool works: :class:`AsyncResult` (one call, or a
whole ``map_async``) and :class:`MapIterator` (imap / imap_unordered /
istarmap, and the engine under map / starmap), with the optional progress
reporting of the maps.  Both consume finished jobs: the front end
(``_pools``) hands each job's outcome to its consumer's callback.

Design points:

* Backpressure: a map iterator pulls a chunk from its iterable only while
  fewer than its window of jobs are outstanding, and each job is admitted by
  the pool (at most ``max_inflight``), so mapping over an endless generator
  keeps memory bounded.  The consumer's pull drives submission.
* ``await result`` cancels the work when the awaiting task is cancelled
  (asyncio future semantics); ``result.get(timeout)`` only stops waiting
  (multiprocessing semantics).
* Errors from process workers come back as the original exception (when it
  pickles) with a :class:`~anycore.errors.RemoteError` holding the remote
  traceback as its ``__cause__`` and a note, as concurrent.futures does;
  otherwise as the RemoteError itself.

Rejected: a feeder task per map (the consumer's pull drives submission
instead, which is also what bounds memory); tqdm as a dependency (the bar is
the ``anycore[progress]`` extra, imported only for ``progress=True``).
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import logging
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Sized,
)
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._pool_contract import FINISHED, Job

if TYPE_CHECKING:
    from ._pools import WorkerPool

__all__ = ["AsyncResult", "MapIterator", "MapProgress", "Progress"]

T = TypeVar("T")
log = logging.getLogger("anycore.pools")


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


class MapProgress:
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
    def for_map(cls, progress: Progress, iterable: object) -> MapProgress | None:
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
        progress: MapProgress | None = None,
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
            pool._check_open()  # PoolClosed once the pool is closed
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
