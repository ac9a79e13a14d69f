"""Which sinks the loop may write itself, whether a pipe has room now, and
how a write of unknown speed is timed without stalling the loop.

Owns the classification the buffered handlers' engine (:mod:`._engine`) asks
about a sink's file descriptor: a regular file (or ``/dev/null``) may be
written from the loop at once; a pipe, socket or terminal only in pieces of
at most ``PIPE_BUF`` bytes after ``poll()`` says it has room (POSIX: such a
write does not block); anything else only from the writer thread.

A regular file may still be slow (a slow disk, NFS, FUSE), and nothing tells
in advance.  So its first write is a *probe* (:class:`Prober`): one
process-wide helper thread makes it while the loop waits a bounded time (the
loop releases the GIL while it waits, so the helper's timing is the sink's,
not a wait for the GIL behind a busy loop).  Rejected: the writer thread
timing its own first write (a busy loop holds the GIL for the 5 ms switch
interval after the syscall, so fast files were measured slow) and a shorter
``sys.setswitchinterval`` (it is process-wide and made the busy loop itself
slower).
"""

from __future__ import annotations

import _thread
import asyncio
import collections
import os
import select
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

__all__ = [
    "PIPE_BUF",
    "PROBER",
    "Access",
    "Prober",
    "Signal",
    "fd_access",
    "may_stall",
    "on_loop_thread",
    "on_trio",
    "writable",
    "write_polled",
]

#: The most bytes a pipe takes in one write without blocking, once it polls writable.
PIPE_BUF: int = getattr(select, "PIPE_BUF", 512)

# How a sink may be written from the loop: "direct" (a regular file, an
# in-memory stream: a write does not wait for anyone), "polled" (a pipe,
# socket or terminal: only when it polls writable, in PIPE_BUF pieces) or
# "thread" (never: the writer thread does all the writing).
Access = Literal["direct", "polled", "thread"]


def fd_access(fd: int) -> Access:
    """How the loop may write the sink open on ``fd``."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return "thread"
    if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
        return "direct"
    if stat.S_ISCHR(mode):
        # A terminal may be paused; /dev/null and friends never block.
        return "polled" if os.isatty(fd) else "direct"
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return "polled"
    return "thread"


def on_trio() -> bool:
    """Whether this thread runs a trio loop (which must not wait for a pipe
    either).  Asked only where no asyncio loop runs; trio is never imported
    here."""
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


def on_loop_thread() -> bool:
    """Whether this thread runs an event loop (asyncio's or trio's)."""
    return asyncio._get_running_loop() is not None or on_trio()


def may_stall(fd: int) -> bool:
    """Whether a write to ``fd`` may take long although nothing says so in
    advance (a regular file or a block device: a slow disk, NFS, FUSE)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return True
    return stat.S_ISREG(mode) or stat.S_ISBLK(mode)


def writable(fd: int) -> bool:
    """Whether a pipe, socket or terminal has room for a write now."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    try:
        events = poller.poll(0)
    except OSError:
        return False
    return any(ev & select.POLLOUT for _, ev in events)


def write_polled(fd: int, batch: list[Any], write: Callable[[list[Any]], object]) -> list[Any]:
    """Write ``batch`` (bytes or str items) to the pipe, socket or terminal on
    ``fd`` in pieces of at most ``PIPE_BUF`` bytes, each after a poll that
    says it has room: none of these writes can block.  Returns what the sink
    had no room for.
    """
    start = 0
    n = len(batch)
    while start < n:
        end = start
        size = 0
        while end < n:
            item = batch[end]
            item_size = len(item) if type(item) is not str or item.isascii() else 4 * len(item)
            if size + item_size > PIPE_BUF and end > start:
                break
            size += item_size
            end += 1
        if size > PIPE_BUF or not writable(fd):
            return batch[start:]
        write(batch[start:end])
        start = end
    return []


class Signal:
    """A wake-up flag for one sleeper, built on a bare lock.

    ``set()`` is one C call (``Lock.release``); ``threading.Event.set`` takes
    a Condition's lock and notifies, several microseconds on the loop side.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:  # already set
            pass

    def clear(self) -> None:
        self._lock.acquire(False)

    def wait(self, timeout: float = -1) -> bool:
        return self._lock.acquire(timeout=timeout)


class Prober:
    """One helper thread per process that runs jobs the loop must not wait
    for: the probe writes (see the module's docstring) and starting a
    handler's writer thread (``Thread.start`` waits until the new thread
    runs, milliseconds on a loaded machine).

    The thread is started with ``_thread.start_new_thread``, which does not
    wait for it, and exits after ``idle`` seconds without a job, so that a
    process with fast files only has no extra thread for long (forking a
    multi-threaded process is what Python 3.12 warns about).
    """

    def __init__(self, idle: float = 5.0) -> None:
        self.idle = idle
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        # Also the child's state after a fork: the thread did not survive it.
        self._lock = threading.Lock()
        self._jobs: collections.deque[Callable[[], object]] = collections.deque()
        self._signal = Signal()
        self._running = False

    def start(self) -> bool:
        """Make sure the thread runs (called where a wait does not matter)."""
        with self._lock:
            return self._start_locked()

    def _start_locked(self) -> bool:
        if not self._running:
            try:
                _thread.start_new_thread(self._run, ())
            except RuntimeError:  # interpreter shutting down, or no more threads
                return False
            self._running = True
        return True

    def submit(self, job: Callable[[], object]) -> bool:
        """Run ``job`` in the helper thread soon; False if it cannot run."""
        with self._lock:
            if not self._start_locked():
                return False
            self._jobs.append(job)
        self._signal.set()
        return True

    def timed(self, write: Callable[[], object], lock: threading.Lock, wait: float) -> bool | None:
        """Run ``write`` in the helper thread, waiting at most about ``wait``.

        The caller holds ``lock``; the helper releases it when ``write``
        returns.  Returns True when the write took at most ``wait`` (the
        caller holds ``lock`` again), False when it is still running after
        that (the helper releases ``lock`` later), None when the helper did
        not start it within ``wait`` (it never will; the caller still holds
        ``lock``).  While waiting, the caller does not hold the GIL, so the
        helper's write is timed, not its wait for the GIL.  When no helper
        thread can run at all, the caller writes itself (True).
        """
        began = [0.0]  # when the helper began the write; -1.0: called off
        gate = threading.Lock()

        def job() -> None:
            with gate:
                if began[0] < 0:
                    return
                began[0] = time.perf_counter()
            try:
                write()
            finally:
                lock.release()

        if not self.submit(job):
            write()
            return True
        if lock.acquire(timeout=wait):
            return True
        with gate:
            start = began[0]
            if start == 0.0:
                began[0] = -1.0
                return None
        left = start + wait - time.perf_counter()  # the write's own time
        return left > 0 and lock.acquire(timeout=left)

    def _run(self) -> None:
        while True:
            with self._lock:
                job = self._jobs.popleft() if self._jobs else None
                if job is None:
                    self._signal.clear()
            if job is not None:
                try:
                    job()
                except Exception:  # a job reports its own errors
                    pass
                continue
            if not self._signal.wait(self.idle):
                with self._lock:
                    if not self._jobs:
                        self._running = False
                        return


#: The process-wide prober of anycore's buffered handlers.
PROBER = Prober()
