"""Queues shared by tasks and threads: Queue, LifoQueue, PriorityQueue.

What this module owns: one queue object that tasks use with ``await put/get``
and plain threads use with blocking ``sync_put/sync_get`` (or the
:class:`queue.Queue`-shaped view ``queue.sync``), with ``close()`` ending it
for everyone.  No sentinels: after close, puts fail with :class:`QueueClosed`,
gets return what is left and then fail the same way; ``async for`` ends.

On trio (through anyio) the same code runs: ``running_loop()`` gives a trio
stand-in whose futures trio tasks await and whose ``call_soon_threadsafe``
goes through trio's run token.

How the hot path stays at asyncio.Queue speed while threads are allowed:
a queue starts in *loop-only* mode, in which the in-loop operations touch the
deque without any lock (exactly what asyncio.Queue does).  The first time a
plain thread uses the queue, it asks the loop (``call_soon_threadsafe``) to
flip the queue into *threaded* mode and waits for that one hand-shake; the
flip runs as a loop callback, so it can never interleave with an unlocked
in-loop operation.  From then on every operation, loop or thread, takes one
``threading.Lock``, with one exception: a task taking an item from an
unbounded FIFO or LIFO queue pops it without the lock (a deque pop is atomic
and there is no putter to wake), because a producer thread holds the lock
for part of every put and a consumer taking it too makes the two threads
convoy on it (measured: 3x the CPU per item, 2x janus instead of 7x); the
threads' own takes allow for an item the loop took first.  The switch is
sticky.  So a program pays for thread-safety only once a thread is actually
involved.

Waiting: blocked tasks wait on loop futures, blocked threads on a private
``_thread.lock`` (the same trick as :class:`threading.Condition`); both sit in
the same FIFO waiter deques, so wake-up order is fair across tasks and
threads.  A waker pops one waiter and wakes it (directly on the loop thread,
through ``call_soon_threadsafe`` from a thread); the woken side re-checks the
queue (asyncio's "wake and re-check" rule).  Items never leave the buffer
until a getter takes them synchronously, so cancelling a getter at any point
loses nothing; a waiter that was popped for a wake-up but leaves (cancelled,
timed out) passes the wake-up on.  No polling anywhere on the item path.

Rejected: locks on every operation from the start (janus's design: a
threading lock plus an asyncio.Condition on the async side, paid by programs
that never use a thread), a ``call_soon_threadsafe`` per thread-side put (one
self-pipe write per item), and a separate sibling class for bridging (two
objects to close; the issue asks for one queue whose close wakes everyone).

Bounded by default: ``maxsize`` defaults to :data:`DEFAULT_MAXSIZE` (1024)
because every buffer in anycore has a limit; ``maxsize=0`` asks for an
unbounded queue explicitly, as in asyncio.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import sys
import threading
import time
import weakref
from _thread import LockType, allocate_lock
from asyncio.events import _get_running_loop as _asyncio_loop
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

from ..errors import QueueClosed, QueueEmpty, QueueFull, RuntimeStateError, TooManyReleases
from ._backend import running_loop as _get_running_loop
from ._runtime import Phase, current_runtime

__all__ = [
    "DEFAULT_MAXSIZE",
    "LifoQueue",
    "PriorityQueue",
    "Queue",
    "QueueStatistics",
    "SyncQueueView",
]

T = TypeVar("T")

#: The default ``maxsize`` of a queue: bounded, as every anycore buffer is.
DEFAULT_MAXSIZE = 1024

# A waiter is a loop future (a task waits) or a held _thread.lock (a thread
# waits; releasing it wakes the thread).
_Waiter = Any


def _resolve(fut: asyncio.Future[None]) -> None:
    # Runs on the loop (scheduled from a thread).
    if not fut.done():
        fut.set_result(None)


@dataclass(frozen=True, slots=True)
class QueueStatistics:
    """A snapshot of a queue's state, from :meth:`Queue.statistics`.

    Attributes:
        current_size: items held now.
        max_size: the bound (``0``: unbounded).
        closed: whether :meth:`Queue.close` was called.
        unfinished_tasks: items put and not yet marked with ``task_done``.
        tasks_waiting_get: tasks blocked in ``get``.
        tasks_waiting_put: tasks blocked in ``put``.
        threads_waiting_get: threads blocked in ``sync_get``.
        threads_waiting_put: threads blocked in ``sync_put``.
        threaded: whether the queue has switched to thread-safe mode.
    """

    current_size: int
    max_size: int
    closed: bool
    unfinished_tasks: int
    tasks_waiting_get: int
    tasks_waiting_put: int
    threads_waiting_get: int
    threads_waiting_put: int
    threaded: bool


# -- the runtime's shutdown: queues drain, then close ---------------------------

_logger = logging.getLogger("anycore.queues")

# What ``_try_pop`` returns when the item it saw was taken by the loop first.
_TAKEN: Any = object()
# The live queues of each runtime (weakly: a queue nobody holds is gone).
_live: weakref.WeakKeyDictionary[Any, weakref.WeakSet[Queue[Any]]] = weakref.WeakKeyDictionary()
#: Seconds a queue may go without an item taken before shutdown stops waiting.
DRAIN_IDLE = 0.5


def _register_with_runtime(queue: Queue[Any]) -> None:
    runtime = current_runtime()
    if runtime is None:
        return
    live = _live.get(runtime)
    if live is None:
        live = _live[runtime] = weakref.WeakSet()
        runtime.add_shutdown_step(Phase.POOLS, "anycore.queues", partial(_drain_all, live))
    live.add(queue)


def _set_from_anywhere(
    loop: asyncio.AbstractEventLoop, loop_thread: int, event: asyncio.Event
) -> None:
    if threading.get_ident() == loop_thread:
        event.set()
    else:
        loop.call_soon_threadsafe(event.set)


async def _drain_all(live: weakref.WeakSet[Queue[Any]]) -> None:
    """Close every open queue, let consumers take what is queued, count the rest."""
    queues = [q for q in list(live) if not q._closed]
    for q in queues:
        q.close()
    for q in queues:
        await q._wait_drained(DRAIN_IDLE)
    left = [(q, q.qsize()) for q in queues if q.qsize()]
    if left:
        total = sum(n for _, n in left)
        _logger.warning(
            "%d queued item(s) in %d queue(s) were not consumed at shutdown; "
            "they stay in their queues (get_nowait() still returns them)",
            total,
            len(left),
        )


class Queue(Generic[T]):
    """A FIFO queue for tasks and threads, ended by :meth:`close`.

    In tasks: ``await put(item)``, ``await get()``, ``put_nowait``,
    ``get_nowait``, ``await join()``, ``async for item in queue``.  In plain
    threads: ``sync_put(item, timeout=...)``, ``sync_get(timeout=...)``,
    ``sync_join()``, or the :class:`queue.Queue`-shaped view :attr:`sync`.
    ``task_done``, ``close`` and the size queries work from anywhere.

    The queue belongs to one event loop: the one running when it is created,
    else the first one that uses it.  The ``async`` methods and the
    ``*_nowait`` methods are for that loop's thread; other threads (including
    threads running a loop of their own) use the ``sync_*`` methods.

    Args:
        maxsize: the most items held at once; ``put`` waits and ``put_nowait``
            raises :class:`QueueFull` beyond it.  ``0`` (or less) means
            unbounded.  Defaults to :data:`DEFAULT_MAXSIZE`.
    """

    __slots__ = (
        "__weakref__",
        "_bound",
        "_closed",
        "_fast",
        "_getters",
        "_items",
        "_joiners",
        "_lock",
        "_loop",
        "_maxsize",
        "_on_empty",
        "_pop",
        "_push",
        "_putters",
        "_threaded",
        "_unfinished",
        "_unlocked_get",
    )

    _items: Any
    _push: Callable[[T], None]
    _pop: Callable[[], T]

    def __init__(self, maxsize: int = DEFAULT_MAXSIZE) -> None:
        self._maxsize = maxsize if maxsize > 0 else 0
        self._bound = maxsize if maxsize > 0 else sys.maxsize
        self._init_storage()
        # In thread-safe mode the loop takes items without the lock (see get):
        # only where that is atomic and wakes nobody: a deque with no bound.
        self._unlocked_get = self._maxsize == 0 and type(self._items) is deque
        self._getters: deque[_Waiter] = deque()
        self._putters: deque[_Waiter] = deque()
        self._joiners: list[_Waiter] = []
        self._unfinished = 0
        self._closed = False
        self._threaded = False
        self._lock = threading.Lock()
        self._on_empty: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = _get_running_loop()
        # True only while: bound to a loop, not threaded, not closed.  The
        # in-loop operations take their lock-free path only when it is set.
        self._fast = self._loop is not None
        if self._loop is not None:
            _register_with_runtime(self)

    def _init_storage(self) -> None:
        items: deque[T] = deque()
        self._items = items
        self._push = items.append
        self._pop = items.popleft

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        bound = self._maxsize or "unbounded"
        return f"<{type(self).__name__} {state} size={len(self._items)} maxsize={bound}>"

    # -- queries ----------------------------------------------------------------

    @property
    def maxsize(self) -> int:
        """The bound on the number of items (``0``: unbounded)."""
        return self._maxsize

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def qsize(self) -> int:
        """The number of items held now."""
        return len(self._items)

    def empty(self) -> bool:
        """Whether the queue holds no item."""
        return not self._items

    def full(self) -> bool:
        """Whether the queue holds ``maxsize`` items (never, when unbounded)."""
        return len(self._items) >= self._bound

    def statistics(self) -> QueueStatistics:
        """A :class:`QueueStatistics` snapshot."""
        with self._lock:
            getters = self._getters
            putters = self._putters
            tg = sum(1 for w in getters if type(w) is LockType)
            tp = sum(1 for w in putters if type(w) is LockType)
            return QueueStatistics(
                current_size=len(self._items),
                max_size=self._maxsize,
                closed=self._closed,
                unfinished_tasks=self._unfinished,
                tasks_waiting_get=len(getters) - tg,
                tasks_waiting_put=len(putters) - tp,
                threads_waiting_get=tg,
                threads_waiting_put=tp,
                threaded=self._threaded,
            )

    # -- waking -----------------------------------------------------------------

    @staticmethod
    def _wake_from_loop(waiters: deque[_Waiter]) -> None:
        # On the loop thread: resolve a future directly.
        while waiters:
            w = waiters.popleft()
            if type(w) is LockType:
                w.release()
                return
            if not w.done():
                w.set_result(None)
                return

    def _wake_from_thread(self, waiters: deque[_Waiter]) -> None:
        # Off the loop thread (lock held): futures are resolved on the loop.
        while waiters:
            w = waiters.popleft()
            if type(w) is LockType:
                w.release()
                return
            loop = self._loop
            if loop is None:  # pragma: no cover - futures imply a loop
                continue
            try:
                loop.call_soon_threadsafe(_resolve, w)
            except RuntimeError:  # the loop is closed: its task is gone
                continue
            return

    def _wake(self, waiters: deque[_Waiter], on_loop: bool) -> None:
        if on_loop:
            self._wake_from_loop(waiters)
        else:
            self._wake_from_thread(waiters)

    def _wake_all(self, waiters: deque[_Waiter] | list[_Waiter], on_loop: bool) -> None:
        pending = deque(waiters)
        waiters.clear()
        while pending:
            self._wake(pending, on_loop)

    # -- mode switching ---------------------------------------------------------

    def _bind(self) -> None:
        # Lock held.  Bind to the running loop, if there is one.
        if self._loop is None:
            self._loop = _get_running_loop()
            self._fast = self._loop is not None and not self._threaded and not self._closed
            if self._loop is not None:
                _register_with_runtime(self)

    def _waiting_loop(self) -> asyncio.AbstractEventLoop:
        # Lock held, in a task about to wait: the loop to make the future on.
        # A queue whose loop has closed (say, one asyncio.run after another)
        # moves to the running loop; two live loops cannot share it.
        running = _get_running_loop()
        if running is None:
            raise RuntimeStateError(f"{type(self).__name__}: async methods need a running loop")
        loop = self._loop
        if loop is running:
            return running
        if loop is None or loop.is_closed():
            self._loop = running
            self._fast = not self._threaded and not self._closed
            return running
        raise RuntimeStateError(
            f"{type(self).__name__} is bound to another event loop; "
            "use the sync_* methods from other threads"
        )

    def _on_loop(self) -> bool:
        """Whether the caller runs on the queue's loop thread (binds if unbound)."""
        running = _get_running_loop()
        if running is None:
            return False
        if self._loop is None:
            with self._lock:
                self._bind()
        return running is self._loop

    def _go_threaded(self) -> None:
        # Runs on the loop: no unlocked in-loop operation is in progress here.
        with self._lock:
            self._threaded = True
            self._fast = False

    def _ensure_threaded(self) -> None:
        """Called by thread-side operations before they touch the state."""
        with self._lock:
            if self._threaded:
                return
            loop = self._loop
            if (
                loop is None
                or loop.is_closed()
                or not loop.is_running()
                or _get_running_loop() is loop
            ):
                # No loop can be inside an unlocked operation right now.
                self._threaded = True
                self._fast = False
                return
        done = threading.Event()

        def flip() -> None:
            self._go_threaded()
            done.set()

        try:
            loop.call_soon_threadsafe(flip)
        except RuntimeError:  # closed in the meantime
            self._go_threaded()
            return
        # One-time hand-shake.  The bounded wait only guards against a loop
        # that stopped for good before running the callback.
        while not done.wait(0.05):
            if loop.is_closed() or not loop.is_running():
                self._go_threaded()
                return

    def _would_block_loop(self) -> None:
        if self._loop is not None and _get_running_loop() is self._loop:
            raise RuntimeStateError(
                "a blocking sync_* call on the queue's own event loop would deadlock it; "
                "use the async methods there"
            )

    # -- in-loop API ------------------------------------------------------------

    def put_nowait(self, item: T) -> None:
        """Put ``item`` if there is room, without waiting.

        Raises:
            QueueFull: the queue holds ``maxsize`` items.
            QueueClosed: the queue was closed.
        """
        if self._fast:
            if len(self._items) < self._bound:
                self._push(item)
                self._unfinished += 1
                if self._getters:
                    self._wake_from_loop(self._getters)
                return
            raise QueueFull
        self._put_locked(item, self._on_loop())

    def _put_locked(self, item: T, on_loop: bool) -> None:
        with self._lock:
            self._bind()
            if self._closed:
                raise QueueClosed
            if len(self._items) >= self._bound:
                raise QueueFull
            self._push(item)
            self._unfinished += 1
            if self._getters:
                self._wake(self._getters, on_loop)

    async def put(self, item: T) -> None:
        """Put ``item``, waiting for room.

        Raises:
            QueueClosed: the queue was (or got) closed before the item went in.
        """
        if self._fast:
            if len(self._items) < self._bound:
                self._push(item)
                self._unfinished += 1
                if self._getters:
                    self._wake_from_loop(self._getters)
                return
        elif self._threaded:
            with self._lock:
                if not self._closed and len(self._items) < self._bound:
                    self._push(item)
                    self._unfinished += 1
                    if self._getters:
                        self._wake_from_loop(self._getters)
                    return
        await self._put_wait(item)

    async def _put_wait(self, item: T) -> None:
        lock = self._lock
        putters = self._putters
        while True:
            with lock:
                self._bind()
                if self._closed:
                    raise QueueClosed
                if len(self._items) < self._bound:
                    self._push(item)
                    self._unfinished += 1
                    if self._getters:
                        self._wake_from_loop(self._getters)
                    return
                loop = self._waiting_loop()
                fut: asyncio.Future[None] = loop.create_future()
                putters.append(fut)
            try:
                await fut
            except BaseException:
                with lock:
                    try:
                        putters.remove(fut)
                    except ValueError:
                        # Popped for a wake-up we will not use: pass it on.
                        if len(self._items) < self._bound or self._closed:
                            self._wake_from_loop(putters)
                raise

    def get_nowait(self) -> T:
        """Take an item if there is one, without waiting.

        Raises:
            QueueEmpty: nothing to take.
            QueueClosed: the queue was closed and is empty.
        """
        if self._fast:
            if self._items:
                item = self._pop()
                if self._putters:
                    self._wake_from_loop(self._putters)
                return item
            raise QueueEmpty
        return self._get_locked(self._on_loop())

    def _try_pop(self) -> T:
        # Lock held, off the loop or on it.  The loop takes items without the
        # lock (see get), so an item seen here may be gone when popped.
        try:
            return self._pop()
        except IndexError:
            taken: T = _TAKEN
            return taken

    def _get_locked(self, on_loop: bool) -> T:
        with self._lock:
            self._bind()
            if self._items and (item := self._try_pop()) is not _TAKEN:
                if self._putters:
                    self._wake(self._putters, on_loop)
                if not self._items and self._on_empty is not None:
                    self._on_empty()  # (closed queues only take this path)
                return item
            if self._closed:
                raise QueueClosed
            raise QueueEmpty

    async def get(self) -> T:
        """Take the next item, waiting for one.

        Raises:
            QueueClosed: the queue was closed and everything in it was taken.
        """
        if self._fast:
            if self._items:
                item = self._pop()
                if self._putters:
                    self._wake_from_loop(self._putters)
                return item
        elif self._threaded:
            if self._unlocked_get and self._on_empty is None:
                # A producer thread holds the lock for a part of each put:
                # taking it here too makes the two threads convoy on it (3x
                # the CPU per item, half the throughput).  Taking from an
                # unbounded deque is atomic and has no putter to wake.
                try:
                    return self._pop()
                except IndexError:
                    return await self._get_wait()
            # Thread-safe mode: one lock round, no extra coroutine, when an
            # item is ready.
            with self._lock:
                if self._items:
                    item = self._pop()
                    if self._putters:
                        self._wake_from_loop(self._putters)
                    if not self._items and self._on_empty is not None:
                        self._on_empty()
                    return item
        return await self._get_wait()

    async def _get_wait(self) -> T:
        lock = self._lock
        getters = self._getters
        while True:
            with lock:
                self._bind()
                if self._items:
                    item = self._pop()
                    if self._putters:
                        self._wake_from_loop(self._putters)
                    if not self._items and self._on_empty is not None:
                        self._on_empty()
                    return item
                if self._closed:
                    raise QueueClosed
                loop = self._waiting_loop()
                fut: asyncio.Future[None] = loop.create_future()
                getters.append(fut)
            try:
                await fut
            except BaseException:
                with lock:
                    try:
                        getters.remove(fut)
                    except ValueError:
                        # Popped for a wake-up we will not use: pass it on so
                        # the item that caused it reaches another getter.
                        if self._items:
                            self._wake_from_loop(getters)
                raise

    async def _wait_drained(self, idle: float) -> None:
        # Shutdown, after close(): wait while consumers keep taking items.
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()
        while self._items:
            emptied = asyncio.Event()
            self._on_empty = partial(_set_from_anywhere, loop, loop_thread, emptied)
            before = len(self._items)
            try:
                await asyncio.wait_for(emptied.wait(), idle)
            except TimeoutError:
                if len(self._items) >= before:
                    return  # nobody is consuming: give up on this queue
            finally:
                self._on_empty = None

    def __aiter__(self) -> Queue[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.get()
        except QueueClosed:
            raise StopAsyncIteration from None

    # -- from anywhere ----------------------------------------------------------

    def task_done(self) -> None:
        """Mark one item taken earlier as processed (from a task or a thread).

        Raises:
            TooManyReleases: called more times than items were put
                (a :class:`ValueError`, as in :mod:`queue`).
        """
        # The C lookup on the hot path: under trio it misses, and the locked
        # path below (which knows trio's stand-in loop) does the work.
        if self._fast and _asyncio_loop() is self._loop:
            if self._unfinished <= 0:
                raise TooManyReleases("task_done() called too many times")
            self._unfinished -= 1
            if self._unfinished == 0 and self._joiners:
                self._wake_all(self._joiners, True)
            return
        on_loop = self._on_loop()
        if not on_loop:
            self._ensure_threaded()
        with self._lock:
            if self._unfinished <= 0:
                raise TooManyReleases("task_done() called too many times")
            self._unfinished -= 1
            if self._unfinished == 0 and self._joiners:
                self._wake_all(self._joiners, on_loop)

    async def join(self) -> None:
        """Wait until every item put has been marked with :meth:`task_done`."""
        lock = self._lock
        with lock:
            self._bind()
            if self._unfinished == 0:
                return
            loop = self._waiting_loop()
            fut: asyncio.Future[None] = loop.create_future()
            self._joiners.append(fut)
        try:
            await fut
        finally:
            if not fut.done():
                fut.cancel()
            with lock:
                try:
                    self._joiners.remove(fut)
                except ValueError:
                    pass

    def close(self) -> None:
        """Close the queue (idempotent; from a task or a thread).

        Later puts raise :class:`QueueClosed`; gets return the items still
        held and then raise :class:`QueueClosed`.  Every blocked putter and
        getter, task or thread, wakes up and sees the new state.
        """
        on_loop = self._on_loop()
        if not on_loop:
            self._ensure_threaded()
        with self._lock:
            self._closed = True
            self._fast = False
            self._wake_all(self._putters, on_loop)
            self._wake_all(self._getters, on_loop)

    async def aclose(self) -> None:
        """Same as :meth:`close` (for ``async with`` and anyio's AsyncResource)."""
        self.close()

    async def __aenter__(self) -> Queue[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    # -- thread API -------------------------------------------------------------

    def sync_put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        """Put ``item`` from a plain thread, blocking until there is room.

        Args:
            item: the item.
            block: ``False`` makes this :meth:`put_nowait` for threads.
            timeout: most seconds to wait (``None``: no limit).

        Raises:
            QueueFull: no room (``block=False``) or still none after ``timeout``.
            QueueClosed: the queue was (or got) closed.
            RuntimeStateError: it would block the queue's own event loop.
        """
        if not self._threaded:
            self._ensure_threaded()
        lock = self._lock
        with lock:
            if not self._closed and len(self._items) < self._bound:
                self._push(item)
                self._unfinished += 1
                if self._getters:
                    self._wake_from_thread(self._getters)
                return
        putters = self._putters
        deadline = None if timeout is None or not block else time.monotonic() + timeout
        with lock:
            try:
                while True:
                    if self._closed:
                        raise QueueClosed
                    if len(self._items) < self._bound:
                        self._push(item)
                        self._unfinished += 1
                        if self._getters:
                            self._wake_from_thread(self._getters)
                        return
                    if not block:
                        raise QueueFull
                    self._wait_in_thread(putters, deadline, QueueFull)
            except BaseException:
                if putters and len(self._items) < self._bound:
                    self._wake_from_thread(putters)
                raise

    def sync_get(self, block: bool = True, timeout: float | None = None) -> T:
        """Take the next item from a plain thread, blocking until there is one.

        Args:
            block: ``False`` makes this :meth:`get_nowait` for threads.
            timeout: most seconds to wait (``None``: no limit).

        Returns:
            The item.

        Raises:
            QueueEmpty: nothing to take (``block=False``) or nothing after ``timeout``.
            QueueClosed: the queue was closed and everything in it was taken.
            RuntimeStateError: it would block the queue's own event loop.
        """
        if not self._threaded:
            self._ensure_threaded()
        lock = self._lock
        with lock:
            if self._items and (item := self._try_pop()) is not _TAKEN:
                if self._putters:
                    self._wake_from_thread(self._putters)
                if not self._items and self._on_empty is not None:
                    self._on_empty()
                return item
        getters = self._getters
        deadline = None if timeout is None or not block else time.monotonic() + timeout
        with lock:
            try:
                while True:
                    if self._items and (item := self._try_pop()) is not _TAKEN:
                        if self._putters:
                            self._wake_from_thread(self._putters)
                        if not self._items and self._on_empty is not None:
                            self._on_empty()
                        return item
                    if self._closed:
                        raise QueueClosed
                    if not block:
                        raise QueueEmpty
                    self._wait_in_thread(getters, deadline, QueueEmpty)
            except BaseException:
                if getters and self._items:
                    self._wake_from_thread(getters)
                raise

    def _wait_in_thread(
        self, waiters: deque[_Waiter], deadline: float | None, on_timeout: type[Exception]
    ) -> None:
        # Lock held on entry and on exit.
        if deadline is None:
            remaining = -1.0
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise on_timeout
        self._would_block_loop()
        w = allocate_lock()
        w.acquire()
        waiters.append(w)
        lock = self._lock
        lock.release()
        woken = False
        try:
            woken = w.acquire(True, remaining)
        finally:
            lock.acquire()
            if not woken:
                try:
                    waiters.remove(w)
                except ValueError:
                    woken = True  # released just as we stopped waiting
        if not woken:
            raise on_timeout

    def sync_join(self, timeout: float | None = None) -> bool:
        """Block a plain thread until every item put has been marked done.

        Args:
            timeout: most seconds to wait (``None``: no limit).

        Returns:
            ``True`` when all work is done, ``False`` on timeout.
        """
        self._ensure_threaded()
        with self._lock:
            if self._unfinished == 0:
                return True
            self._would_block_loop()
            w = allocate_lock()
            w.acquire()
            self._joiners.append(w)
        done = w.acquire(True, -1.0 if timeout is None else max(timeout, 0.0))
        if not done:
            with self._lock:
                try:
                    self._joiners.remove(w)
                except ValueError:
                    done = True
        return done

    def sync_iter(self) -> Iterator[T]:
        """Iterate from a plain thread: ``sync_get`` until the queue is closed."""
        while True:
            try:
                yield self.sync_get()
            except QueueClosed:
                return

    @property
    def sync(self) -> SyncQueueView[T]:
        """A :class:`queue.Queue`-shaped view of this queue for plain threads."""
        return SyncQueueView(self)


class LifoQueue(Queue[T]):
    """A last-in, first-out :class:`Queue` (a stack), same API and close rules."""

    __slots__ = ()

    def _init_storage(self) -> None:
        items: deque[T] = deque()
        self._items = items
        self._push = items.append
        self._pop = items.pop


class PriorityQueue(Queue[T]):
    """A :class:`Queue` that hands out the lowest priority first.

    Items are ``(priority, data)`` pairs (any tuple whose first element is
    the priority; a non-tuple item is its own priority).  Items of equal
    priority come out in the order they were put, and ``data`` is never
    compared: the heap orders ``(priority, sequence number)``.
    """

    __slots__ = ("_seq",)

    def _init_storage(self) -> None:
        heap: list[tuple[Any, int, T]] = []
        self._items = heap
        self._seq = itertools.count()
        self._push = self._heap_push
        self._pop = self._heap_pop

    def _heap_push(self, item: T) -> None:
        entry: Any = item
        prio = entry[0] if type(entry) is tuple else entry
        heapq.heappush(self._items, (prio, next(self._seq), item))

    def _heap_pop(self) -> T:
        entry: tuple[Any, int, T] = heapq.heappop(self._items)
        return entry[2]


class SyncQueueView(Generic[T]):
    """The :class:`queue.Queue` interface over an anycore :class:`Queue`.

    Hand it to thread code written for the standard library; it shares the
    queue's items, bound and close state.  ``get``/``put`` take ``block`` and
    ``timeout`` as :class:`queue.Queue` does and raise anycore's
    :class:`QueueEmpty` / :class:`QueueFull` / :class:`QueueClosed`.
    Iterating it yields items until the queue is closed.
    """

    __slots__ = ("queue",)

    def __init__(self, queue: Queue[T]) -> None:
        self.queue = queue

    def put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        """Put from a thread; see :meth:`Queue.sync_put`."""
        self.queue.sync_put(item, block, timeout)

    def put_nowait(self, item: T) -> None:
        """Put without blocking (thread side); raises :class:`QueueFull`."""
        self.queue.sync_put(item, block=False)

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        """Get from a thread; see :meth:`Queue.sync_get`."""
        return self.queue.sync_get(block, timeout)

    def get_nowait(self) -> T:
        """Get without blocking (thread side); raises :class:`QueueEmpty`."""
        return self.queue.sync_get(block=False)

    def task_done(self) -> None:
        """See :meth:`Queue.task_done`."""
        self.queue.task_done()

    def join(self) -> None:
        """Block until all items are processed; see :meth:`Queue.sync_join`."""
        self.queue.sync_join()

    def qsize(self) -> int:
        """See :meth:`Queue.qsize`."""
        return self.queue.qsize()

    def empty(self) -> bool:
        """See :meth:`Queue.empty`."""
        return self.queue.empty()

    def full(self) -> bool:
        """See :meth:`Queue.full`."""
        return self.queue.full()

    def close(self) -> None:
        """See :meth:`Queue.close`."""
        self.queue.close()

    def __iter__(self) -> Iterator[T]:
        return self.queue.sync_iter()
