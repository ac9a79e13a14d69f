"""Process-shared Lock, Semaphore and Event whose waits never block the loop.

What this module owns: :class:`ProcessSemaphore`, :class:`ProcessLock` and
:class:`ProcessEvent`, synchronisation between processes (the shared-memory
types in :mod:`anycore._messaging._sharedmem` are built on them).  Tasks ``await``
them; plain code in a child process or a thread calls the ``sync_*`` methods
(or ``with``).

How: each primitive is a named FIFO (``mkfifo``) in ``/dev/shm`` (the temp
directory where there is none), and its state is the bytes in the pipe -
GNU make's jobserver idea.  For a semaphore every byte is a token:
``release`` writes one byte, acquiring reads one; a pipe hands each byte to
exactly one reader, so two processes never get the same token.  For an event
"set" means "the pipe holds a byte": waiters wait for readability and read
nothing; ``clear`` drains it.  Because the state is an fd, the loop waits
with ``loop.add_reader`` (no thread, no polling), and a cancelled wait has
taken nothing: the only step that takes a token is a non-blocking ``read``
that runs without an ``await`` in between.  A FIFO is opened by path, so a
primitive pickles as its path and works in every start method, under
:class:`anycore.ChildProcess` and in unrelated processes; every process
opens its own file description (``O_RDWR | O_NONBLOCK``), so uvloop's habit
of making watched fds non-blocking reaches no other process, and holding a
write end means a reader never sees EOF.

Rejected: ``multiprocessing``'s SemLock with the blocking ``sem_wait`` in a
helper thread (a thread hop per wait, about 50-100 us, and a cancelled wait
has to be sliced with timeouts because a thread cannot be interrupted);
eventfd (Linux only, and it has no name, so passing it to another process
needs ``SCM_RIGHTS`` plumbing); a spinning check of shared memory.

Limits, stated: a semaphore starts with at most :data:`MAX_VALUE` tokens
and is sure to hold that many (the smallest pipe buffer Linux hands out is
one page; a release into a full pipe raises TooManyReleases); waiters are woken by
readiness, so across processes there is no FIFO fairness; the async side of
one object serves one event loop at a time (a thread uses ``sync_*``).  The
process that created a primitive owns the FIFO: :meth:`close` (or scope end
of the object that owns it) unlinks it, a finalizer does so at garbage
collection and interpreter exit; processes that opened it before keep
working, later unpickling fails.  A SIGKILLed owner leaves the FIFO behind.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import select
import struct
import tempfile
import termios
import time
import weakref
from typing import Any, Self

from .._core._sync import AcquireContext, _refuse_blocking_in_loop
from ..errors import ClosedError, RuntimeStateError, TooManyReleases, WouldBlock

__all__ = ["MAX_VALUE", "ProcessEvent", "ProcessLock", "ProcessSemaphore"]

#: The largest initial value of a :class:`ProcessSemaphore`, and the fewest
#: tokens one can hold (a release is refused only when the pipe is full).
MAX_VALUE = 4096

_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
_PREFIX = "anycore-psync-"
_INT = struct.Struct("i")


def _make_fifo() -> str:
    for _ in range(16):  # 64 random bits: a clash is already astronomically rare
        path = os.path.join(_DIR, _PREFIX + secrets.token_hex(8))
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError:
            continue
        return path
    raise RuntimeStateError(f"could not create a FIFO in {_DIR}")  # pragma: no cover


def _open(path: str) -> int:
    # O_RDWR on a FIFO never blocks and keeps a writer open (Linux, BSD, macOS).
    return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class _Fifo:
    """The FIFO as this process sees it: its fd and this loop's waiters."""

    __slots__ = (
        "__weakref__",
        "_fd",
        "_finalizer",
        "_loop",
        "_path",
        "_pid",
        "_waiters",
    )

    def __init__(self, path: str | None = None) -> None:
        owner = path is None
        self._path = _make_fifo() if path is None else path
        try:
            self._fd = _open(self._path)
        except BaseException:
            if owner:
                _unlink(self._path)
            raise
        self._pid = os.getpid()
        self._waiters: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        # The owner unlinks the FIFO; every holder closes its own fd.
        self._finalizer = weakref.finalize(
            self, _release, self._fd, self._path if owner else None, self._pid
        )

    @property
    def path(self) -> str:
        """The FIFO's path."""
        return self._path

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self._fd < 0

    def fileno(self) -> int:
        if self._fd < 0:
            raise ClosedError(f"{type(self).__name__} is closed")
        return self._fd

    # The hot paths use self._fd directly: close() sets it to -1 before the fd
    # is closed, so a closed object fails with EBADF (turned into ClosedError)
    # and never touches a reused descriptor number.

    def _closed_instead(self, exc: OSError) -> OSError | ClosedError:
        if self._fd < 0:
            return ClosedError(f"{type(self).__name__} is closed")
        return exc

    def _pending(self) -> int:
        try:
            buf = fcntl.ioctl(self._fd, termios.FIONREAD, b"\0" * _INT.size)
        except OSError as exc:
            raise self._closed_instead(exc) from None
        return int(_INT.unpack(buf)[0])

    def _take(self, limit: int) -> int:
        try:
            return len(os.read(self._fd, limit))
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise self._closed_instead(exc) from None

    def _put(self, data: bytes) -> None:
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            raise self._closed_instead(exc) from None
        if written != len(data):  # pragma: no cover - MAX_VALUE keeps us below one page
            raise TooManyReleases(f"{type(self).__name__}: the pipe is full")

    async def _readable(self) -> None:
        """Return once the FIFO is readable (or spuriously); takes nothing."""
        loop = asyncio.get_running_loop()
        fd = self.fileno()
        if self._pid != os.getpid():  # a forked child: the fd is inherited, waiters are not
            self._pid = os.getpid()
            self._waiters = set()
            self._loop = None
        if self._waiters and self._loop is not loop:
            raise RuntimeStateError(
                f"{type(self).__name__} is being awaited in another event loop; "
                "use a second copy of it or the sync_* methods"
            )
        fut: asyncio.Future[None] = loop.create_future()
        if not self._waiters:
            loop.add_reader(fd, self._wake)
            self._loop = loop
        self._waiters.add(fut)
        try:
            await fut
        finally:
            self._waiters.discard(fut)
            if not self._waiters and self._loop is loop:
                loop.remove_reader(fd)
                self._loop = None

    def _wake(self) -> None:
        # The fd is level-triggered: stop watching, let every waiter look.
        waiters, self._waiters = self._waiters, set()
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _poll(self, deadline: float | None) -> bool:
        """Block this thread until readable or the deadline; False on timeout."""
        # A poll object per call: one shared by threads would refuse
        # concurrent waits ("concurrent poll() invocation").
        poller = select.poll()
        poller.register(self.fileno(), select.POLLIN)
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        ms = None if remaining is None else max(1, int(remaining * 1000) + 1)
        return bool(poller.poll(ms))

    def close(self) -> None:
        """Close this process's fd; the owner also unlinks the FIFO.  Idempotent."""
        if self._loop is not None and self._pid == os.getpid():
            self._loop.remove_reader(self._fd)
            self._loop = None
        for fut in self._waiters:
            if not fut.done():
                fut.set_exception(ClosedError(f"{type(self).__name__} was closed"))
        self._waiters = set()
        self._fd = -1
        self._finalizer()

    async def aclose(self) -> None:
        """:meth:`close`, for ``contextlib.aclosing`` and owners' scopes."""
        self.close()


