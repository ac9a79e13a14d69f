"""Synchronisation primitives for tasks, and for tasks and threads together.

What this module owns: the names :mod:`threading` users look for, mapped to
async primitives.  Where anyio already has the primitive (Lock, Semaphore,
Event, Condition, CapacityLimiter) anycore re-exports anyio's class unchanged:
those work on asyncio and trio, are cancellation-safe, and wrapping them would
only add a call per operation.  What anyio lacks is added here:

* :class:`RLock` - reentrant per *task* (anyio's Lock is not reentrant).
* :class:`BoundedSemaphore` - a semaphore whose over-release raises
  :class:`~anycore.errors.TooManyReleases` (an anycore error and a ValueError).
* Thread-safe variants for code that spans the loop and plain threads:
  :class:`ThreadSafeEvent`, :class:`ThreadSafeSemaphore`, :class:`ThreadSafeLock`,
  :class:`ThreadSafeCondition`.
  Tasks ``await`` them (the loop never blocks); threads call the ``sync_*``
  methods (or ``with``), which block only the calling thread.

Design of the thread-safe variants: state under one ``threading.Lock``;
waiters in one FIFO deque, either a loop future (a task) or a held
``_thread.lock`` (a thread).  Release *hands ownership* to the first waiter
(no barging, no thundering herd).  A future is resolved directly on its own
loop's thread, else through ``call_soon_threadsafe``.  A task cancelled after
ownership was handed to it releases it again in its cancellation path, so
nothing leaks: the hand-off callback does nothing for a future that is already
done, and the cancelled waiter finds itself gone from the deque and passes the
ownership on - exactly one of them does.  These variants use asyncio futures;
on trio (through anyio) ``running_loop()`` stands in a trio equivalent, so
the same hand-off code serves trio tasks too.

Rejected: making anyio's primitives thread-safe by wrapping them with a
threading lock (a blocking lock on the loop thread), and polling-based thread
waits.
"""

from __future__ import annotations

import asyncio
import threading
import time
from _thread import allocate_lock
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
from anyio import CapacityLimiter, Condition, Event, Lock, Semaphore

from ..errors import RuntimeStateError, TooManyReleases, WouldBlock
from ._backend import running_loop as _get_running_loop

__all__ = [
    "BoundedSemaphore",
    "CapacityLimiter",
    "Condition",
    "Event",
    "Lock",
    "RLock",
    "Semaphore",
    "ThreadSafeCondition",
    "ThreadSafeEvent",
    "ThreadSafeLock",
    "ThreadSafeSemaphore",
    "ThreadSafeStatistics",
]

_T = TypeVar("_T")

# (loop, future) for a task, (None, held _thread.lock) for a thread.
_Waiter = tuple[asyncio.AbstractEventLoop | None, Any]


def _refuse_blocking_in_loop(what: str) -> None:
    if _get_running_loop() is not None:
        raise RuntimeStateError(
            f"a blocking {what} inside a running event loop would stall it; use the async method"
        )


def _running(what: str) -> asyncio.AbstractEventLoop:
    loop = _get_running_loop()
    if loop is None:
        raise RuntimeStateError(f"{what} must be awaited in a running loop")
    return loop


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _wake(waiter: _Waiter) -> bool:
    """Wake one waiter; ``False`` when its loop is gone (try the next one)."""
    loop, w = waiter
    if loop is None:
        w.release()
        return True
    if _get_running_loop() is loop:
        _resolve(w)
        return True
    try:
        loop.call_soon_threadsafe(_resolve, w)
    except RuntimeError:  # loop closed: the task no longer exists
        return False
    return True


# -- task-only primitives anyio lacks -------------------------------------------


