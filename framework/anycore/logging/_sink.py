"""Non-blocking stdlib handlers: render on the caller's thread, write on one thread.

Owns :class:`ThreadedHandler` (the engine) and its file and stream flavours:
:class:`FileHandler`, :class:`RotatingFileHandler`,
:class:`TimedRotatingFileHandler`, :class:`WatchedFileHandler` and
:class:`StreamHandler`.  Each subclasses the stdlib class of the same name, so
``isinstance`` checks, ``namer``/``rotator`` and the rotation arithmetic keep
their stdlib meaning, and dictConfig/fileConfig arguments are the stdlib's.

How a record travels (see PERFORMANCE.md, Logging):

* ``emit`` runs on the caller's thread (the loop thread, usually): it formats
  the record and encodes it to bytes there - rendering in the writer thread
  would hold the GIL in bursts that stall the loop - then appends the bytes to
  a ``collections.deque``.  The enqueue takes no lock: ``deque.append`` is
  atomic, and the writer is woken through an :class:`threading.Event` only
  when it sleeps.  The stdlib's per-handler lock is not taken either.
* One writer thread per handler pops bounded batches, joins them and writes
  them with one ``write`` on an unbuffered file (the syscall releases the
  GIL); it also rotates and reopens.  Bytes handed to the OS survive a
  SIGKILL or ``os._exit`` of the process, so "flushed" means "written".
* The queue is bounded.  On the loop thread a full queue drops the *oldest*
  record and counts it (the writer logs the count later); other threads can
  wait for room instead (``block=True``).

Rejected: ``QueueHandler`` + ``QueueListener`` (``queue.Queue`` takes a lock
per put and convoys with the listener; the listener formats in its thread),
``asyncio`` file I/O in executors (a thread hop per record), and a shared
writer for all sinks (one slow sink delays the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import locale
import logging
import logging.handlers
import os
import stat
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import IO, Any, TypeVar

import anyio

from . import _lifecycle

__all__ = [
    "FileHandler",
    "RotatingFileHandler",
    "StreamHandler",
    "ThreadedHandler",
    "TimedRotatingFileHandler",
    "WatchedFileHandler",
]

_get_running_loop = asyncio._get_running_loop


def _in_async_run() -> bool:
    # A trio (or other non-asyncio) loop thread must not wait either.  Only
    # asked when the queue is full, so the lookup's cost does not matter.
    from .._backend import current_backend

    try:
        current_backend()
    except RuntimeError:
        return False
    return True


class _Signal:
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

    def wait(self) -> None:
        self._lock.acquire()


_T = TypeVar("_T")

DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_MAX_BATCH = 1024


class ThreadedHandler(logging.Handler):
    """Base of the handlers whose I/O runs on their own writer thread.

    Subclasses implement :meth:`_prepare` (runs on the caller's thread and
    returns what the writer writes), :meth:`_write_batch`, and optionally
    :meth:`_writer_flush` and :meth:`_close_sink` (writer thread).

    Args:
        queue_size: most records waiting for the writer; beyond it the oldest
            is dropped (and counted) or, with ``block=True`` on a thread that
            runs no event loop, the caller waits for room.
        max_batch: most records the writer takes per write.
        block: let plain threads wait for room instead of dropping.  Threads
            running an event loop never wait.
        close_timeout: how long :meth:`close` and :meth:`flush` wait for the
            writer to drain.
    """

    def __init__(
        self,
        level: int | str = logging.NOTSET,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_batch: int = DEFAULT_MAX_BATCH,
        block: bool = False,
        close_timeout: float = 10.0,
    ) -> None:
        logging.Handler.__init__(self, level)
        self._init_sink(
            queue_size=queue_size, max_batch=max_batch, block=block, close_timeout=close_timeout
        )

    # -- set-up -----------------------------------------------------------------

    def _init_sink(
        self, *, queue_size: int, max_batch: int, block: bool, close_timeout: float
    ) -> None:
        if queue_size < 1 or max_batch < 1:
            raise ValueError("queue_size and max_batch must be at least 1")
        self.queue_size = queue_size
        self.max_batch = max_batch
        self.block = block
        self.close_timeout = close_timeout
        self.linger = 0.0005
        self._dropped = 0
        self._reported_dropped = 0
        self._failed = 0
        self._written = 0
        self._sink_ok = True
        self._closed = False
        self._start_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._reset_queue()
        _lifecycle.register(self)

    def _reset_queue(self) -> None:
        self._queue: deque[Any] = deque(maxlen=self.queue_size)
        self._wake = _Signal()
        self._space = threading.Condition(threading.Lock())
        self._blocked = 0
        self._sleeping = False
        self._closing = False
        self._waiters: deque[Callable[[], object]] = deque()
        self._thread: threading.Thread | None = None

    def _after_fork_child(self) -> None:
        # Records still queued belong to the parent, which writes them.  The
        # writer thread did not survive the fork; the next record starts one.
        self._start_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._reset_queue()

    # -- the caller's side ------------------------------------------------------

    def handle(self, record: logging.LogRecord) -> bool:
        """Filter, then emit without taking the handler lock (emit is thread-safe)."""
        rv = self.filter(record)
        if rv:
            self.emit(record)
        return bool(rv)

    def emit(self, record: logging.LogRecord) -> None:
        """Format ``record`` here and queue the result for the writer thread."""
        try:
            item = self._prepare(record)
        except Exception:
            self.handleError(record)
            return
        self.put(item)

    def put(self, item: Any) -> None:
        """Queue an already prepared item (bytes or str) for the writer.

        Never blocks on a thread that runs an event loop; drops the oldest
        queued item when the queue is full (counted in :attr:`dropped`).
        """
        if self._thread is None and self._start_or_write(item):
            return
        queue = self._queue
        loop = _get_running_loop()
        if len(queue) >= self.queue_size:
            if self.block and loop is None and not self._closing and not _in_async_run():
                self._wait_for_room()
            else:
                self._dropped += 1
        queue.append(item)
        if self._sleeping:
            self._wake.set()
        if loop is not _lifecycle._last_loop and loop is not None:
            _lifecycle.note_loop(loop)

    def _wait_for_room(self) -> None:
        with self._space:
            self._blocked += 1
            try:
                while len(self._queue) >= self.queue_size and not self._closing:
                    self._wake.set()
                    self._space.wait(0.5)
            finally:
                self._blocked -= 1

    def _start_or_write(self, item: Any) -> bool:
        # Slow path: the writer is not running (after a fork) or is gone
        # (after close).  Returns True when the item was dealt with here.
        with self._start_lock:
            if self._thread is not None:
                return False
            if not self._closed:
                self._thread = threading.Thread(
                    target=self._run,
                    name=f"anycore-log-writer:{self.name or id(self)}",
                    daemon=True,
                )
                self._thread.start()
                return False
        # Closed: write synchronously so that late records are not lost.
        with self._sync_lock:
            try:
                self._write_batch([item])
                self._writer_flush()
                self._close_sink()
            except Exception:
                self._report_error("writing a record after close")
        return True

    # -- statistics -------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Records dropped because the queue was full (or the sink failed)."""
        return self._dropped + self._failed

    @property
    def queued(self) -> int:
        """Records waiting for the writer now."""
        return len(self._queue)

    @property
    def written(self) -> int:
        """Records the writer has written."""
        return self._written

    # -- the writer thread ------------------------------------------------------

    def _run(self) -> None:
        queue = self._queue
        wake = self._wake
        max_batch = self.max_batch
        linger = self.linger
        active = False
        while True:
            if queue:
                active = True
                batch: list[Any] = []
                append = batch.append
                pop = queue.popleft
                try:
                    for _ in range(max_batch):
                        append(pop())
                except IndexError:
                    pass
                if self._blocked:
                    with self._space:
                        self._space.notify_all()
                self._safe_write(batch)
                continue
            # Idle: report drops, flush, answer flush requests, then sleep.
            if self._sink_ok and self._dropped + self._failed > self._reported_dropped:
                self._write_drop_notice()
                continue
            with contextlib.suppress(Exception):
                self._writer_flush()
            waiters = self._waiters
            while waiters:
                waiters.popleft()()
            if self._closing and not queue:
                break
            if active and linger and not self._closing:
                # Let records accumulate instead of being woken per record:
                # fewer wake-ups on the loop side, larger batches here.
                active = False
                time.sleep(linger)
                continue
            active = False
            wake.clear()
            self._sleeping = True
            if not queue and not self._closing and not waiters:
                wake.wait()
            self._sleeping = False
        try:
            self._close_sink()
        except Exception:
            self._report_error("closing")
        while self._waiters:
            self._waiters.popleft()()

    def _safe_write(self, batch: list[Any]) -> None:
        try:
            self._write_batch(batch)
        except Exception:
            self._failed += len(batch)
            if self._sink_ok:  # report the first failure, not every batch
                self._report_error(f"writing {len(batch)} records")
            self._sink_ok = False
            with contextlib.suppress(Exception):
                self._close_sink()  # reopened for the next batch
        else:
            self._written += len(batch)
            self._sink_ok = True

    def _write_drop_notice(self) -> None:
        total = self._dropped + self._failed
        lost = total - self._reported_dropped
        self._reported_dropped = total
        record = logging.LogRecord(
            "anycore.logging",
            logging.WARNING,
            __file__,
            0,
            "%d log records dropped by %s (queue full or sink failing; %d in all)",
            (lost, type(self).__name__, total),
            None,
        )
        try:
            self._safe_write([self._prepare(record)])
        except Exception:
            self._report_error("reporting dropped records")

    def _report_error(self, what: str) -> None:
        if logging.raiseExceptions and sys.stderr is not None:
            with contextlib.suppress(Exception):
                sys.stderr.write(f"--- anycore.logging: {type(self).__name__} failed {what}\n")
                traceback.print_exc(file=sys.stderr)

    # -- subclass hooks ---------------------------------------------------------

    _accepts_text = False

    def _prepare(self, record: logging.LogRecord) -> Any:
        """Turn a record into what the writer writes (caller's thread)."""
        raise NotImplementedError

    def _prepare_text(self, text: str) -> Any:
        """Turn an already rendered line into what the writer writes."""
        raise NotImplementedError

    def _write_batch(self, batch: list[Any]) -> None:
        """Write prepared items, in order (writer thread)."""
        raise NotImplementedError

    def _writer_flush(self) -> None:
        """Push buffered output to the OS (writer thread, when idle)."""

    def _close_sink(self) -> None:
        """Release the sink (writer thread, at close)."""

    # -- flush and close --------------------------------------------------------

    def wait_flushed(self, timeout: float | None = None) -> bool:
        """Block until everything queued before the call is written.

        Args:
            timeout: seconds to wait at most (``None``: the handler's
                ``close_timeout``).

        Returns:
            Whether the queue drained in time.
        """
        if self._thread is None:
            return True
        done = threading.Event()
        self._waiters.append(done.set)
        self._wake.set()
        return done.wait(self.close_timeout if timeout is None else timeout)

    async def aflush(self, timeout: float | None = None) -> bool:
        """Wait, without blocking the loop, until queued records are written.

        Returns:
            Whether the queue drained in time.
        """
        if self._thread is None:
            return True
        return await anyio.to_thread.run_sync(self.wait_flushed, timeout, abandon_on_cancel=True)

    def flush(self) -> None:
        """Drain the queue; on an event-loop thread only wake the writer.

        ``logging.shutdown`` and plain threads get the stdlib meaning (written
        when this returns); a coroutine should ``await handler.aflush()``.
        """
        if self._thread is None:
            return
        if _get_running_loop() is not None or _in_async_run():
            self._wake.set()
            return
        self.wait_flushed()

    def close(self) -> None:
        """Drain the queue, stop the writer and release the sink.

        Waits up to ``close_timeout`` for the writer (it blocks the calling
        thread; from a coroutine use :meth:`aclose`).  Records emitted after
        close are written synchronously by the caller.
        """
        with self._start_lock:
            thread = self._thread
            self._closed = True
        if thread is not None and thread is not threading.current_thread():
            self._closing = True
            self._wake.set()
            thread.join(self.close_timeout)
            if thread.is_alive():
                sys.stderr.write(
                    f"anycore.logging: {type(self).__name__} writer did not finish in "
                    f"{self.close_timeout}s; {len(self._queue)} records not written\n"
                )
        self._thread = None
        if thread is not None and thread.is_alive():
            _lifecycle.unregister(self)
            logging.Handler.close(self)
            return
        with self._sync_lock:
            # Records queued while the writer was finishing are written here.
            leftover = []
            with contextlib.suppress(IndexError):
                while True:
                    leftover.append(self._queue.popleft())
            try:
                if leftover:
                    self._write_batch(leftover)
                    self._written += len(leftover)
                    self._writer_flush()
                self._close_sink()
            except Exception:
                self._report_error("closing")
        _lifecycle.unregister(self)
        logging.Handler.close(self)

    async def aclose(self) -> None:
        """:meth:`close` without blocking the loop."""
        await anyio.to_thread.run_sync(self.close)

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        return f"<{type(self).__name__} ({level}) queued={self.queued} dropped={self.dropped}>"


