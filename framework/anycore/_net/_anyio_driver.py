# Design: the anyio driver - the same Handler classes over anyio byte streams.
#
# This module owns ``_StreamDriver`` (one connection on an anyio ByteStream, on
# any backend anyio supports: trio, asyncio) and ``run_handler``, the public way
# to run a handler on a stream of one's own (the in-memory transport of
# ``anycore.testing`` uses it).  The per-frame work is the same as on the fast
# path (framer.feed, next_frame loop, one handler call per frame, replies
# joined per batch) and the policy is the shared ``_connection_base``'s; what
# differs is I/O: a reader loop awaits ``stream.receive()`` and a writer task
# sends the joined replies, because anyio streams have no synchronous write.
# So ``send()`` outside a read batch hands its bytes to the writer task rather
# than writing them before returning.
#
# Backpressure: the reader does not receive while unsent bytes are above the
# handler's high-water mark, nor while more than ``max_queued_frames`` frames
# wait for an async handler.  Lifetimes are structured: each connection runs in
# a task group; cancelling it cancels the handler, then connection_lost runs.
# The accept side on anyio listeners is ``_accept_anyio``; the connect side is
# in ``_client``.
#
# Rejected: memory object streams between reader and handler task (frames in a
# stream cannot be re-cut when the handler switches framers; a deque can).
# Not supported here: ``start_tls`` (the reader owns the stream while it waits
# in receive(); use a tls:// endpoint instead).

from __future__ import annotations

import collections
import inspect
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from .._core._state import connection_context
from ..errors import RemoteProtocolError
from ._connection_base import _Connection, log_handler_error, peer_string
from ._handler import Handler

__all__ = ["run_handler"]

_RECEIVE_SIZE = 256 * 1024


