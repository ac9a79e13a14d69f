# Design: the asyncio driver - one Handler on an asyncio (or uvloop) transport.
#
# This module owns ``_ProtocolDriver``, the asyncio.Protocol that runs one
# handler (``_handler``) per connection; the state and policy it shares with
# the anyio driver are ``_connection_base._Connection``'s.  ``_Owner`` is what
# it reports to whoever owns the connection (the server's accept side,
# ``_accept``; a client connection has the default owner).
#
# The hot path is deliberately flat: per read batch the driver calls
# ``framer.feed(data)``, then ``framer.next_frame()`` in a loop with one handler
# call per frame; replies go into a list and leave in one ``transport.write`` at
# the end of the batch.  Every 16 frames the replies collected are measured: at
# ``write_high_water`` the batch stops, the frames not handled yet go back into
# the framer, reading pauses, and handling resumes (``writing_resumed``) once the
# transport has drained, so one small read cannot build unbounded output (a
# batch of up to 16 frames is a bare loop, as fast as without the check).
# Synchronous handlers never cost a task, a future or an await.  A class whose
# frame method (or connection_made) is ``async def`` is detected once per class
# and its frames are awaited in order by one task per connection, with reading
# paused while more than ``max_queued_frames`` wait.
#
# When a connection has finished, the driver drops its references to the handler
# (and the handler's bound ``send``), so no reference cycle keeps a closed
# connection's state alive until the cyclic GC runs.
#
# Rejected alternatives:
# - Counting output bytes in the batch's ``send`` (a Python method instead of
#   ``list.append``: +0.9 us per batch of 16 echoed lines, +25%), or checking a
#   bytearray's length after every frame: both cost on every frame.  Measuring
#   every 16 frames bounds the overshoot to 16 replies and costs nothing on
#   batches of up to 16 frames.
# - asyncio streams (StreamReader/StreamWriter) under the handler: one await and
#   one write per message; 0.05-0.2x of a batched Protocol server on pipelined
#   request/response (the team's measurements in shared/PERFORMANCE.md).
# - BufferedProtocol: the framers take ``bytes`` and keep their own buffer, so
#   buffer_updated() must copy out of the bytearray first.  Measured on uvloop
#   with redis-benchmark (inline PING, -P 16, server CPU per request, 3 runs):
#   Protocol + framer about 0.91 us, BufferedProtocol + framer about 1.08 us.
# - Scheduling a flush with call_soon for sends made outside a read batch: it
#   would coalesce more, but leaves the reply in user space for a loop
#   iteration (not measured; rejected for latency).  A send outside a batch is
#   written at once (asyncio appends it to the transport buffer without a
#   syscall when one is already pending).
# - Parsing frames lazily in the handler task: exact under framer switches, but
#   then "how many frames wait" is unknown and reading cannot be paused by count.
#   Frames are parsed eagerly; when an async handler switches framers while
#   frames are queued, the queued frames are re-encoded into the new framer (exact
#   for every byte framer, whose encode() is the inverse of parsing).

from __future__ import annotations

import asyncio
import collections
import contextvars
import itertools
import socket
import ssl as _ssl
from collections.abc import Callable, Iterator
from typing import Any, cast

from .._core._state import connection_context
from ..errors import ClosedError, LocalProtocolError, RemoteProtocolError
from ._connection_base import _Connection, log_handler_error, peer_string
from ._framing import Framer, RawFramer
from ._guard import GuardPolicy, _Guard
from ._handler import Handler, _not_bytes
from ._loglimit import limiter_of

__all__: list[str] = []

# The frame queue of connections whose handler is synchronous: always empty
# (only the async path appends), shared to save a deque per connection.
_NO_FRAMES: collections.deque[bytes] = collections.deque(maxlen=0)

# Back-pressure inside a read batch: the replies collected are measured every
# this many frames (a batch of up to this many runs as a bare loop).
_CHECK_EVERY = 16


class _Owner:
    """What a driver reports to whoever owns the connection (a server or client)."""

    def connection_started(self, driver: _ProtocolDriver) -> bool:
        """A connection is up; return False to refuse it (it is aborted)."""
        return True

    def connection_finished(self, driver: _ProtocolDriver) -> None:
        """A connection is gone and its handler has finished."""

    def handler_failed(self) -> None:
        """A handler raised (counted as an error)."""


_default_owner = _Owner()