# -- files ----------------------------------------------------------------------


def _sink_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        "queue_size": kwargs.pop("queue_size", DEFAULT_QUEUE_SIZE),
        "max_batch": kwargs.pop("max_batch", DEFAULT_MAX_BATCH),
        "block": kwargs.pop("block", False),
        "close_timeout": kwargs.pop("close_timeout", 10.0),
    }


class _FileSink(ThreadedHandler):
    """Shared by the file handlers: an unbuffered binary file owned by the writer."""

    baseFilename: str
    mode: str
    encoding: str | None
    errors: str | None
    terminator: str
    _file: io.FileIO | None = None
    _size = 0
    _regular = True

    def _setup_file(self, delay: bool) -> None:
        encoding = self.encoding
        if encoding is None or encoding == "locale":  # io.text_encoding()'s marker
            encoding = locale.getpreferredencoding(False)
        self._encoding = encoding
        self._errors = self.errors or "strict"
        self._file = None
        if not delay:
            self._open_file()

    def _open_file(self) -> io.FileIO:
        mode = self.mode.replace("b", "").replace("t", "")
        fh = io.FileIO(self.baseFilename, mode if mode != "a+" else "a+")
        self._file = fh
        st = os.fstat(fh.fileno())
        self._size = st.st_size if "a" in mode else 0
        self._regular = stat.S_ISREG(st.st_mode)
        # A second open in "w" mode would truncate what the first wrote.
        if "w" in self.mode:
            self.mode = "a"
        return fh

    _accepts_text = True  # configure()'s structlog fast path may hand us lines

    def _prepare(self, record: logging.LogRecord) -> bytes:
        return (self.format(record) + self.terminator).encode(self._encoding, self._errors)

    def _prepare_text(self, text: str) -> bytes:
        return (text + self.terminator).encode(self._encoding, self._errors)

    def _write_bytes(self, data: bytes) -> None:
        fh = self._file or self._open_file()
        view = memoryview(data)
        while view:
            n = fh.write(view)
            if n is None:  # pragma: no cover - only non-blocking files
                continue
            view = view[n:]
        self._size += len(data)

    def _write_batch(self, batch: list[Any]) -> None:
        self._write_bytes(b"".join(batch))

    def _close_sink(self) -> None:
        fh, self._file = self._file, None
        if fh is not None:
            fh.close()


class FileHandler(_FileSink, logging.FileHandler):
    """Non-blocking :class:`logging.FileHandler` (same arguments).

    Extra keyword arguments: ``queue_size``, ``max_batch``, ``block``,
    ``close_timeout`` (see :class:`ThreadedHandler`).
    """

    def __init__(
        self,
        filename: str | os.PathLike[str],
        mode: str = "a",
        encoding: str | None = None,
        delay: bool = False,
        errors: str | None = None,
        **options: Any,
    ) -> None:
        opts = _sink_options(options)
        logging.FileHandler.__init__(self, filename, mode, encoding, True, errors)
        self._init_sink(**opts)
        self._setup_file(delay)


class RotatingFileHandler(_FileSink, logging.handlers.RotatingFileHandler):
    """Non-blocking :class:`logging.handlers.RotatingFileHandler` (rotates by size).

    The writer thread checks the size before each record, as the stdlib does,
    and rotates between two records, so no record is split or lost.
    """

    def __init__(
        self,
        filename: str | os.PathLike[str],
        mode: str = "a",
        maxBytes: int = 0,
        backupCount: int = 0,
        encoding: str | None = None,
        delay: bool = False,
        errors: str | None = None,
        **options: Any,
    ) -> None:
        opts = _sink_options(options)
        logging.handlers.RotatingFileHandler.__init__(
            self, filename, mode, maxBytes, backupCount, encoding, True, errors
        )
        self._init_sink(**opts)
        self._setup_file(delay)

    def _write_batch(self, batch: list[Any]) -> None:
        limit = self.maxBytes
        if self._file is None:
            self._open_file()
        if limit <= 0 or not self._regular:  # the stdlib never rotates /dev/null & co
            self._write_bytes(b"".join(batch))
            return
        start = 0
        size = self._size
        for i, item in enumerate(batch):
            n = len(item)
            if size + n >= limit and size > 0:
                if i > start:
                    self._write_bytes(b"".join(batch[start:i]))
                self._rollover()
                start = i
                size = 0
            size += n
        if start < len(batch):
            self._write_bytes(b"".join(batch[start:]))

    def _rollover(self) -> None:
        self._close_sink()
        self.doRollover()  # the stdlib's renames; our stream stays closed (delay)
        self._open_file()


class TimedRotatingFileHandler(_FileSink, logging.handlers.TimedRotatingFileHandler):
    """Non-blocking :class:`logging.handlers.TimedRotatingFileHandler`.

    The writer checks the clock once per batch (a batch is written within
    milliseconds of its records being logged).
    """

    def __init__(
        self,
        filename: str | os.PathLike[str],
        when: str = "h",
        interval: int = 1,
        backupCount: int = 0,
        encoding: str | None = None,
        delay: bool = False,
        utc: bool = False,
        atTime: Any = None,
        errors: str | None = None,
        **options: Any,
    ) -> None:
        opts = _sink_options(options)
        logging.handlers.TimedRotatingFileHandler.__init__(
            self, filename, when, interval, backupCount, encoding, True, utc, atTime, errors
        )
        self._init_sink(**opts)
        self._setup_file(delay)

    def _write_batch(self, batch: list[Any]) -> None:
        if int(time.time()) >= self.rolloverAt:
            if os.path.exists(self.baseFilename) and not os.path.isfile(self.baseFilename):
                self.rolloverAt = self.computeRollover(int(time.time()))
            else:
                self._close_sink()
                self.doRollover()
                self._open_file()
        self._write_bytes(b"".join(batch))


class WatchedFileHandler(_FileSink, logging.handlers.WatchedFileHandler):
    """Non-blocking :class:`logging.handlers.WatchedFileHandler`.

    Reopens the file when it was moved or deleted (logrotate); the check (one
    ``stat``) runs once per batch in the writer instead of once per record.
    """

    def __init__(
        self,
        filename: str | os.PathLike[str],
        mode: str = "a",
        encoding: str | None = None,
        delay: bool = False,
        errors: str | None = None,
        **options: Any,
    ) -> None:
        opts = _sink_options(options)
        logging.handlers.WatchedFileHandler.__init__(self, filename, mode, encoding, True, errors)
        self._init_sink(**opts)
        self._ident: tuple[int, int] | None = None
        self._setup_file(delay)

    def _open_file(self) -> io.FileIO:
        fh = super()._open_file()
        st = os.fstat(fh.fileno())
        self._ident = (st.st_dev, st.st_ino)
        return fh

    def _write_batch(self, batch: list[Any]) -> None:
        if self._file is not None:
            try:
                st = os.stat(self.baseFilename)
                moved = (st.st_dev, st.st_ino) != self._ident
            except FileNotFoundError:
                moved = True
            if moved:
                self._close_sink()
        self._write_bytes(b"".join(batch))


# -- streams --------------------------------------------------------------------


class StreamHandler(ThreadedHandler, logging.StreamHandler):  # type: ignore[type-arg]
    """Non-blocking :class:`logging.StreamHandler` (``sys.stderr`` by default).

    The writer writes each batch with one ``write`` and flushes the stream.
    """

    def __init__(self, stream: IO[str] | None = None, **options: Any) -> None:
        opts = _sink_options(options)
        logging.StreamHandler.__init__(self, stream)
        self._init_sink(**opts)

    _accepts_text = True

    def _prepare(self, record: logging.LogRecord) -> str:
        return self.format(record) + self.terminator

    def _prepare_text(self, text: str) -> str:
        return text + self.terminator

    def _write_batch(self, batch: list[Any]) -> None:
        self.stream.write("".join(batch))

    def _writer_flush(self) -> None:
        flush = getattr(self.stream, "flush", None)
        if flush is not None:
            flush()

    def setStream(self, stream: IO[str]) -> IO[str] | None:
        """Switch streams after the queue drained (stdlib semantics)."""
        if stream is self.stream:
            return None
        self.wait_flushed()
        old: IO[str] = self.stream
        self.stream = stream
        return old