class _StreamDriver(_Connection):
    """Runs one Handler on an anyio ByteStream (see :func:`run_handler`)."""

    def __init__(
        self,
        handler: Handler,
        stream: anyio.abc.ByteStream,
        *,
        idle_timeout: float | None = None,
        write_buffer_limit: int | None = None,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.stream = stream
        self.on_error = on_error
        peer: Any = None
        try:
            peer = stream.extra(anyio.abc.SocketAttribute.remote_address)
        except anyio.TypedAttributeLookupError:
            pass
        self._peer = peer
        self._out_size = 0
        self._tg: anyio.abc.TaskGroup | None = None
        self._wake_writer = anyio.Event()
        self._progress = anyio.Event()  # set (and replaced) whenever bytes leave
        self._wake_processor = anyio.Event()
        self._queue_space = anyio.Event()
        self._made = anyio.Event()
        self._finished = anyio.Event()
        self._processor_done = anyio.Event()
        self._setup(
            handler, peer_string(peer), collections.deque(), idle_timeout, write_buffer_limit
        )
        self._last_activity = anyio.current_time()

    # -- _Connection interface -----------------------------------------------------

    def send(self, data: bytes) -> None:
        if self._closing:
            return
        self._out.append(data)
        self._out_size += len(data)
        limit = self.write_buffer_limit
        if limit is not None and self._out_size > limit:
            self._write_limit_exceeded(limit)
            return
        if not self._in_batch:
            self._wake_writer.set()

    async def drain(self) -> None:
        low = self.handler.write_low_water
        while self._out_size > low and not self._lost:
            event = self._progress
            self._wake_writer.set()
            await event.wait()
        if self._lost or (self._closing and self._out_size):
            self._raise_closed()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._wake_writer.set()  # the writer flushes, then ends the connection

    def abort(self) -> None:
        self._closing = True
        self._out.clear()
        self._out_size = 0
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def wait_closed(self) -> None:
        await self._finished.wait()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        from anyio.streams.tls import TLSAttribute

        attrs: dict[str, Any] = {
            "peername": anyio.abc.SocketAttribute.remote_address,
            "sockname": anyio.abc.SocketAttribute.local_address,
            "socket": anyio.abc.SocketAttribute.raw_socket,
        }
        attrs["ssl_object"] = TLSAttribute.ssl_object
        attrs["peercert"] = TLSAttribute.peer_certificate
        attr = attrs.get(name)
        if attr is None:
            return default
        try:
            return self.stream.extra(attr)
        except anyio.TypedAttributeLookupError:
            return default

    def _write_state(self) -> tuple[int, bool, bool]:
        return self._out_size, False, self._out_size > self.handler.write_high_water

    def _flush(self) -> None:
        self._wake_writer.set()

    # -- running ----------------------------------------------------------------

    async def run(self) -> None:
        """Run the connection to its end; connection_lost has run on return."""
        connection_context.set(self.log_context)
        handler = self.handler
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._writer)
                await self._call("connection_made", handler.connection_made)
                self._made.set()
                if self._info.frame_async:
                    tg.start_soon(self._processor)
                else:
                    self._processor_done.set()
                if not self._closing:
                    await self._reader()
                # Clean end of stream (or close()): finish queued work, then close.
                await self._processor_done.wait()
                self.close()
                await anyio.sleep_forever()
        except Exception as exc:  # an error escaping the driver itself
            log_handler_error("connection driver", exc, self.connection_id)
            self._fail()
        finally:
            self._made.set()
            self._lost = True
            self._closing = True
            self._progress.set()
            with anyio.CancelScope(shield=True):
                try:
                    await self.stream.aclose()
                except Exception:
                    pass
                await self._call("connection_lost", handler.connection_lost, self._lost_exc)
            self._finished.set()

    async def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        self._in_batch = True
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                self._in_batch = False
                await result
        except Exception as exc:
            self._handler_error(what, exc)
        finally:
            self._in_batch = False
            if self._out:
                self._wake_writer.set()

    def _fail(self) -> None:
        if self.on_error is not None:
            self.on_error()

    async def _receive(self) -> bytes | None:
        """One read; None at end of stream."""
        try:
            if self.idle_timeout is None:
                return await self.stream.receive(_RECEIVE_SIZE)
            while True:
                left = self._last_activity + self.idle_timeout - anyio.current_time()
                if left <= 0:
                    self._close_idle(self.idle_timeout)
                    return None
                with anyio.move_on_after(left):
                    return await self.stream.receive(_RECEIVE_SIZE)
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return None

    async def _reader(self) -> None:
        handler = self.handler
        queue = self._queue
        frame_async = self._info.frame_async
        while not self._closing and not self._draining:
            # Backpressure: unsent bytes above high water, or too many queued frames.
            while self._out_size > handler.write_high_water and not self._closing:
                event = self._progress
                await event.wait()
            while frame_async and len(queue) > handler.max_queued_frames and not self._closing:
                self._queue_space = anyio.Event()
                await self._queue_space.wait()
            if self.is_closing() or self._draining:  # may have changed while waiting
                return
            try:
                data = await self._receive()
            except (anyio.BrokenResourceError, OSError) as exc:
                self._lost_exc = exc.__cause__ or exc
                self._closing = True
                if self._tg is not None:
                    self._tg.cancel_scope.cancel()
                return
            if data is None:
                self._eof = True
                if frame_async:
                    self._wake_processor.set()
                elif not self._closing:
                    self._deliver(None)
                return
            self.bytes_in += len(data)
            self.reads += 1
            self._last_activity = anyio.current_time()
            if frame_async:
                self._enqueue(data)
            else:
                self._deliver(data)

    def _enqueue(self, data: bytes) -> None:
        if self._pending_exc is not None:
            return
        self._queue_frames(data)
        self._wake_processor.set()

    async def _processor(self) -> None:
        cb = self._cb
        queue = self._queue
        try:
            while not self._closing:
                while queue and not self._closing:
                    frame = queue.popleft()
                    if len(queue) <= self.handler.max_queued_frames:
                        self._queue_space.set()
                    self.frames_in += 1
                    try:
                        await cb(frame)
                    except Exception as exc:
                        self._handler_error("frame handler", exc)
                        return
                    if self._out:
                        self._wake_writer.set()
                if self.is_closing():
                    return
                if self._refill():
                    continue
                if self._eof:
                    try:
                        self.framer.feed_eof()
                        while (last := self.framer.next_frame()) is not None:
                            self.frames_in += 1
                            await cb(last)
                    except RemoteProtocolError as exc:
                        self._protocol_error(exc)
                    except Exception as exc:
                        self._handler_error("frame handler", exc)
                    return
                if self._draining:
                    self.close()  # the reader is parked in receive(); the writer ends it
                    return
                self._wake_processor = anyio.Event()
                await self._wake_processor.wait()
        finally:
            self._processor_done.set()
            self._queue_space.set()

    async def _writer(self) -> None:
        while True:
            if not self._out:
                if self._closing:
                    break
                self._wake_writer = anyio.Event()
                await self._wake_writer.wait()
                continue
            data = b"".join(self._out)
            self._out.clear()
            try:
                await self.stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                self._lost_exc = exc
                self._closing = True
                break
            finally:
                self._out_size = max(0, self._out_size - len(data))
                progress, self._progress = self._progress, anyio.Event()
                progress.set()
            self.bytes_out += len(data)
            self.writes += 1
            self._last_activity = anyio.current_time()
        # close(): everything written; end the connection.
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    def begin_graceful_close(self) -> None:
        """Stop reading; close once the frames already received are handled."""
        self._draining = True
        if self._info.frame_async:
            self._wake_processor.set()
        else:
            self.close()


async def run_handler(
    handler: Handler,
    stream: anyio.abc.ByteStream,
    *,
    idle_timeout: float | None = None,
    write_buffer_limit: int | None = None,
) -> None:
    """Run ``handler`` on an anyio byte stream until the connection ends.

    This is the portable driver: any backend anyio supports (trio, asyncio), any
    ByteStream (sockets, TLS, memory streams in tests).  The stream is closed and
    ``connection_lost`` has run when this returns.

    Args:
        handler: a fresh handler instance.
        stream: the connected stream.
        idle_timeout: close after this many seconds without I/O.
        write_buffer_limit: abort when unsent bytes exceed this.
    """
    driver = _StreamDriver(
        handler, stream, idle_timeout=idle_timeout, write_buffer_limit=write_buffer_limit
    )
    await driver.run()