class RLock:
    """A lock the owning task may acquire again (``threading.RLock`` for tasks).

    Each ``acquire`` by the owner must be matched by a ``release``; the lock
    is free again when the count returns to zero.  Works on asyncio and trio.
    """

    __slots__ = ("_count", "_lock", "_owner")

    def __init__(self) -> None:
        self._lock = anyio.Lock()
        self._owner: object | None = None
        self._count = 0

    async def acquire(self) -> None:
        """Acquire the lock, waiting if another task holds it."""
        me = anyio.get_current_task().id
        if self._owner == me:
            self._count += 1
            return
        await self._lock.acquire()
        self._owner = me
        self._count = 1

    def acquire_nowait(self) -> None:
        """Acquire without waiting.

        Raises:
            WouldBlock: another task holds it (also ``anyio.WouldBlock``).
        """
        me = anyio.get_current_task().id
        if self._owner == me:
            self._count += 1
            return
        try:
            self._lock.acquire_nowait()
        except anyio.WouldBlock:
            raise WouldBlock("RLock is held by another task") from None
        self._owner = me
        self._count = 1

    def release(self) -> None:
        """Release one level of ownership.

        Raises:
            RuntimeStateError: the calling task does not hold the lock
                (a :class:`RuntimeError`, as :class:`threading.RLock` raises).
        """
        if self._owner != anyio.get_current_task().id:
            raise RuntimeStateError("RLock released by a task that does not hold it")
        self._count -= 1
        if self._count == 0:
            self._owner = None
            self._lock.release()

    def locked(self) -> bool:
        """Whether some task holds the lock."""
        return self._owner is not None

    @property
    def level(self) -> int:
        """How many times the owner has acquired it (0: free)."""
        return self._count

    def statistics(self) -> anyio.LockStatistics:
        """anyio's ``LockStatistics``: whether it is held, by which task, who waits."""
        return self._lock.statistics()

    async def __aenter__(self) -> RLock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class BoundedSemaphore:
    """An anyio semaphore that refuses to be released past its initial value.

    Args:
        initial_value: the number of concurrent holders allowed.

    Raises:
        ValueError: ``initial_value`` is negative.
    """

    __slots__ = ("_initial", "_sem")

    def __init__(self, initial_value: int) -> None:
        if initial_value < 0:
            raise ValueError("initial_value must be >= 0")
        self._initial = initial_value
        self._sem = anyio.Semaphore(initial_value)

    async def acquire(self) -> None:
        """Decrement the value, waiting while it is zero."""
        await self._sem.acquire()

    def acquire_nowait(self) -> None:
        """Decrement without waiting.

        Raises:
            WouldBlock: the value is zero (also ``anyio.WouldBlock``).
        """
        try:
            self._sem.acquire_nowait()
        except anyio.WouldBlock:
            raise WouldBlock("BoundedSemaphore is at zero") from None

    def release(self) -> None:
        """Increment the value.

        Raises:
            TooManyReleases: it would exceed the initial value (a ValueError).
        """
        if self._sem.value >= self._initial:
            raise TooManyReleases("BoundedSemaphore released too many times")
        self._sem.release()

    @property
    def value(self) -> int:
        """The current value."""
        return self._sem.value

    @property
    def max_value(self) -> int:
        """The initial (and highest) value."""
        return self._initial

    def statistics(self) -> anyio.SemaphoreStatistics:
        """anyio's semaphore statistics (``tasks_waiting``)."""
        return self._sem.statistics()

    async def __aenter__(self) -> BoundedSemaphore:
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


# -- thread-safe variants -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThreadSafeStatistics:
    """Waiters of a thread-safe primitive.

    Attributes:
        tasks_waiting: tasks blocked in ``await acquire()`` / ``await wait()``.
        threads_waiting: threads blocked in ``sync_acquire()`` / ``sync_wait()``.
    """

    tasks_waiting: int
    threads_waiting: int


def _stats(waiters: deque[_Waiter]) -> ThreadSafeStatistics:
    threads = sum(1 for loop, _ in waiters if loop is None)
    return ThreadSafeStatistics(tasks_waiting=len(waiters) - threads, threads_waiting=threads)


class ThreadSafeEvent:
    """An event set from anywhere and waited for by tasks and threads.

    ``set()`` and ``clear()`` may be called from any thread (or a signal-free
    callback); tasks ``await event.wait()``, threads ``event.sync_wait(timeout)``.
    """

    __slots__ = ("_flag", "_lock", "_waiters")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flag = False
        self._waiters: deque[_Waiter] = deque()

    def is_set(self) -> bool:
        """Whether the event is set."""
        return self._flag

    def set(self) -> None:
        """Set the event and wake every waiter, task or thread."""
        with self._lock:
            self._flag = True
            waiters = self._waiters
            self._waiters = deque()
        for waiter in waiters:
            _wake(waiter)

    def clear(self) -> None:
        """Reset the event (waiters that were woken stay woken)."""
        self._flag = False

    async def wait(self) -> None:
        """Wait in a task until the event is set (returns at once if it is)."""
        if self._flag:
            return
        loop = _running("ThreadSafeEvent.wait()")
        fut: asyncio.Future[None] = loop.create_future()
        entry: _Waiter = (loop, fut)
        with self._lock:
            if self.is_set():  # re-checked under the lock
                return
            self._waiters.append(entry)
        try:
            await fut
        except BaseException:
            with self._lock:
                try:
                    self._waiters.remove(entry)
                except ValueError:
                    pass
            raise

    def sync_wait(self, timeout: float | None = None) -> bool:
        """Block a plain thread until the event is set.

        Args:
            timeout: most seconds to wait (``None``: no limit).

        Returns:
            Whether the event is set (``False`` only on timeout).

        Raises:
            RuntimeStateError: called inside a running event loop.
        """
        with self._lock:
            if self._flag:
                return True
            _refuse_blocking_in_loop("ThreadSafeEvent.sync_wait()")
            w = allocate_lock()
            w.acquire()
            entry: _Waiter = (None, w)
            self._waiters.append(entry)
        if w.acquire(True, -1.0 if timeout is None else max(timeout, 0.0)):
            return True
        with self._lock:
            try:
                self._waiters.remove(entry)
            except ValueError:
                return True
        return self._flag

    def statistics(self) -> ThreadSafeStatistics:
        """Who is waiting."""
        with self._lock:
            return _stats(self._waiters)