def _release(fd: int, path: str | None, owner_pid: int) -> None:
    os.close(fd)
    if path is not None and os.getpid() == owner_pid:  # not in a forked child
        _unlink(path)


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + max(timeout, 0.0)


class ProcessSemaphore(_Fifo, AcquireContext):
    """A semaphore shared by processes; tasks ``await`` it, other code blocks.

    Pass it to a child process (``ChildProcess`` or ``multiprocessing``
    arguments, or any pickle): the copy opens the same FIFO.  The creating
    object owns the FIFO; close it (or let the object owning it, such as a
    :class:`~anycore.SharedValue`, end its scope) when every process has
    its copy.

    Args:
        value: the initial value, ``0 <= value <= MAX_VALUE``.
        bounded: refuse a release past the initial value with
            :class:`~anycore.errors.TooManyReleases`.

    Raises:
        ValueError: ``value`` is out of range.
    """

    __slots__ = ("_max",)

    def __init__(self, value: int = 1, *, bounded: bool = False) -> None:
        if not 0 <= value <= MAX_VALUE:
            raise ValueError(f"value must be between 0 and {MAX_VALUE}, got {value}")
        super().__init__()
        self._max = value if bounded else MAX_VALUE
        if value:
            self._put(b"\0" * value)

    @classmethod
    def _attach(cls, path: str, max_value: int) -> Self:
        self = cls.__new__(cls)
        _Fifo.__init__(self, path)
        self._max = max_value
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (_attach, (type(self), self._path, self._max))

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"value={self.value}"
        return f"<{type(self).__name__} {state} {self._path}>"

    @property
    def value(self) -> int:
        """The current value (a snapshot: other processes change it)."""
        return self._pending()

    def acquire_nowait(self) -> None:
        """Acquire if a token is there, without waiting (from anywhere).

        Raises:
            WouldBlock: no token is there.
        """
        if self._take(1) != 1:
            raise WouldBlock(f"{type(self).__name__} has no token free")

    async def acquire(self) -> None:
        """Acquire in a task, waiting without blocking the loop.

        Cancellation-safe: a cancelled acquire has taken nothing.

        Raises:
            ClosedError: this copy was closed.
        """
        while self._take(1) != 1:
            await self._readable()

    def sync_acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Acquire in a plain thread or a child process's synchronous code.

        Args:
            blocking: ``False``: do not wait.
            timeout: most seconds to wait (``None``: no limit).

        Returns:
            Whether it was acquired.

        Raises:
            RuntimeStateError: it would block inside a running event loop.
        """
        if self._take(1) == 1:
            return True
        if not blocking:
            return False
        _refuse_blocking_in_loop("sync_acquire()")
        deadline = _deadline(timeout)
        while True:
            if not self._poll(deadline):
                return False
            if self._take(1) == 1:
                return True

    def release(self) -> None:
        """Release once (from anywhere, any process).

        Raises:
            TooManyReleases: the value would pass its bound.
        """
        if self._max < MAX_VALUE and self._pending() >= self._max:
            raise TooManyReleases(f"{type(self).__name__} released too many times")
        self._put(b"\0")  # unbounded: refused only when the pipe is full

    def _post(self) -> None:
        # release() without the bound check (one ioctl less), for owners that
        # know the token is theirs to give back (the channel's slots and locks).
        self._put(b"\0")


class ProcessLock(ProcessSemaphore):
    """A lock shared by processes: ``async with lock`` in tasks, ``with lock`` elsewhere.

    Like :class:`multiprocessing.Lock` it has no owner: any process may
    release it.  Releasing an unlocked lock raises
    :class:`~anycore.errors.TooManyReleases`.
    """

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(1, bounded=True)

    def locked(self) -> bool:
        """Whether the lock is held (by any process)."""
        return self.value == 0


class ProcessEvent(_Fifo):
    """An event shared by processes: ``set`` in one, ``await wait()`` in another.

    Tasks ``await wait()``; synchronous code calls :meth:`sync_wait`.  Pickle
    it (child-process arguments) to share it; the creating object owns the
    FIFO (see :class:`ProcessSemaphore`).
    """

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_attach_event, (self._path,))

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("set" if self.is_set() else "unset")
        return f"<ProcessEvent {state} {self._path}>"

    def is_set(self) -> bool:
        """Whether the event is set."""
        return self._pending() > 0

    def set(self) -> None:
        """Set the event, waking every waiter in every process."""
        if not self.is_set():
            self._put(b"\1")

    def clear(self) -> None:
        """Clear the event."""
        while self._take(MAX_VALUE):
            pass

    async def wait(self) -> None:
        """Wait in a task until the event is set (the loop keeps running)."""
        while not self.is_set():
            await self._readable()

    def sync_wait(self, timeout: float | None = None) -> bool:
        """Block this thread until set or *timeout* seconds passed.

        Returns:
            Whether the event is set.

        Raises:
            RuntimeStateError: it would block inside a running event loop.
        """
        if self.is_set():
            return True
        _refuse_blocking_in_loop("sync_wait()")
        deadline = _deadline(timeout)
        while not self.is_set():
            if not self._poll(deadline):
                return self.is_set()
        return True


def _attach(cls: type[ProcessSemaphore], path: str, max_value: int) -> ProcessSemaphore:
    return cls._attach(path, max_value)


def _attach_event(path: str) -> ProcessEvent:
    self = ProcessEvent.__new__(ProcessEvent)
    _Fifo.__init__(self, path)
    return self
