"""Process queues: multiprocessing.Queue / JoinableQueue with a loop-friendly side.

What this module owns: :class:`ProcessQueue` and :class:`JoinableProcessQueue`,
which carry items between the event loop and child processes.  The transport
*is* a :mod:`multiprocessing` queue (a pipe, a feeder thread per writing
process, cross-process locks), so children use the familiar blocking API and
nothing about pickling or ordering is new.  What anycore adds:

* The loop side never blocks.  ``await get()`` first tries a non-blocking
  get; when nothing is there it parks on the pipe's read end with
  ``loop.add_reader`` (no thread, no polling).  If the pipe is readable but
  another process is in the middle of reading (it holds the queue's
  cross-process read lock, which has no fd to wait on), the wait moves to a
  helper thread that blocks on that lock in short slices.  Items a helper
  thread receives after its task was cancelled are kept and returned by the
  next ``get``: nothing is lost.  ``await put()`` never blocks either:
  multiprocessing's put only appends to the feeder thread's buffer; a full
  bounded queue is waited out in a helper thread.  The loop watches its own
  reopened descriptor of the pipe (``/proc/self/fd/N``): uvloop turns a
  watched fd non-blocking, and that flag is shared by every process holding
  the pipe (children's blocking reads would fail with EAGAIN).  Without
  ``/proc`` the readiness wait falls back to a helper thread.  A message
  larger than the pipe buffer is read to its end on the loop once it starts
  arriving (the writer is already writing it).
* ``close()`` ends the stream for every process: a shared flag makes later
  puts raise :class:`QueueClosed`, and an end marker travels the pipe behind
  the items already put; each consumer that meets it puts it back for the
  next one and raises :class:`QueueClosed` (``async for`` / ``for`` end).
* Children receive a :class:`ChildQueue` (pickling a ProcessQueue produces
  one), with ``put/get/task_done/join`` as in multiprocessing plus close.
  multiprocessing only lets its queues be pickled while it spawns a child;
  anycore's ChildProcess sends arguments over its own channel, so outside
  spawning the queue is pickled the way spawning would (ForkingPickler, pipe
  ends through multiprocessing's resource sharer, semaphores by name).

Rejected: a reader thread that prefetches items for the loop (steals items
other consumers could take and holds them across close), a socketpair
protocol of our own (would re-implement JoinableQueue's cross-process
counting), and polling ``get(timeout=...)`` on the loop side.

Limits, stated: helper threads re-check for cancellation every
:data:`_SLICE` seconds while they wait on a cross-process lock (items still
wake them at once); an item a *different* process puts at the very moment of
``close()`` can land behind the end marker - close from the producing side,
or after the producers are done.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.queues
import os
import queue as _stdlib_queue
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, Self, TypeVar

import anyio
import anyio.to_thread

from .._core._backend import require_asyncio
from .._core._queues import DEFAULT_MAXSIZE
from ..errors import QueueClosed, QueueEmpty, QueueFull, TooManyReleases

__all__ = ["ChildQueue", "JoinableProcessQueue", "ProcessQueue", "ProcessQueueStatistics"]

T = TypeVar("T")

# How often a helper thread blocked on a cross-process lock looks up to see
# whether its task was cancelled.
_SLICE = 0.1


class _EndMarker:
    """The end-of-stream marker close() sends through the pipe."""

    __slots__ = ()

    def __reduce__(self) -> str:
        return "_END"

    def __repr__(self) -> str:
        return "<end of ProcessQueue>"


_END = _EndMarker()


def _put_end(mpq: Any, joinable: bool) -> None:
    mpq.put(_END)
    if joinable:
        # The marker is not work: balance the count JoinableQueue.put raised.
        mpq.task_done()


@dataclass(frozen=True, slots=True)
class ProcessQueueStatistics:
    """A snapshot of a :class:`ProcessQueue`, from :meth:`ProcessQueue.statistics`.

    Attributes:
        current_size: items in flight, approximately (as ``qsize()``).
        max_size: the bound (``0``: the platform's limit).
        closed: whether some process closed the queue.
        tasks_waiting_get: this loop's tasks in ``await get()``.
        tasks_waiting_put: this loop's tasks in ``await put()`` on a full queue.
    """

    current_size: int
    max_size: int
    closed: bool
    tasks_waiting_get: int
    tasks_waiting_put: int


class ProcessQueue(Generic[T]):
    """A queue between the event loop and other processes.

    Loop side: ``await put(item)``, ``await get()``, ``put_nowait``,
    ``get_nowait``, ``async for item in queue``, ``close()``; use it as an
    async context manager to release its pipe and feeder thread at the end.
    Children: pass the queue itself as an argument to a spawned or
    forkserver process (it arrives as a :class:`ChildQueue` with blocking
    ``put``/``get``), or pass :attr:`sync`.

    Args:
        maxsize: most items in flight (``0``: the platform's limit).
            Defaults to 1024, as for :class:`~anycore.Queue`.
        ctx: the multiprocessing context whose locks the queue uses; it must
            match the start method of the children it is passed to (the
            default, ``"spawn"``, suits spawn and forkserver children).
    """

    _joinable = False

    def __init__(
        self,
        maxsize: int = DEFAULT_MAXSIZE,
        *,
        ctx: multiprocessing.context.BaseContext | None = None,
    ) -> None:
        ctx = ctx if ctx is not None else multiprocessing.get_context("spawn")
        self._maxsize = maxsize if maxsize > 0 else 0
        self._mpq: Any = self._make_queue(ctx, self._maxsize)
        self._closed_flag = ctx.Event()
        # Items a helper thread received for a task that was cancelled.
        self._leftover: deque[Any] = deque()
        self._get_lock = anyio.Lock()
        self._putters = 0
        self._released = False
        self._watch: int | None = None

    def _make_queue(self, ctx: Any, maxsize: int) -> Any:
        return ctx.Queue(maxsize)

    def __reduce__(self) -> tuple[Any, ...]:
        return self.sync.__reduce__()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} {state} maxsize={self._maxsize or 'unbounded'}>"

    @property
    def sync(self) -> ChildQueue[T]:
        """The blocking side: for child processes (any start method) and threads."""
        return ChildQueue(self._mpq, self._closed_flag, self._joinable)

    @property
    def maxsize(self) -> int:
        """The bound (``0``: the platform's limit)."""
        return self._maxsize

    @property
    def closed(self) -> bool:
        """Whether some process closed the queue."""
        return self._closed_flag.is_set()

    def qsize(self) -> int:
        """Approximate number of items in flight (unsupported on macOS)."""
        return int(self._mpq.qsize()) + len(self._leftover)

    def empty(self) -> bool:
        """Whether no item is ready now (approximate, as in multiprocessing)."""
        return not self._leftover and bool(self._mpq.empty())

    def statistics(self) -> ProcessQueueStatistics:
        """A :class:`ProcessQueueStatistics` snapshot (this process's view)."""
        lock = self._get_lock.statistics()
        return ProcessQueueStatistics(
            current_size=self.qsize(),
            max_size=self._maxsize,
            closed=self.closed,
            tasks_waiting_get=lock.tasks_waiting + (1 if lock.locked else 0),
            tasks_waiting_put=self._putters,
        )

    # -- put --------------------------------------------------------------------

    def put_nowait(self, item: T) -> None:
        """Put without waiting.

        Raises:
            QueueFull: the queue is at ``maxsize``.
            QueueClosed: the queue was closed.
        """
        if self._closed_flag.is_set():
            raise QueueClosed
        try:
            self._mpq.put(item, block=False)
        except _stdlib_queue.Full:
            raise QueueFull from None

    async def put(self, item: T) -> None:
        """Put ``item``, waiting (off the loop) while the queue is full.

        Raises:
            QueueClosed: the queue was (or got) closed.
        """
        require_asyncio(
            "ProcessQueue.put()",
            "on trio, use a multiprocessing.Queue through anyio.to_thread.run_sync",
        )
        while True:
            try:
                self.put_nowait(item)
                return
            except QueueFull:
                pass
            cancelled = threading.Event()
            self._putters += 1
            try:
                await anyio.to_thread.run_sync(self._wait_room, cancelled, abandon_on_cancel=True)
            finally:
                self._putters -= 1
                cancelled.set()

    def _wait_room(self, cancelled: threading.Event) -> None:
        # Helper thread: wait until a slot frees up, then give it back (the
        # loop retries its put; someone else may win, then we wait again).
        sem = self._mpq._sem
        while not cancelled.is_set() and not self._closed_flag.is_set():
            if sem.acquire(True, _SLICE):
                sem.release()
                return

    # -- get --------------------------------------------------------------------

    def _take(self, item: Any) -> T:
        if item is _END:
            # Pass the marker on to the next consumer, in any process.
            _put_end(self._mpq, self._joinable)
            raise QueueClosed
        result: T = item
        return result

    def get_nowait(self) -> T:
        """Take an item if one is ready, without waiting.

        Raises:
            QueueEmpty: none is ready (or another process is reading).
            QueueClosed: the queue was closed and every item before it taken.
        """
        if self._leftover:
            return self._take(self._leftover.popleft())
        try:
            item = self._mpq.get(block=False)
        except _stdlib_queue.Empty:
            raise QueueEmpty from None
        return self._take(item)

    async def get(self) -> T:
        """Take the next item, waiting without blocking the loop.

        Raises:
            QueueClosed: the queue was closed and every item before it taken.
        """
        require_asyncio(
            "ProcessQueue.get()",
            "on trio, use a multiprocessing.Queue through anyio.to_thread.run_sync",
        )
        async with self._get_lock:
            while True:
                try:
                    return self.get_nowait()
                except QueueEmpty:
                    pass
                if self._mpq._reader.poll():
                    # Data is there but another process holds the read lock.
                    await self._get_in_thread()
                else:
                    await self._readable()

    def _watch_fd(self) -> int:
        # The loop watches its *own* open file description of the pipe's read
        # end: uvloop (libuv) switches a watched fd to O_NONBLOCK, a flag
        # shared by every dup of the descriptor - children included, whose
        # blocking reads would then fail with EAGAIN.  Reopening the pipe via
        # /proc gives a separate description.  -1: not possible here.
        if self._watch is None:
            fd = self._mpq._reader.fileno()
            try:
                self._watch = os.open(
                    f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
                )
            except OSError:
                self._watch = -1
        return self._watch

    async def _readable(self) -> None:
        fd = self._watch_fd()
        if fd < 0:
            await self._readable_in_thread()
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_reader(fd, ready)
        try:
            await fut
        finally:
            loop.remove_reader(fd)

    async def _readable_in_thread(self) -> None:
        # Fallback where the pipe cannot be reopened (no /proc): wait for
        # readability in a helper thread (multiprocessing.connection.wait).
        cancelled = threading.Event()
        reader = self._mpq._reader

        def wait() -> None:
            while not cancelled.is_set():
                if multiprocessing.connection.wait([reader], _SLICE):
                    return

        try:
            await anyio.to_thread.run_sync(wait, abandon_on_cancel=True)
        finally:
            cancelled.set()

    async def _get_in_thread(self) -> None:
        cancelled = threading.Event()
        try:
            await anyio.to_thread.run_sync(self._blocking_get, cancelled, abandon_on_cancel=True)
        finally:
            cancelled.set()

    def _blocking_get(self, cancelled: threading.Event) -> None:
        # Helper thread: whatever arrives goes to _leftover, so an item is
        # never dropped with a cancelled task.
        while not cancelled.is_set():
            try:
                item = self._mpq.get(True, _SLICE)
            except _stdlib_queue.Empty:
                if not self._mpq._reader.poll():
                    return  # nothing pending any more: back to add_reader
                continue
            self._leftover.append(item)
            return

    def __aiter__(self) -> ProcessQueue[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.get()
        except QueueClosed:
            raise StopAsyncIteration from None

    # -- close --------------------------------------------------------------------

    def close(self) -> None:
        """End the stream for every process (idempotent).

        Later puts (here and in children) raise :class:`QueueClosed`;
        consumers get the items put before and then :class:`QueueClosed`.
        """
        if self._closed_flag.is_set():
            return
        self._closed_flag.set()
        _put_end(self._mpq, self._joinable)

    async def aclose(self) -> None:
        """Close, flush this process's buffered items to the pipe, release it.

        The flush waits in a thread; if nobody reads a full pipe it gives up
        after a few seconds rather than hang (multiprocessing's
        ``cancel_join_thread``).
        """
        self.close()
        if self._released:
            return
        self._released = True
        if self._watch is not None and self._watch >= 0:
            os.close(self._watch)
            self._watch = -1
        mpq = self._mpq
        mpq.close()
        with anyio.move_on_after(5):
            await anyio.to_thread.run_sync(mpq.join_thread, abandon_on_cancel=True)
            return
        mpq.cancel_join_thread()

    async def __aenter__(self) -> Self:
        require_asyncio(
            "ProcessQueue", "on trio, use a multiprocessing.Queue through anyio.to_thread.run_sync"
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class JoinableProcessQueue(ProcessQueue[T]):
    """A :class:`ProcessQueue` with ``task_done`` / ``join`` across processes.

    Every item put (by any process) must be marked with ``task_done()`` by
    whoever processed it; ``await join()`` waits, off the loop, until all are.
    """

    _joinable = True

    def _make_queue(self, ctx: Any, maxsize: int) -> Any:
        return ctx.JoinableQueue(maxsize)

    def task_done(self) -> None:
        """Mark one item as processed.

        Raises:
            TooManyReleases: more calls than items put (a ValueError).
        """
        try:
            self._mpq.task_done()
        except ValueError as exc:
            raise TooManyReleases(str(exc)) from None

    async def join(self) -> None:
        """Wait until every item put has been marked done (the loop keeps running)."""
        cancelled = threading.Event()
        try:
            await anyio.to_thread.run_sync(self._wait_joined, cancelled, abandon_on_cancel=True)
        finally:
            cancelled.set()

    def _wait_joined(self, cancelled: threading.Event) -> None:
        mpq = self._mpq
        with mpq._cond:
            while not mpq._unfinished_tasks._semlock._is_zero():
                if cancelled.is_set():
                    return
                mpq._cond.wait(_SLICE)


class _ShareFds:
    """Stands in for a spawning Popen while a process queue is pickled."""

    @staticmethod
    def duplicate_for_child(fd: int) -> int:
        return fd

    @staticmethod
    def DupFd(fd: int) -> Any:  # multiprocessing's name for it
        from multiprocessing import resource_sharer

        return resource_sharer.DupFd(fd)


def _forking_dumps(state: tuple[Any, ...]) -> bytes:
    from multiprocessing.reduction import ForkingPickler

    multiprocessing.context.set_spawning_popen(_ShareFds())  # type: ignore[arg-type]
    try:
        return bytes(ForkingPickler.dumps(state))
    finally:
        multiprocessing.context.set_spawning_popen(None)


def _from_forking_pickle(data: bytes) -> ChildQueue[Any]:
    from multiprocessing.reduction import ForkingPickler

    mpq, closed_flag, joinable = ForkingPickler.loads(data)
    return ChildQueue(mpq, closed_flag, joinable)


class ChildQueue(Generic[T]):
    """The blocking side of a process queue, for children and threads.

    The :class:`multiprocessing.Queue` API (``put``, ``get`` with ``block``
    and ``timeout``, ``put_nowait``, ``get_nowait``, ``task_done``, ``join``,
    ``qsize``, ``empty``) plus anycore's close rules: ``get`` raises
    :class:`QueueClosed` at the end, iteration stops there, and ``close()``
    ends the stream for everyone.  It raises anycore's
    :class:`QueueEmpty` / :class:`QueueFull`.
    """

    def __init__(self, mpq: Any, closed_flag: Any, joinable: bool) -> None:
        self._mpq = mpq
        self._closed_flag = closed_flag
        self._joinable = joinable

    def __reduce__(self) -> tuple[Any, ...]:
        state = (self._mpq, self._closed_flag, self._joinable)
        if multiprocessing.context.get_spawning_popen() is not None:
            # multiprocessing is starting a child with us among its arguments.
            return (ChildQueue, state)
        # Any other pickling (anycore's ChildProcess sends its arguments over
        # its own channel; a queue sent through another queue): the same
        # thing multiprocessing does while spawning, with the pipe ends handed
        # over by its resource sharer and the semaphores reopened by name.
        return (_from_forking_pickle, (_forking_dumps(state),))

    def put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        """Put, blocking while full (a close wakes the wait within a fraction of a second).

        Raises:
            QueueFull: still full after ``timeout`` (or ``block=False``).
            QueueClosed: the queue was (or got) closed.
        """
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closed_flag.is_set():
                raise QueueClosed
            wait = _SLICE
            if not block:
                wait = 0.0
            elif deadline is not None:
                wait = min(_SLICE, max(deadline - time.monotonic(), 0.0))
            try:
                self._mpq.put(item, wait > 0, wait if wait > 0 else None)
                return
            except _stdlib_queue.Full:
                if not block or (deadline is not None and time.monotonic() >= deadline):
                    raise QueueFull from None

    def put_nowait(self, item: T) -> None:
        """Put without blocking (raises :class:`QueueFull`)."""
        self.put(item, block=False)

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        """Take the next item, blocking until there is one.

        Raises:
            QueueEmpty: nothing after ``timeout`` (or ``block=False``).
            QueueClosed: the queue was closed and every item before it taken.
        """
        try:
            item = self._mpq.get(block, timeout)
        except _stdlib_queue.Empty:
            raise QueueEmpty from None
        if item is _END:
            _put_end(self._mpq, self._joinable)
            raise QueueClosed
        result: T = item
        return result

    def get_nowait(self) -> T:
        """Take an item without blocking (raises :class:`QueueEmpty`)."""
        return self.get(block=False)

    def task_done(self) -> None:
        """Mark one item processed (joinable queues only).

        Raises:
            TooManyReleases: more calls than items put.
        """
        try:
            self._mpq.task_done()
        except ValueError as exc:
            raise TooManyReleases(str(exc)) from None

    def join(self) -> None:
        """Block until every item put has been marked done (joinable queues only)."""
        self._mpq.join()

    def qsize(self) -> int:
        """Approximate number of items in flight."""
        return int(self._mpq.qsize())

    def empty(self) -> bool:
        """Whether no item is ready (approximate)."""
        return bool(self._mpq.empty())

    @property
    def closed(self) -> bool:
        """Whether some process closed the queue."""
        return bool(self._closed_flag.is_set())

    def close(self) -> None:
        """End the stream for every process (idempotent)."""
        if self._closed_flag.is_set():
            return
        self._closed_flag.set()
        _put_end(self._mpq, self._joinable)

    def __iter__(self) -> Iterator[T]:
        while True:
            try:
                yield self.get()
            except QueueClosed:
                return