class AcquireContext:
    """``async with x`` / ``with x`` for anything with ``acquire()``,
    ``sync_acquire()`` and ``release()`` (the thread-safe and process-shared
    primitives share it)."""

    __slots__ = ()

    async def acquire(self) -> None:  # pragma: no cover - every user defines it
        raise NotImplementedError

    def sync_acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        raise NotImplementedError  # pragma: no cover

    def release(self) -> None:  # pragma: no cover
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def __enter__(self) -> Self:
        self.sync_acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class ThreadSafeSemaphore(AcquireContext):
    """A semaphore shared by tasks and plain threads, FIFO-fair across both.

    Tasks: ``await sem.acquire()`` / ``async with sem``.  Threads:
    ``sem.sync_acquire(timeout=...)`` / ``with sem``.  ``release()`` works from
    anywhere.

    Args:
        value: the initial value (concurrent holders allowed).
        bounded: refuse a release past the initial value with
            :class:`~anycore.errors.TooManyReleases`.

    Raises:
        ValueError: ``value`` is negative.
    """

    __slots__ = ("_bounded", "_initial", "_lock", "_value", "_waiters")

    def __init__(self, value: int = 1, *, bounded: bool = False) -> None:
        if value < 0:
            raise ValueError("value must be >= 0")
        self._lock = threading.Lock()
        self._value = value
        self._initial = value
        self._bounded = bounded
        self._waiters: deque[_Waiter] = deque()

    @property
    def value(self) -> int:
        """The current value."""
        return self._value

    def _try(self) -> bool:
        # Lock held.  No barging past queued waiters.
        if self._value > 0 and not self._waiters:
            self._value -= 1
            return True
        return False

    async def acquire(self) -> None:
        """Acquire in a task, waiting (without blocking the loop) if needed."""
        loop = _running(f"{type(self).__name__}.acquire()")
        with self._lock:
            if self._try():
                return
            fut: asyncio.Future[None] = loop.create_future()
            entry: _Waiter = (loop, fut)
            self._waiters.append(entry)
        try:
            await fut
        except BaseException:
            with self._lock:
                try:
                    self._waiters.remove(entry)
                except ValueError:
                    # Ownership was handed to us: hand it on.
                    self._release_locked()
            raise

    def acquire_nowait(self) -> None:
        """Acquire if possible without waiting (from anywhere).

        Raises:
            WouldBlock: no token is free, or others are queued for one.
        """
        with self._lock:
            if self._try():
                return
        raise WouldBlock(f"{type(self).__name__} has no token free")

    def sync_acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Acquire in a plain thread (``threading.Semaphore.acquire``'s shape).

        Args:
            blocking: ``False``: do not wait.
            timeout: most seconds to wait (``None``: no limit).

        Returns:
            Whether it was acquired.

        Raises:
            RuntimeStateError: it would block inside a running event loop.
        """
        with self._lock:
            if self._try():
                return True
            if not blocking:
                return False
            _refuse_blocking_in_loop("sync_acquire()")
            w = allocate_lock()
            w.acquire()
            entry: _Waiter = (None, w)
            self._waiters.append(entry)
        got = False
        try:
            got = w.acquire(True, -1.0 if timeout is None else max(timeout, 0.0))
        finally:
            if not got:
                with self._lock:
                    try:
                        self._waiters.remove(entry)
                    except ValueError:
                        got = True  # handed over just as we stopped waiting
        return got

    def release(self) -> None:
        """Release once (from a task or a thread), handing over to the next waiter.

        Raises:
            TooManyReleases: bounded, and the value would pass its initial value.
        """
        with self._lock:
            if self._bounded and self._value >= self._initial and not self._waiters:
                raise TooManyReleases(f"{type(self).__name__} released too many times")
            self._release_locked()

    def _release_locked(self) -> None:
        waiters = self._waiters
        while waiters:
            if _wake(waiters.popleft()):
                return
        self._value += 1

    def statistics(self) -> ThreadSafeStatistics:
        """Who is waiting."""
        with self._lock:
            return _stats(self._waiters)


class ThreadSafeLock(ThreadSafeSemaphore):
    """A lock shared by tasks (``async with lock``) and threads (``with lock``).

    Like :class:`threading.Lock` it has no owner: any task or thread may
    release it.  Releasing an unlocked lock raises
    :class:`~anycore.errors.TooManyReleases`.
    """

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(1, bounded=True)

    def locked(self) -> bool:
        """Whether the lock is held."""
        return self._value == 0


class ThreadSafeCondition:
    """A condition variable shared by tasks and plain threads.

    ``threading.Condition`` for code that spans the loop and threads: tasks
    ``async with cond: await cond.wait()``, threads ``with cond:
    cond.sync_wait()``; ``notify`` / ``notify_all`` from either side, with
    the lock held.  Waiters are woken in FIFO order across both kinds.  A
    task cancelled while it waits re-acquires the lock before the
    cancellation propagates (as ``asyncio.Condition`` does) and, if it had
    just been notified, passes the notification on, so none is lost.

    Args:
        lock: the :class:`ThreadSafeLock` to use (a new one by default).
    """

    __slots__ = ("_guard", "_lock", "_waiters")

    def __init__(self, lock: ThreadSafeLock | None = None) -> None:
        self._lock = lock if lock is not None else ThreadSafeLock()
        self._guard = threading.Lock()
        self._waiters: deque[_Waiter] = deque()

    @property
    def lock(self) -> ThreadSafeLock:
        """The underlying lock."""
        return self._lock

    def _check_held(self, what: str) -> None:
        if not self._lock.locked():
            raise RuntimeStateError(f"{what} needs the condition's lock held")

    # -- tasks -------------------------------------------------------------------

    async def wait(self) -> None:
        """Release the lock, wait for a notification, re-acquire the lock (in a task)."""
        self._check_held("wait()")
        loop = _running("ThreadSafeCondition.wait()")
        fut: asyncio.Future[None] = loop.create_future()
        entry: _Waiter = (loop, fut)
        with self._guard:
            self._waiters.append(entry)
        self._lock.release()
        cancelled: BaseException | None = None
        try:
            await fut
        except BaseException as exc:
            cancelled = exc
            with self._guard:
                try:
                    self._waiters.remove(entry)
                    notified = False
                except ValueError:
                    notified = True
            if notified:
                self._notify_locked_guard(1)  # hand the notification on
        # Re-acquire whatever happens; a cancellation waits for the lock first
        # (shielded: a cancel scope that stays cancelled must not spin here).
        with anyio.CancelScope(shield=True):
            await self._lock.acquire()
        if cancelled is not None:
            raise cancelled

    async def wait_for(self, predicate: Callable[[], _T]) -> _T:
        """Wait until ``predicate()`` is true (checked with the lock held); return it."""
        result = predicate()
        while not result:
            await self.wait()
            result = predicate()
        return result

    # -- threads -----------------------------------------------------------------

    def sync_wait(self, timeout: float | None = None) -> bool:
        """Release the lock, wait for a notification, re-acquire (in a plain thread).

        Returns:
            False when ``timeout`` passed without a notification.

        Raises:
            RuntimeStateError: called inside a running event loop.
        """
        self._check_held("sync_wait()")
        _refuse_blocking_in_loop("sync_wait()")
        w = allocate_lock()
        w.acquire()
        entry: _Waiter = (None, w)
        with self._guard:
            self._waiters.append(entry)
        self._lock.release()
        try:
            got = w.acquire(True, -1.0 if timeout is None else max(timeout, 0.0))
            if not got:
                with self._guard:
                    try:
                        self._waiters.remove(entry)
                    except ValueError:
                        got = True  # notified just as the wait timed out
            return got
        finally:
            self._lock.sync_acquire()

    def sync_wait_for(self, predicate: Callable[[], _T], timeout: float | None = None) -> _T:
        """``threading.Condition.wait_for``: wait until ``predicate()`` is true."""
        deadline = None if timeout is None else time.monotonic() + timeout
        result = predicate()
        while not result:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self.sync_wait(left)
            result = predicate()
        return result

    # -- either side --------------------------------------------------------------

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiters (the lock must be held)."""
        self._check_held("notify()")
        self._notify_locked_guard(n)

    def notify_all(self) -> None:
        """Wake every waiter (the lock must be held)."""
        self._check_held("notify_all()")
        self._notify_locked_guard(len(self._waiters))

    def _notify_locked_guard(self, n: int) -> None:
        with self._guard:
            woken = 0
            while woken < n and self._waiters:
                if _wake(self._waiters.popleft()):
                    woken += 1

    def statistics(self) -> ThreadSafeStatistics:
        """Who is waiting for a notification."""
        with self._guard:
            return _stats(self._waiters)

    async def __aenter__(self) -> ThreadSafeCondition:
        await self._lock.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()

    def __enter__(self) -> ThreadSafeCondition:
        self._lock.sync_acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.release()
