"""The engine of anycore's buffered log handlers: lossless, never a write per record.

Owns :class:`ThreadedHandler` - the pending buffer with its record and byte
bounds, the overflow policy, who writes (the loop, a plain thread, or the
writer thread) and when.  The file and stream flavours built on it live in
:mod:`._sink`; the child-forwarding and SMTP handlers subclass it too.

How a record travels (docs/logging.md, "Design", also says what was
rejected and why):

* ``emit`` formats and encodes the record on the caller's thread and appends
  the bytes to one pending buffer, bounded in records *and* bytes.
* While the sink is fast, the loop itself writes the buffer: at most once
  per loop iteration (a ``call_soon`` armed by the first record of the
  iteration), or at once when 64 KiB are waiting; a pipe or terminal only in
  pieces it takes without waiting (:mod:`._access`).  Plain threads (and
  trio) write their record at once.
* The first write to a regular file (whose speed nothing tells in advance)
  is a probe: a helper thread makes it while the loop waits at most
  ``slow_write`` (:class:`._access.Prober`).  A probe or a later write slower
  than ``slow_write`` (plus 10 ns per byte), or a pipe without room, hands
  the writing to the handler's writer thread for a hold (10 ms, doubling
  while the sink stays slow, up to ``slow_hold``); the loop then only
  appends.  It takes the writing back when a probe at the end of the hold,
  or a write of the writer thread, is fast.
* When the buffer is full the ``overflow`` policy decides: ``"block"`` (the
  default) makes the caller write the buffer itself, waiting for the sink as
  the stdlib's FileHandler does; ``"drop_oldest"`` and ``"drop_newest"``
  drop and count (``handler.dropped``), and the count is written into the
  sink itself once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
import sys
import threading
import time
import traceback
from typing import Any, Literal

import anyio

from . import _lifecycle
from ._access import (
    PROBER,
    Access,
    Signal,
    fd_access,
    may_stall,
    on_loop_thread,
    on_trio,
    write_polled,
)
from ._pending import HandlerStatistics, Pending, item_size

__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_QUEUE_SIZE",
    "Overflow",
    "ThreadedHandler",
]

_get_running_loop = asyncio._get_running_loop
_perf = time.perf_counter


Overflow = Literal["block", "drop_oldest", "drop_newest"]
_OVERFLOWS = ("block", "drop_oldest", "drop_newest")

DEFAULT_QUEUE_SIZE = 100_000
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_BATCH = 4096
# The loop writes at once, without waiting for the end of the iteration,
# when this much is waiting.
WRITE_SIZE = 64 * 1024
# The most one loop iteration writes (a backlog is spread over iterations).
LOOP_WRITE_MAX = 1024 * 1024
# A write is slow when it takes longer than slow_write plus this per byte
# (10 ns: a sink taking 100 MB/s is not slow, whatever one write took).
SLOW_PER_BYTE = 1e-8
# The first hold after a slow write; it doubles up to slow_hold while the
# sink stays slow.
HOLD_MIN = 0.01
# Probes in a row whose helper thread got no CPU in time (each costs the
# loop slow_write) before the loop writes and times the batch itself.
PROBE_MISSES = 10


class ThreadedHandler(logging.Handler):
    """Base of anycore's buffered handlers: lossless by default, never a
    write per record on the loop.

    Subclasses implement :meth:`_prepare` (runs on the caller's thread and
    returns what is written) and :meth:`_write_batch`, and optionally
    :meth:`_writer_flush`, :meth:`_close_sink` and :meth:`_access` (whether
    the loop may write the sink itself; by default it may not, and the
    writer thread does all the writing).

    Args:
        queue_size: most records waiting to be written.
        max_bytes: most bytes waiting to be written (the memory bound).
        max_batch: most records per write of the writer thread.
        overflow: what a full buffer does: ``"block"`` (default: the caller
            writes the buffer itself, nothing is lost), ``"drop_oldest"`` or
            ``"drop_newest"`` (counted in :attr:`dropped` and reported once in
            the sink).
        slow_write: seconds; a write (or the probe of a new file) slower
            than this, plus 10 ns per byte, hands the writing to the writer
            thread.  The loop waits at most this long for a probe.
        slow_hold: seconds; the longest the writer thread keeps the writing
            after a slow write before the loop probes the sink again (the
            first hold is 10 ms, doubled while the sink stays slow).
        close_timeout: how long :meth:`close` and :meth:`flush` wait for the
            sink.
    """

    def __init__(
        self,
        level: int | str = logging.NOTSET,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_batch: int = DEFAULT_MAX_BATCH,
        overflow: Overflow = "block",
        slow_write: float = 0.00025,
        slow_hold: float = 1.0,
        close_timeout: float = 10.0,
    ) -> None:
        logging.Handler.__init__(self, level)
        self._init_sink(
            queue_size=queue_size,
            max_bytes=max_bytes,
            max_batch=max_batch,
            overflow=overflow,
            slow_write=slow_write,
            slow_hold=slow_hold,
            close_timeout=close_timeout,
        )

    # -- set-up -----------------------------------------------------------------

    def _init_sink(
        self,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_batch: int = DEFAULT_MAX_BATCH,
        overflow: Overflow = "block",
        slow_write: float = 0.00025,
        slow_hold: float = 1.0,
        close_timeout: float = 10.0,
    ) -> None:
        if queue_size < 1 or max_batch < 1 or max_bytes < 1:
            raise ValueError("queue_size, max_bytes and max_batch must be at least 1")
        if overflow not in _OVERFLOWS:
            raise ValueError(f"overflow must be one of {', '.join(_OVERFLOWS)}, not {overflow!r}")
        self._pending = Pending(queue_size, max_bytes)
        self.max_batch = max_batch
        self.overflow: Overflow = overflow
        self.slow_write = slow_write
        self.slow_hold = slow_hold
        self.close_timeout = close_timeout
        self.linger = 0.0005
        self._dropped = 0
        self._reported_dropped = 0
        self._failed = 0
        self._written = 0
        self._loop_writes = 0
        self._thread_writes = 0
        self._probe_writes = 0
        self._sink_ok = True
        self._closed = False
        self._reset_state()
        _lifecycle.register(self)
        if self._default_access() != "thread":
            PROBER.start()  # where a wait does not matter (not at the first write)

    def _reset_state(self) -> None:
        # Everything a fork must not share with the parent.
        pending = self._pending
        self._pending = Pending(pending.max_items, pending.max_bytes)
        # Held for a write: whoever holds it writes everything taken, in order.
        self._write_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._flush_loop: asyncio.AbstractEventLoop | None = None
        self._access_mode: Access | None = None
        # The loop writes until a probe or a write is measured slow.  (The
        # writer thread's timing cannot tell a slow sink from a busy loop: it
        # includes the wait for the GIL after the syscall.)
        self._direct = True
        self._probe_due = False  # set when a sink that may stall is classified
        self._probe_misses = 0
        self._slow_until = 0.0
        self._hold = 0.0
        self._last_slow = -1e9
        self._start_pending = False
        self._wake = Signal()
        self._sleeping = False
        self._closing = False
        self._thread: threading.Thread | None = None

    def _after_fork_child(self) -> None:
        # Records still buffered belong to the parent, which writes them.  The
        # writer thread did not survive the fork.
        self._reset_state()

    # -- the caller's side ------------------------------------------------------

    def handle(self, record: logging.LogRecord) -> bool:
        """Filter, then emit without taking the handler lock (emit is thread-safe)."""
        rv = self.filter(record)
        if rv:
            self.emit(record)
        return bool(rv)

    def emit(self, record: logging.LogRecord) -> None:
        """Format ``record`` here and buffer the result."""
        try:
            item = self._prepare(record)
        except Exception:
            self.handleError(record)
            return
        self.put(item)

    def put(self, item: Any) -> None:
        """Buffer an already prepared item (bytes or str) for writing.

        On a loop thread the write happens at the end of the loop iteration
        (or at once past 64 KiB); elsewhere at once.  A full buffer applies
        the :attr:`overflow` policy.
        """
        if self._closed:
            self._write_after_close(item)
            return
        size = item_size(item)
        waiting = self._pending.append(item, size)
        loop = _get_running_loop()
        if loop is not None and loop is not _lifecycle._last_loop:
            _lifecycle.note_loop(loop)
        if waiting < 0:
            self._overflowed(item, size, loop)
        elif not self._direct:
            if self._thread is None:
                self._go_threaded()
            elif self._sleeping:
                self._wake.set()
            if loop is not None and self._flush_loop is not loop:
                self._arm(loop)  # to probe the sink again at the end of the hold
        elif loop is None:
            # A plain thread (or trio's loop) writes now, as the stdlib does.
            self._drain_here(on_trio())
        elif waiting >= WRITE_SIZE:
            self._drain_here(True)
        elif self._flush_loop is not loop:
            self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        # Write at the end of this loop iteration.
        armed = self._flush_loop
        if armed is None or not armed.is_running():
            self._flush_loop = loop
            loop.call_soon(self._flush_soon)
        else:  # another thread's loop will write; this one does not wait for it
            self._drain_here(True)

    def _overflowed(self, item: Any, size: int, loop: asyncio.AbstractEventLoop | None) -> None:
        policy = self.overflow
        if policy == "drop_newest":
            with self._pending.lock:
                self._dropped += 1
        elif policy == "drop_oldest":
            dropped = self._pending.drop_oldest_for(item, size)
            with self._pending.lock:
                self._dropped += dropped
        else:
            # "block": the caller pays for the I/O, as with the stdlib's
            # handlers, waiting for a writer thread in the middle of a write.
            with self._write_lock:
                self._write_taken(self._pending.take(), on_loop=loop is not None, may_defer=False)
                if self._pending.append(item, size) < 0:  # one item larger than the whole buffer
                    self._write_taken([item], on_loop=loop is not None, may_defer=False)
        # Make sure whoever writes now knows there is work.
        if not self._direct:
            self._wake.set()
        elif loop is None:
            self._drain_here(on_trio())
        elif self._flush_loop is not loop:
            self._arm(loop)

    def _flush_soon(self) -> None:
        # End of a loop iteration in which records were buffered.
        self._flush_loop = None
        if self._direct:
            self._drain_here(True)
        elif (
            time.monotonic() >= self._slow_until
            and self._access() == "direct"
            and self._write_lock.acquire(False)  # not while the writer writes
        ):
            # The hold is over: probe the sink again with what is waiting.
            held = True
            try:
                if not self._direct and self._pending.items:
                    held = self._probe(self._pending.take_upto(WRITE_SIZE)) is not False
            finally:
                if held:
                    self._write_lock.release()
            if self._pending.items:
                self._rearm()
        else:
            self._wake.set()

    def _rearm(self) -> None:
        # Continue at the end of the next loop iteration.
        if self._direct:
            loop = _get_running_loop()
            if loop is not None and self._flush_loop is None:
                self._flush_loop = loop
                loop.call_soon(self._flush_soon)
        else:
            self._wake.set()

    def _drain_here(self, on_loop: bool) -> None:
        # Write everything buffered on this thread, unless the writing was
        # handed to the writer thread meanwhile.
        if self._access() == "thread":
            self._go_threaded()
            return
        lock = self._write_lock
        lock.acquire()
        held = True
        try:
            if not self._direct:
                self._wake.set()
            elif not on_loop:
                self._write_taken(self._pending.take(), on_loop=False)
            else:
                if self._probe_due:
                    fast = self._probe(self._pending.take_upto(WRITE_SIZE))
                    if fast is None:
                        self._rearm()
                        return
                    if not fast:
                        held = False  # slow: the prober releases the lock
                        return
                # One loop iteration writes at most LOOP_WRITE_MAX: a backlog
                # (left by the writer thread) is written over several iterations.
                self._write_taken(self._pending.take_upto(LOOP_WRITE_MAX), on_loop=True)
                if self._pending.items:
                    self._rearm()
        finally:
            if held:
                lock.release()

    def _probe(self, batch: list[Any]) -> bool | None:
        """Have the prober write ``batch`` while this (loop) thread waits.

        The caller holds the write lock.  True: the write took at most
        ``slow_write`` (the loop writes; the caller holds the lock again).
        False: it is still running (the writer thread takes over; the prober
        releases the lock).  None: the prober got no CPU in that time, which
        says nothing about the sink; the batch is back in the buffer and the
        next iteration probes again (after PROBE_MISSES, the loop writes and
        times it itself).
        """
        if not batch:
            return True

        def write() -> None:
            self._safe_write(batch)
            self._writer_flush_safely()
            self._probe_writes += 1

        fast = PROBER.timed(write, self._write_lock, self.slow_write)
        if fast is None:
            self._probe_misses += 1
            if self._probe_misses < PROBE_MISSES:
                self._pending.give_back(batch)
                return None
            self._write_taken(batch, on_loop=True)
            fast = True
        self._probe_due = False
        self._probe_misses = 0
        if fast:
            self._direct = True
        else:
            self._mark_slow()
            self._go_threaded()
        return fast

    def _write_taken(self, batch: list[Any], *, on_loop: bool, may_defer: bool = True) -> bool:
        """Write ``batch`` (the caller holds the write lock); False if deferred.

        On the loop, a pipe or terminal is written only in pieces it takes
        without waiting; what it cannot take goes back to the buffer and the
        writer thread takes over (unless ``may_defer`` is false: then the
        caller waits, as the "block" policy says).
        """
        if batch:
            started = _perf()
            if on_loop and may_defer and self._access() == "polled":
                rest = self._write_polled(batch)
                if rest:
                    self._pending.give_back(rest)
                    self._slow_until = time.monotonic() + self.slow_hold
                    self._go_threaded()
                    return False
            else:
                self._safe_write(batch)
                self._writer_flush_safely()
            if on_loop:
                self._loop_writes += 1
            if self._too_slow(_perf() - started, batch):
                self._mark_slow()
                if self._direct:
                    self._go_threaded()
            elif not self._direct and time.monotonic() >= self._slow_until:
                self._give_back_writing()  # measured fast (a flush, a full buffer)
        if self._sink_ok and self._dropped + self._failed > self._reported_dropped:
            self._write_drop_notice()
        return True

    def _write_polled(self, batch: list[Any]) -> list[Any]:
        # Pieces that cannot block (see write_polled); returns the rest.
        def write(piece: list[Any]) -> None:
            self._safe_write(piece)
            self._writer_flush_safely()

        fd = self._fileno()
        if fd is None:
            write(batch)
            return []
        return write_polled(fd, batch, write)

    def _go_threaded(self) -> None:
        self._direct = False
        if self._thread is None and not self._start_pending:
            # Thread.start() waits until the thread runs: not on a loop thread.
            on_loop = on_loop_thread()
            if on_loop and PROBER.submit(self._start_writer):
                self._start_pending = True
            else:
                self._start_writer()
        self._wake.set()

    def _start_writer(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._closed:
                thread = threading.Thread(
                    target=self._run,
                    name=f"anycore-log-writer:{self.name or id(self)}",
                    daemon=True,
                )
                thread.start()
                self._thread = thread
            self._start_pending = False

    def _access(self) -> Access:
        """How the loop may write this sink (see the module's design note)."""
        mode = self._access_mode
        if mode is None:
            fd = self._fileno()
            mode = self._access_mode = self._default_access() if fd is None else fd_access(fd)
            self._probe_due = mode == "direct" and self._may_stall(fd)
        return mode

    def _may_stall(self, fd: int | None) -> bool:
        # Whether the first write must be a probe (a regular file may be on
        # a slow disk); an in-memory stream and /dev/null never wait.
        return fd is not None and may_stall(fd)

    def _default_access(self) -> Access:
        # A sink without a file descriptor (a network session, an e-mail):
        # only the writer thread may wait for it.
        return "thread"

    def _fileno(self) -> int | None:
        return None

    def _write_after_close(self, item: Any) -> None:
        # Closed: write synchronously so that late records are not lost.
        with self._write_lock:
            try:
                self._write_batch([item])
                self._writer_flush()
                self._close_sink()
            except Exception:
                self._report_error("writing a record after close")

    # -- statistics -------------------------------------------------------------

    @property
    def queue_size(self) -> int:
        """Most records waiting to be written."""
        return self._pending.max_items

    @queue_size.setter
    def queue_size(self, value: int) -> None:
        self._pending.max_items = value

    @property
    def max_bytes(self) -> int:
        """Most bytes waiting to be written (the memory bound)."""
        return self._pending.max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        self._pending.max_bytes = value

    @property
    def dropped(self) -> int:
        """Records dropped by a lossy overflow policy, or lost to a failing sink."""
        return self._dropped + self._failed

    @property
    def queued(self) -> int:
        """Records waiting to be written now."""
        return len(self._pending.items)

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting to be written now."""
        return self._pending.size

    @property
    def written(self) -> int:
        """Records written so far."""
        return self._written

    @property
    def threaded(self) -> bool:
        """Whether the writer thread does the writing now (the sink is slow)."""
        return not self._direct

    def statistics(self) -> HandlerStatistics:
        """A :class:`HandlerStatistics` snapshot (any thread)."""
        return HandlerStatistics(
            written=self._written,
            dropped=self._dropped + self._failed,
            queued=len(self._pending.items),
            queued_bytes=self._pending.size,
            threaded=not self._direct,
        )

    # -- the writer thread ------------------------------------------------------

    def _run(self) -> None:
        wake = self._wake
        active = False
        while True:
            if self._pending.items:
                active = True
                with self._write_lock:
                    batch = self._pending.take_items(self.max_batch)
                    if batch:
                        started = _perf()
                        self._safe_write(batch)
                        self._writer_flush_safely()
                        self._thread_writes += 1
                        # Only a fast write counts here: a slow one may be a
                        # wait for the GIL behind a busy loop.
                        if (
                            not self._direct
                            and time.monotonic() >= self._slow_until
                            and not self._too_slow(_perf() - started, batch)
                        ):
                            self._give_back_writing()
                continue
            # Idle: report drops, give the writing back to the loop when the
            # sink has been fast for a while, then sleep.
            if self._sink_ok and self._dropped + self._failed > self._reported_dropped:
                with self._write_lock:
                    self._write_drop_notice()
                continue
            if self._closing:
                break
            if active and self.linger:
                # Let records accumulate instead of being woken per record.
                active = False
                time.sleep(self.linger)
                continue
            if (
                not self._direct
                and time.monotonic() >= self._slow_until
                and self._give_back_writing()
                and self._pending.items
            ):
                continue  # appended while we switched: written next round
            active = False
            wake.clear()
            self._sleeping = True
            if not self._pending.items and not self._closing:
                wake.wait()
            self._sleeping = False

    def _too_slow(self, took: float, batch: list[Any]) -> bool:
        """Whether writing ``batch`` in ``took`` seconds makes the sink slow."""
        if took <= self.slow_write:
            return False
        return took > self.slow_write + SLOW_PER_BYTE * sum(map(item_size, batch))

    def _mark_slow(self) -> None:
        # The writer thread keeps the writing for a hold: HOLD_MIN after a
        # long fast spell, doubling while the sink stays slow.
        now = time.monotonic()
        if now - self._last_slow > self._hold + self.slow_hold:
            hold = min(HOLD_MIN, self.slow_hold)
        else:
            hold = min(2 * self._hold, self.slow_hold)
        self._hold = hold
        self._last_slow = now
        self._slow_until = now + hold

    def _give_back_writing(self) -> bool:
        # The sink has been fast for slow_hold: the loop writes again.  What
        # is buffered stays in the one FIFO; whoever holds the write lock
        # next writes it, so the order is kept.
        if self._access() == "thread":
            return False
        self._direct = True
        return True

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

    def _writer_flush_safely(self) -> None:
        with contextlib.suppress(Exception):
            self._writer_flush()

    def _write_drop_notice(self) -> None:
        # Caller holds _write_lock.
        total = self._dropped + self._failed
        lost = total - self._reported_dropped
        self._reported_dropped = total
        record = logging.LogRecord(
            "anycore.logging",
            logging.WARNING,
            __file__,
            0,
            "%d log records dropped by %s (overflow=%s, or the sink failed; %d in all)",
            (lost, type(self).__name__, self.overflow, total),
            None,
        )
        try:
            self._write_batch([self._prepare(record)])
            self._writer_flush()
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
        """Turn a record into what is written (caller's thread)."""
        raise NotImplementedError

    def _prepare_text(self, text: str) -> Any:
        """Turn an already rendered line into what is written."""
        raise NotImplementedError

    def _write_batch(self, batch: list[Any]) -> None:
        """Write prepared items, in order (whoever holds the write lock)."""
        raise NotImplementedError

    def _writer_flush(self) -> None:
        """Push buffered output to the OS (after each write)."""

    def _close_sink(self) -> None:
        """Release the sink (at close)."""

    # -- flush and close --------------------------------------------------------

    def wait_flushed(self, timeout: float | None = None) -> bool:
        """Block until everything buffered before the call is written.

        Args:
            timeout: seconds to wait at most for a writer in the middle of a
                write (``None``: the handler's ``close_timeout``).

        Returns:
            Whether everything was written in time.
        """
        wait = self.close_timeout if timeout is None else timeout
        if not self._write_lock.acquire(timeout=max(wait, 0.0)):
            return False
        try:
            on_loop = on_loop_thread()
            return self._write_taken(self._pending.take(), on_loop=on_loop)
        finally:
            self._write_lock.release()

    async def aflush(self, timeout: float | None = None) -> bool:
        """Wait, without blocking the loop, until buffered records are written.

        Returns:
            Whether everything was written in time.
        """
        if not self._pending.items and not self._write_lock.locked():
            return True
        if (
            self._direct
            and self._access() == "direct"
            and not self._probe_due
            and not self._write_lock.locked()
        ):
            return self.wait_flushed(timeout)  # a fast sink: no thread hop
        return await anyio.to_thread.run_sync(self.wait_flushed, timeout, abandon_on_cancel=True)

    def flush(self) -> None:
        """Write what is buffered; on a loop thread only while the sink is fast.

        ``logging.shutdown`` and plain threads get the stdlib meaning (written
        when this returns); a coroutine should ``await handler.aflush()``.
        """
        if not self._direct and (on_loop_thread()):
            self._wake.set()
            return
        self.wait_flushed()

    def close(self) -> None:
        """Write everything buffered, stop the writer and release the sink.

        Waits up to ``close_timeout`` for the sink (it blocks the calling
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
                    f"{self.close_timeout}s; {len(self._pending.items)} records not written\n"
                )
                self._thread = None
                _lifecycle.unregister(self)
                logging.Handler.close(self)
                return
        self._thread = None
        if self._write_lock.acquire(timeout=self.close_timeout):
            try:
                # Records buffered while the writer was finishing are written here.
                self._safe_write_all(self._pending.take())
                if self._sink_ok and self._dropped + self._failed > self._reported_dropped:
                    self._write_drop_notice()
                self._writer_flush()
                self._close_sink()
            except Exception:
                self._report_error("closing")
            finally:
                self._write_lock.release()
        _lifecycle.unregister(self)
        logging.Handler.close(self)

    def _safe_write_all(self, batch: list[Any]) -> None:
        if batch:
            self._safe_write(batch)

    async def aclose(self) -> None:
        """:meth:`close` without blocking the loop."""
        await anyio.to_thread.run_sync(self.close)

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        return f"<{type(self).__name__} ({level}) queued={self.queued} dropped={self.dropped}>"