class _ProtocolDriver(asyncio.Protocol, _Connection):
    """Runs one Handler on an asyncio (or uvloop) transport."""

    # The shared state's slots are _Connection's.
    __slots__ = (
        "_append",
        "_batch",
        "_drain_waiters",
        "_fast_send",
        "_finished",
        "_finished_waiter",
        "_guard",
        "_held",
        "_high",
        "_idle_handle",
        "_made",
        "_max_queued",
        "_queue_full",
        "_reading_paused",
        "_resume_handle",
        "_special",
        "_stop",
        "_task",
        "_task_mode",
        "_transport",
        "_waiter",
        "_write_paused",
        "loop",
        "owner",
        "server_side",
    )

    def __init__(
        self,
        handler: Handler,
        *,
        owner: _Owner = _default_owner,
        server_side: bool = True,
        idle_timeout: float | None = None,
        write_buffer_limit: int | None = None,
        guard: GuardPolicy | None = None,
    ) -> None:
        self.owner = owner
        self.server_side = server_side
        self.loop = asyncio.get_running_loop()
        self._guard: _Guard | None = None if guard is None else _Guard(self, guard)
        self._transport: asyncio.Transport | None = None
        self._batch: Iterator[bytes] | None = None  # frames of the batch in progress
        self._stop = False  # ends the current batch loop: closing, or a framer switch
        self._finished = False
        self._finished_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._reading_paused = False
        self._queue_full = False
        self._made = False
        # Created on first use: an idle connection should cost little memory.
        self._drain_waiters: list[asyncio.Future[None]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._task_mode = False
        self._special = False  # idle timeout or task mode: the hot path tests one flag
        self._waiter: asyncio.Future[None] | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._max_queued = max(1, handler.max_queued_frames)
        self._setup(handler, "?", _NO_FRAMES, idle_timeout, write_buffer_limit)
        # The fast send path: skip Handler.send's indirection unless overridden.
        # Bound once: the batch swaps these in and out without allocating.
        self._fast_send: Callable[[bytes], None] | None = None
        self._append = self._out.append
        # Back-pressure inside a read batch: every _CHECK_EVERY frames the
        # replies collected are measured; at write_high_water the batch stops
        # (``_held``) and the frames left go back to the framer until the
        # transport has drained.
        self._high = max(1, handler.write_high_water)
        self._held = False
        self._resume_handle: asyncio.Handle | None = None
        if type(handler).send is Handler.send:
            handler.send = self._fast_send = self.send  # type: ignore[method-assign]

    # -- asyncio.Protocol callbacks ---------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self.log_context["peer"] = peer_string(transport.get_extra_info("peername"))
        connection_context.set(self.log_context)
        _set_nodelay(transport)
        handler = self.handler
        transport.set_write_buffer_limits(handler.write_high_water, handler.write_low_water)
        if not self.owner.connection_started(self):
            self._closing = True
            transport.abort()
            return
        self._made = True
        if self.idle_timeout is not None:
            self._special = True
            self._last_activity = self.loop.time()
            self._idle_handle = self.loop.call_later(self.idle_timeout, self._check_idle)
        if self._guard is not None:
            self._guard.start()
        info = self._info
        if info.made_async or info.frame_async:
            self._task_mode = self._special = True
            self._queue = collections.deque()
            if not info.made_async and not self._call_sync(
                "connection_made", handler.connection_made
            ):
                return
            ctx = contextvars.copy_context()
            self._task = self.loop.create_task(
                self._run_task(), name=f"anycore-conn-{self.connection_id}", context=ctx
            )
        else:
            self._call_sync("connection_made", handler.connection_made)

    def data_received(self, data: bytes) -> None:
        connection_context.set(self.log_context)
        self.bytes_in += len(data)
        self.reads += 1
        if self._special:  # an idle timeout, frames handled by a task, or held
            if self.idle_timeout is not None:
                self._last_activity = self.loop.time()
            if self._task_mode:
                self._enqueue(data)
                return
            if self._held:
                # Reading is paused; bytes still delivered wait in the framer.
                if not self._closing:
                    try:
                        self.framer.feed(data)
                    except RemoteProtocolError as exc:
                        self._protocol_error(exc)
                return
        if self._closing:
            return
        # The hot path: one handler call per frame, frames cut in bulk when the
        # framer can (``next_frames``), a RawHandler's chunk handed over without
        # the framer.  During the batch the handler's send() is the reply list's
        # append (when not overridden); ``_stop`` is raised by close()/abort()
        # and set_framer(), which also take back the frames of the batch not
        # handled yet (``_take_back_batch``).
        handler = self.handler
        out = self._out
        fast = self._fast_send
        if fast is not None:
            handler.send = self._append  # type: ignore[method-assign,assignment]
        self._in_batch = True
        cb = self._cb
        n = 0
        framer = self.framer
        try:
            # RawFramer.passes_through(data), inlined: the chunk is the frame.
            if (
                type(framer) is RawFramer
                and not framer._size
                and len(data) <= framer.max_frame_size
            ):
                n = 1
                cb(data)
                if self._stop:
                    n += self._frame_loop(cb)
            else:
                framer.feed(data)
                frames = framer.next_frames()
                if frames:
                    n = len(frames)
                    self._batch = batch = iter(frames)
                    if n <= _CHECK_EVERY:
                        for frame in batch:
                            cb(frame)
                    else:
                        self._checked_batch(batch, cb)
                    self._batch = None
                if self._stop or n == 0 or framer.buffered:
                    n += self._frame_loop(cb)
        except RemoteProtocolError as exc:
            self._take_back_batch(None)
            self._protocol_error(exc)
        except Exception as exc:
            self._take_back_batch(None)
            self._handler_error("frame handler", exc)
        finally:
            if fast is not None:
                handler.send = fast  # type: ignore[method-assign,assignment]
            self._in_batch = False
            self.frames_in += n
            if out:
                # _flush() inlined for the common case: one reply, nothing special.
                transport = self._transport
                if len(out) == 1 and not (self._closing or self._special):
                    data = out.pop()
                    if transport is not None and not transport.is_closing():
                        self.bytes_out += len(data)
                        self.writes += 1
                        try:
                            transport.write(data)
                        except TypeError:
                            self._not_bytes_sent(data)
                        if self._write_paused:
                            self._check_write_limit(transport)
                else:
                    self._flush()
            if self._held:
                self._after_hold()

    def is_held(self) -> bool:
        # Asked by a handler between its own requests (Handler.output_blocked):
        # measure the replies collected so far in this batch.
        if not self._held and self._in_batch and self._over_high():
            self._hold()
        return self._held

    def _over_high(self) -> bool:
        return sum(map(len, self._out)) >= self._high

    def _checked_batch(self, batch: Iterator[bytes], cb: Callable[[bytes], Any]) -> None:
        """A long batch: frames in runs of _CHECK_EVERY, the replies measured
        after each run; at write_high_water the rest waits (``_hold``)."""
        out = self._out
        size = 0
        counted = 0
        while True:
            handled = 0
            for frame in itertools.islice(batch, _CHECK_EVERY):
                handled += 1
                cb(frame)
            if handled < _CHECK_EVERY or self._stop:
                return
            if counted > len(out):  # flushed meanwhile (a close)
                counted = size = 0
            size += sum(map(len, out[counted:]))
            counted = len(out)
            if size >= self._high:
                self._hold()
                return

    def _hold(self) -> None:
        if self._held or self._closing or self._task_mode:
            return
        self._held = self._stop = self._special = True
        if self._batch is not None:
            # The frames of this batch not handled yet go back into the framer.
            self._take_back_batch(self.framer)

    def _after_hold(self) -> None:
        """The batch stopped at write_high_water: pause reading, and continue
        when the transport has drained (at once if it never filled)."""
        if self._closing:
            return
        self._update_reading()
        if not self._write_paused and self._resume_handle is None:
            self._resume_handle = self.loop.call_soon(self._resume_held)

    def _resume_held(self) -> None:
        self._resume_handle = None
        if self._closing or not self._held or self._write_paused:
            return
        connection_context.set(self.log_context)
        self._held = self._stop = False
        self._special = self._task_mode or self.idle_timeout is not None
        handler = self.handler
        fast = self._fast_send
        if fast is not None:
            handler.send = self._append  # type: ignore[method-assign,assignment]
        self._in_batch = True
        n = 0
        try:
            n = self._frame_loop(self._cb)
            if not (self._held or self._closing):
                handler.writing_resumed()
        except RemoteProtocolError as exc:
            self._take_back_batch(None)
            self._protocol_error(exc)
        except Exception as exc:
            self._take_back_batch(None)
            self._handler_error("frame handler", exc)
        finally:
            if fast is not None:
                handler.send = fast  # type: ignore[method-assign,assignment]
            self._in_batch = False
            self.frames_in += n
            if self._out:
                self._flush()
        if self._held:
            self._after_hold()
        else:
            self._update_reading()

    def _frame_loop(self, cb: Callable[[bytes], Any]) -> int:
        """Frames one at a time, following framer switches; returns the count."""
        n = 0
        every = _CHECK_EVERY
        next_frame = self.framer.next_frame
        while True:
            if self._stop:
                if self._closing or self._held:
                    break
                self._stop = False  # the handler switched framers
                next_frame = self.framer.next_frame
            frame = next_frame()
            if frame is None:
                break
            n += 1
            cb(frame)
            if not n % every and self._over_high():
                self._hold()
                break
        return n

    def _take_back_batch(self, framer: Framer | None) -> None:
        """The batch in progress must stop: drop its frames not yet handled, or
        hand them (re-encoded, exact for byte framers) to ``framer``."""
        batch = self._batch
        if batch is None:
            return
        self._batch = None
        rest = list(batch)  # ends the driver's loop over the batch
        self.frames_in -= len(rest)
        if framer is not None:
            old = self.framer
            leftover = old.take_buffer()
            data = b"".join([*map(old.encode, rest), leftover]) if rest else leftover
            if data:
                framer.feed(data)

    def eof_received(self) -> bool | None:
        connection_context.set(self.log_context)
        self._eof = True
        if self._task_mode:
            self._wake()
            # Keep the write side open until the queued frames are answered (TLS
            # transports ignore this and close; asyncio logs a warning if asked).
            return not self._is_ssl()
        if not self._closing:
            self._deliver(None)
        return None  # the transport closes itself after writing what is buffered

    def connection_lost(self, exc: BaseException | None) -> None:
        connection_context.set(self.log_context)
        self._lost = True
        self._closing = self._stop = True
        self._lost_exc = exc
        if self._batch is not None:
            self._take_back_batch(None)
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        if self._resume_handle is not None:
            self._resume_handle.cancel()
            self._resume_handle = None
        self._guard = None  # (it refers back to us)
        self._out.clear()
        self._release_drain_waiters()
        if not self._made:
            self._finish()
            return
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            task.add_done_callback(lambda _t: self._call_lost())
        else:
            self._call_lost()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._release_drain_waiters()
        if self._held:
            if self._resume_handle is None:
                self._resume_handle = self.loop.call_soon(self._resume_held)
            return  # reading resumes once the held frames are handled
        self._update_reading()

    # -- _Connection interface ---------------------------------------------------

    @property
    def transport(self) -> asyncio.BaseTransport | None:
        return self._transport

    def send(self, data: bytes) -> None:
        if self._closing:
            return
        self._out.append(data)
        if not self._in_batch:
            self._flush()

    def _flush(self) -> None:
        out = self._out
        try:
            data = out[0] if len(out) == 1 else b"".join(out)
        except TypeError:
            bad = next(d for d in out if not isinstance(d, (bytes, bytearray, memoryview)))
            out.clear()
            self._not_bytes_sent(bad)
            return
        out.clear()
        transport = self._transport
        if self._closing or transport is None or transport.is_closing():
            # is_closing(): the transport failed and connection_lost is on its
            # way; asyncio would log every write from now on.
            return
        self.bytes_out += len(data)
        self.writes += 1
        try:
            transport.write(data)
        except TypeError:
            self._not_bytes_sent(data)
            return
        if self.idle_timeout is not None:
            self._last_activity = self.loop.time()
        if self._write_paused:  # set by write() itself when the buffer passed high water
            self._check_write_limit(transport)

    def _not_bytes_sent(self, data: object) -> None:
        """The handler sent something that is not bytes: say so, and close."""
        self._handler_error("send()", _not_bytes("send()", data))

    def _check_write_limit(self, transport: asyncio.Transport) -> None:
        limit = self.write_buffer_limit
        if limit is not None and transport.get_write_buffer_size() > limit:
            self._write_limit_exceeded(limit)

    async def drain(self) -> None:
        if self._out and not self._in_batch:
            self._flush()
        if self._lost:
            self._raise_closed()
        if not self._write_paused:
            return
        fut: asyncio.Future[None] = self.loop.create_future()
        if self._drain_waiters is None:
            self._drain_waiters = []
        self._drain_waiters.append(fut)
        try:
            await fut
        finally:
            # A cancelled waiter removes itself so the queue stays bounded.
            if not fut.done() or fut.cancelled():
                try:
                    if self._drain_waiters is not None:
                        self._drain_waiters.remove(fut)
                except ValueError:
                    pass
        if self._lost:
            self._raise_closed()

    def _release_drain_waiters(self) -> None:
        waiters = self._drain_waiters
        if waiters:
            self._drain_waiters = None
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def set_framer(self, framer: Framer) -> None:
        old = self.framer
        if old is framer:
            return
        if self._batch is not None:
            self._take_back_batch(framer)
        else:
            self._hand_over(old, framer)
        self.framer = framer
        self._stop = True
        if self._task_mode and self._queue_full:
            # The old framer's queue was moved into the new framer's buffer.
            self._queue_full = False
            self._update_reading()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = self._stop = True
        if self._batch is not None:
            self._take_back_batch(None)
        if self._out:
            # Write what is buffered (also inside a batch: the batch's own flush is
            # skipped once _closing is set).
            self._flush_final()
        if self._transport is not None:
            self._transport.close()

    def _flush_final(self) -> None:
        out = self._out
        data = b"".join(out)
        out.clear()
        if self._transport is not None and not self._transport.is_closing():
            self.bytes_out += len(data)
            self.writes += 1
            self._transport.write(data)

    def abort(self) -> None:
        self._closing = self._stop = True
        if self._batch is not None:
            self._take_back_batch(None)
        self._out.clear()
        if self._transport is not None:
            self._transport.abort()

    async def wait_closed(self) -> None:
        if self._finished:
            return
        if self._finished_waiter is None:
            self._finished_waiter = self.loop.create_future()
        await asyncio.shield(self._finished_waiter)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self._transport is None:
            return default
        return self._transport.get_extra_info(name, default)

    def _write_state(self) -> tuple[int, bool, bool]:
        t = self._transport
        size = 0 if t is None or self._lost else t.get_write_buffer_size()
        return size, self._reading_paused, self._write_paused

    async def start_tls(
        self,
        ssl_context: _ssl.SSLContext,
        *,
        server_side: bool | None = None,
        server_hostname: str | None = None,
        handshake_timeout: float | None = None,
    ) -> None:
        if self._closing or self._transport is None:
            raise ClosedError("the connection is closed")
        if self._is_ssl():
            raise LocalProtocolError("the connection already uses TLS")
        if self._out:
            self._flush()
        # Bytes that arrived in clear after the upgrade request are not trusted.
        self._queue.clear()
        self.framer.take_buffer()
        side = self.server_side if server_side is None else server_side
        transport = self._transport
        new = await self.loop.start_tls(
            transport,
            self,
            ssl_context,
            server_side=side,
            server_hostname=None if side else server_hostname,
            ssl_handshake_timeout=handshake_timeout,
        )
        if new is None:
            raise ClosedError("the connection closed during the TLS handshake")
        self._transport = new
        new.set_write_buffer_limits(self.handler.write_high_water, self.handler.write_low_water)
        self._reading_paused = False
        self._update_reading()

    # -- internals ------------------------------------------------------------

    def _is_ssl(self) -> bool:
        t = self._transport
        return t is not None and t.get_extra_info("ssl_object") is not None

    def _call_sync(self, what: str, fn: Callable[[], Any]) -> bool:
        self._in_batch = True
        try:
            fn()
        except Exception as exc:
            self._handler_error(what, exc)
            return False
        finally:
            self._in_batch = False
            if self._out:
                self._flush()
            if self._held:  # the handler asked output_blocked and it was
                self._after_hold()
        return not self._closing

    def _fail(self) -> None:
        self.owner.handler_failed()

    def _update_reading(self) -> None:
        t = self._transport
        if t is None or self._lost:
            return
        want = self._write_paused or self._queue_full or self._draining or self._held
        if want == self._reading_paused:
            return
        if t.is_closing():
            return
        self._reading_paused = want
        if want:
            t.pause_reading()
        else:
            t.resume_reading()

    def _check_idle(self) -> None:
        self._idle_handle = None
        if self._closing or self.idle_timeout is None:
            return
        busy = self._task is not None and not self._task.done() and self._waiter is None
        elapsed = self.loop.time() - self._last_activity
        if elapsed >= self.idle_timeout and not busy:
            self._close_idle(elapsed)
            return
        delay = self.idle_timeout - elapsed if elapsed < self.idle_timeout else self.idle_timeout
        self._idle_handle = self.loop.call_later(delay, self._check_idle)

    # async mode: frames are parsed here and handled by _run_task in order.

    def _enqueue(self, data: bytes) -> None:
        if self._closing or self._pending_exc is not None:
            return
        self._queue_frames(data)
        queue = self._queue
        if len(queue) > self._max_queued:
            self._queue_full = True
            self._update_reading()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _run_task(self) -> None:
        connection_context.set(self.log_context)
        handler = self.handler
        info = self._info
        what = "connection_made"
        try:
            if info.made_async:
                await handler.connection_made()  # type: ignore[misc]
                if self._out:
                    self._flush()
            what = "frame handler"
            cb = self._cb
            frame_async = info.frame_async
            queue = self._queue
            low = self._max_queued // 2
            while not self._closing:
                while queue and not self._closing:
                    frame = queue.popleft()
                    if self._queue_full and len(queue) <= low:
                        self._queue_full = False
                        self._update_reading()
                    self.frames_in += 1
                    if frame_async:
                        await cb(frame)
                    else:
                        self._in_batch = True
                        try:
                            cb(frame)
                        finally:
                            self._in_batch = False
                            if self._out:
                                self._flush()
                if self.is_closing():  # the handler may have closed it
                    break
                if self._refill():
                    continue
                if self._eof:
                    await self._finish_eof(cb, frame_async)
                    break
                if self._draining:
                    self.close()
                    break
                if not frame_async:
                    # Only connection_made was async: switch to the inline path.
                    self._task_mode = False
                    self._special = self.idle_timeout is not None
                    break
                self._waiter = self.loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        except asyncio.CancelledError:
            raise
        except RemoteProtocolError as exc:
            self._protocol_error(exc)
        except Exception as exc:
            self._handler_error(what, exc)

    async def _finish_eof(self, cb: Callable[[bytes], Any], frame_async: bool) -> None:
        try:
            self.framer.feed_eof()
            while not self._closing:
                frame = self.framer.next_frame()
                if frame is None:
                    break
                self.frames_in += 1
                if frame_async:
                    await cb(frame)
                else:
                    cb(frame)
                    if self._out:
                        self._flush()
        except RemoteProtocolError as exc:
            self._protocol_error(exc)
            return
        self.close()

    def _call_lost(self) -> None:
        exc = self._lost_exc
        handler = self.handler
        if self._info.lost_async:
            ctx = contextvars.copy_context()
            task = self.loop.create_task(
                self._run_lost_async(exc), name=f"anycore-lost-{self.connection_id}", context=ctx
            )
            self._task = task
            return
        try:
            handler.connection_lost(exc)
        except Exception as err:
            log_handler_error("connection_lost", err, self.connection_id, limiter_of(handler))
            self.owner.handler_failed()
        self._finish()

    async def _run_lost_async(self, exc: BaseException | None) -> None:
        connection_context.set(self.log_context)
        try:
            await self.handler.connection_lost(exc)  # type: ignore[misc]
        except Exception as err:
            log_handler_error("connection_lost", err, self.connection_id, limiter_of(self.handler))
            self.owner.handler_failed()
        finally:
            self._finish()

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._break_cycles()
            waiter = self._finished_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            self.owner.connection_finished(self)

    def _break_cycles(self) -> None:
        """The connection is over: drop the driver's references to the handler
        and to itself, so refcounting frees both as soon as the user's last
        reference goes (no wait for the cyclic GC).  The handler keeps its
        reference to the driver: its id, statistics and state stay readable."""
        if self._fast_send is not None:
            self.handler.__dict__.pop("send", None)  # the bound self.send
            self._fast_send = None
        self._append = _dropped_send
        self._cb = _dropped_frame
        self.handler = _FINISHED_HANDLER
        self._task = None  # a cancelled task's traceback refers to our frames

    # -- used by the server ------------------------------------------------------

    def check_guard(self, now: float) -> None:
        """The server's periodic sweep: apply frame_deadline / min_receive_rate."""
        guard = self._guard
        if guard is not None:
            guard.check(now)

    def shed_rank(self, now: float) -> float | None:
        """Since when this connection has been idle or slow (``None``: busy, or
        not watched); the server sheds the smallest at ``max_connections``."""
        guard = self._guard
        if guard is None or self._closing:
            return None
        return guard.quiet_or_slow_since(now)

    def begin_graceful_close(self) -> None:
        """Stop reading; close once the frames already received are handled."""
        if self._closing:
            return
        self._draining = True
        self._update_reading()
        if self._task is None or self._task.done():
            self.close()
        else:
            self._wake()


def _dropped_send(data: bytes) -> None:
    """``send`` of a finished connection (its data is dropped)."""


def _dropped_frame(frame: bytes) -> None:
    """The frame callback of a finished connection."""


# What a finished driver points at instead of its handler (see _break_cycles).
_FINISHED_HANDLER = Handler()


def _set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass
