"""Network log handlers that live on the event loop.

Owns :class:`AsyncNetworkHandler` (bounded buffer, one sender task, reconnect
with backoff, dropped-record counter), the stream and datagram plumbing the
wire formats share, and the stdlib's own format: :class:`SocketHandler` (TCP
or a Unix stream socket, length-prefixed pickles) and :class:`DatagramHandler`
(the same bytes per datagram, as the stdlib sends them).  Syslog lives in
:mod:`._syslog`, HTTP in :mod:`._http`.

``emit`` never does I/O: it renders the record on the caller's thread (the
loop, usually), appends the bytes to a ``deque`` and wakes the sender task if
it sleeps - directly on the loop thread, through ``call_soon_threadsafe``
from other threads.  The handler binds to the first running loop that uses
it.  The buffer is bounded in records and in bytes.  While the sink is
connected, a full buffer is written straight into the connection from the
caller (stream sockets, and datagram sockets that take it without waiting),
so a burst on a reachable peer loses nothing; while the sink is down or
stalled, the oldest records are dropped and counted, and the count is sent
once the sink is back.

Rejected: the stdlib handlers' blocking ``sendall`` on the loop (one stuck
peer freezes every coroutine, cpython#65046), a task per record, and a
``loop.sock_sendto`` path for UDP (uvloop lacks it; a non-blocking socket
with ``add_writer`` on EAGAIN works on both loops).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
import socket
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .._core._backoff import Backoff
from .._core._resource import AsyncResource
from . import _lifecycle
from ._records import frame_record

__all__ = ["AsyncNetworkHandler", "DatagramHandler", "NetworkHandlerStatistics", "SocketHandler"]

_get_running_loop = asyncio._get_running_loop


@dataclass(frozen=True, slots=True)
class NetworkHandlerStatistics:
    """A snapshot of a network handler, from ``handler.statistics()``.

    Attributes:
        sent: records handed to the sink.
        dropped: records dropped because the buffer was full (the sink was
            gone) or refused by the sink.
        buffered: records waiting to be sent.
        connected: whether the sink is connected now.
    """

    sent: int
    dropped: int
    buffered: int
    connected: bool


class AsyncNetworkHandler(logging.Handler, AsyncResource):
    """Base of the loop-native network handlers.

    Subclasses implement :meth:`_prepare` (caller's thread: record -> bytes),
    :meth:`_connect`, :meth:`_send`, :meth:`_disconnect` (loop) and
    :meth:`_send_sync` (a blocking last resort used by :meth:`close` when no
    loop runs any more, e.g. at interpreter exit).

    Args:
        level: the handler's level.
        buffer_size: most records held while the sink is slow or down; the
            oldest are dropped beyond it (see :attr:`dropped`).
        buffer_bytes: most bytes held (the memory bound), likewise.
        max_batch: most records sent per write.
        backoff_initial: first reconnect delay, in seconds (doubles, with
            jitter, up to ``backoff_max``).
        backoff_max: longest reconnect delay.
        connect_timeout: seconds allowed per connection attempt.
        close_timeout: how long closing waits for the buffer to drain.
    """

    def __init__(
        self,
        level: int | str = logging.NOTSET,
        *,
        buffer_size: int = 100_000,
        buffer_bytes: int = 16 * 1024 * 1024,
        max_batch: int = 4096,
        backoff_initial: float = 0.1,
        backoff_max: float = 30.0,
        connect_timeout: float = 5.0,
        close_timeout: float = 5.0,
    ) -> None:
        logging.Handler.__init__(self, level)
        if buffer_size < 1 or max_batch < 1 or buffer_bytes < 1:
            raise ValueError("buffer_size, buffer_bytes and max_batch must be at least 1")
        self.buffer_size = buffer_size
        self.buffer_bytes = buffer_bytes
        self.max_batch = max_batch
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self._buffer: deque[bytes] = deque()
        self._buffered_bytes = 0
        self._buffer_lock = threading.Lock()
        self._inflight: list[bytes] = []
        self._sending = False
        self._dropped = 0
        self._reported = 0
        self._sent = 0
        self._connected = False
        self._closed = False
        self._closing = False
        self._last_error: BaseException | None = None
        self._reset_loop_state()
        _lifecycle.register(self)

    def _reset_loop_state(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None
        self._waiting = False

    def _after_fork_child(self) -> None:
        self._buffer.clear()
        self._buffered_bytes = 0
        self._buffer_lock = threading.Lock()
        self._inflight = []
        self._connected = False
        self._reset_loop_state()
        # Transports belong to the parent's loop: drop them without touching
        # it (closing would call into that loop); plain sockets are ours.
        for name in ("_writer", "_reader"):
            if name in self.__dict__:
                self.__dict__[name] = None
        sock = self.__dict__.pop("_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    # -- statistics -------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Records dropped because the buffer was full (or refused by the sink)."""
        return self._dropped

    @property
    def buffered(self) -> int:
        """Records waiting to be sent."""
        return len(self._buffer) + len(self._inflight)

    @property
    def sent(self) -> int:
        """Records handed to the sink."""
        return self._sent

    @property
    def connected(self) -> bool:
        """Whether the sink is connected now."""
        return self._connected

    def statistics(self) -> NetworkHandlerStatistics:
        """A :class:`NetworkHandlerStatistics` snapshot."""
        return NetworkHandlerStatistics(
            sent=self._sent,
            dropped=self._dropped,
            buffered=len(self._buffer) + len(self._inflight),
            connected=self._connected,
        )

    # -- caller's side ----------------------------------------------------------

    def handle(self, record: logging.LogRecord) -> bool:
        """Filter, then emit without the handler lock (emit is thread-safe)."""
        rv = self.filter(record)
        if rv:
            self.emit(record)
        return bool(rv)

    def emit(self, record: logging.LogRecord) -> None:
        """Render ``record`` here and queue it for the sender task."""
        try:
            item = self._prepare(record)
        except Exception:
            self.handleError(record)
            return
        self.put(item)

    def put(self, item: bytes) -> None:
        """Queue rendered bytes; never blocks.

        A full buffer is pushed straight into a connected sink when it takes
        it without waiting; otherwise the oldest records are dropped (counted).
        """
        size = len(item)
        with self._buffer_lock:
            buf = self._buffer
            full = len(buf) >= self.buffer_size or self._buffered_bytes + size > self.buffer_bytes
            if not full:
                buf.append(item)
                self._buffered_bytes += size
        if full:
            self._overflowed(item)
        loop = self._loop
        if loop is None or self._task is None:
            self._bind()
        elif self._waiting:
            if threading.get_ident() == self._loop_thread:
                self._wake()
            else:
                with contextlib.suppress(RuntimeError):  # the loop was closed
                    loop.call_soon_threadsafe(self._wake)

    def _overflowed(self, item: bytes) -> None:
        if (
            self._connected
            and not self._closing
            and threading.get_ident() == self._loop_thread
            and not self._inflight_unsent()
        ):
            with self._buffer_lock:
                batch = list(self._buffer)
                self._buffer.clear()
                self._buffered_bytes = 0
            batch.append(item)
            pushed = 0
            with contextlib.suppress(Exception):
                pushed = self._push_now(batch)
            self._sent += pushed
            if pushed == len(batch):
                return
            rest = batch[pushed:]
            with self._buffer_lock:  # back in front, in order
                self._buffer.extendleft(reversed(rest))
                self._buffered_bytes += sum(len(b) for b in rest)
            item = b""
        # The sink is down or stalled: drop the oldest, counted.
        with self._buffer_lock:
            buf = self._buffer
            size = len(item)
            while buf and (
                len(buf) >= self.buffer_size or self._buffered_bytes + size > self.buffer_bytes
            ):
                self._buffered_bytes -= len(buf.popleft())
                self._dropped += 1
            if item:
                if self._buffered_bytes + size <= self.buffer_bytes:
                    buf.append(item)
                    self._buffered_bytes += size
                else:
                    self._dropped += 1

    def _inflight_unsent(self) -> bool:
        # Whether the sender is in the middle of a send whose order a direct
        # push would break (see _push_now).
        return self._sending and not self._push_keeps_order

    # A stream's in-flight batch is already in the transport while the sender
    # waits for drain(); a push after it keeps the order.
    _push_keeps_order = False

    def _push_now(self, batch: list[bytes]) -> int:
        """Hand ``batch`` to the connected sink without waiting (loop thread).

        Returns how many records (from the front) the sink took; 0 by default.
        """
        return 0

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _bind(self) -> None:
        loop = _get_running_loop()
        if loop is None or self._closed or loop in _lifecycle.private_loops:
            return  # sent when a loop binds, or by close()
        if self._task is not None and not self._task.done():
            return
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._task = loop.create_task(self._sender(), name=f"anycore-log-sender:{self!r}")
        _lifecycle.note_loop(loop)

    async def start(self) -> None:
        """Bind to the running loop now (otherwise the first emit does it)."""
        self._bind()

    # -- the sender task --------------------------------------------------------

    async def _sender(self) -> None:
        assert self._wakeup is not None
        assert self._drained is not None
        wakeup, drained = self._wakeup, self._drained
        retry = Backoff(self.backoff_initial, self.backoff_max, jitter=0.5)
        try:
            while True:
                if not self._inflight:
                    if not self._buffer:
                        drained.set()
                        if self._closing:
                            return
                        wakeup.clear()
                        self._waiting = True
                        try:
                            if not self._buffer and not self._closing:
                                await wakeup.wait()
                        finally:
                            self._waiting = False
                        continue
                    drained.clear()
                    self._inflight = self._take_batch()
                if not self._connected:
                    try:
                        await asyncio.wait_for(self._connect(), self.connect_timeout)
                    except Exception as exc:  # OSError, timeouts, bad addresses
                        self._last_error = exc
                        with contextlib.suppress(Exception):
                            self._disconnect()
                        await self._backoff(wakeup, retry.next())
                        continue
                    self._connected = True
                batch = self._inflight
                self._sending = True
                try:
                    await self._send(batch)
                except _Refused as exc:
                    self._last_error = exc
                    self._dropped += len(batch)
                except Exception as exc:  # OSError, timeouts, protocol errors
                    self._last_error = exc
                    self._connected = False
                    with contextlib.suppress(Exception):
                        self._disconnect()
                    await self._backoff(wakeup, retry.next())
                    continue
                else:
                    self._sent += len(batch)
                    retry.reset()
                finally:
                    self._sending = False
                self._inflight = []
        finally:
            self._waiting = False

    async def _backoff(self, wakeup: asyncio.Event, delay: float) -> None:
        # Wait before the next attempt, unless close() wakes us.
        if self._closing:
            # Closing: keep trying until aclose()'s deadline cancels us.
            await asyncio.sleep(delay)
        else:
            wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing_event(wakeup), delay)

    async def _closing_event(self, wakeup: asyncio.Event) -> None:
        # Sleep through a backoff delay unless close() wakes us.
        while not self._closing:
            await wakeup.wait()
            wakeup.clear()

    def _take_batch(self) -> list[bytes]:
        batch: list[bytes] = []
        if self._dropped > self._reported:
            lost = self._dropped - self._reported
            self._reported = self._dropped
            with contextlib.suppress(Exception):
                batch.append(self._prepare(_drop_record(lost, self)))
        buf = self._buffer
        with self._buffer_lock:
            taken = 0
            with contextlib.suppress(IndexError):
                for _ in range(self.max_batch):
                    item = buf.popleft()
                    taken += len(item)
                    batch.append(item)
            self._buffered_bytes -= taken
        return batch

    # -- flush and close --------------------------------------------------------

    async def aflush(self, timeout: float | None = None) -> bool:
        """Wait until the buffer was sent (bounded by ``timeout``).

        Returns:
            Whether everything buffered was sent in time.
        """
        if not self._buffer and not self._inflight:
            return True
        if self._task is None or self._task.done():
            self._bind()
        loop = _get_running_loop()
        if self._drained is None or loop is not self._loop:
            return False
        drained = self._drained
        drained.clear()
        self._wake()
        try:
            await asyncio.wait_for(
                drained.wait(), self.close_timeout if timeout is None else timeout
            )
        except TimeoutError:
            return False
        return True

    async def _adetach(self) -> None:
        # The runtime's LOGS phase: the loop is about to close.  Stop the
        # sender; a later emit on another loop binds again.
        task = self._task
        if task is not None and not task.done() and task.get_loop() is _get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            self._disconnect()
        self._connected = False
        self._reset_loop_state()

    async def aclose(self) -> None:
        """Send what is buffered (up to ``close_timeout``), then close."""
        if (self._task is None or self._task.done()) and (self._buffer or self._inflight):
            self._bind()  # records queued before any loop used us: send them now
        self._closing = True
        task = self._task
        if task is not None and not task.done() and task.get_loop() is _get_running_loop():
            self._wake()
            try:
                await asyncio.wait_for(asyncio.shield(task), self.close_timeout)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        # What the sink did not take before the deadline is lost: count it.
        self._dropped += len(self._inflight) + len(self._buffer)
        self._inflight = []
        self._buffer.clear()
        with contextlib.suppress(Exception):
            self._disconnect()
        self._connected = False
        self._finish_close()

    def close(self) -> None:
        """Close; what is still buffered is sent with a blocking last resort.

        From the loop's own thread use :meth:`aclose` instead: ``close()``
        there only schedules it.  From another thread while the loop runs,
        this waits for the loop to send the buffer.
        """
        if self._closed:
            return
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not task.done() and not loop.is_closed():
            if threading.get_ident() == self._loop_thread:
                loop.create_task(self.aclose())
                return
            if loop.is_running():
                fut = asyncio.run_coroutine_threadsafe(self.aclose(), loop)
                with contextlib.suppress(Exception):
                    fut.result(self.close_timeout + 1)
                return
        self._closing = True
        items = self._inflight + list(self._buffer)
        self._inflight = []
        self._buffer.clear()
        if items:
            try:
                self._send_sync(items)
                self._sent += len(items)
            except Exception:
                self._dropped += len(items)
        with contextlib.suppress(Exception):
            self._disconnect()
        self._finish_close()

    def _finish_close(self) -> None:
        self._closed = True
        _lifecycle.unregister(self)
        logging.Handler.close(self)

    def wait_flushed(self, timeout: float | None = None) -> bool:
        """Block until the buffer was sent (only when the loop runs in another thread)."""
        loop = self._loop
        if not self._buffer and not self._inflight:
            return True
        if loop is None or not loop.is_running() or threading.get_ident() == self._loop_thread:
            return False
        fut = asyncio.run_coroutine_threadsafe(self.aflush(timeout), loop)
        try:
            return fut.result(None if timeout is None else timeout + 1)
        except Exception:
            return False

    def flush(self) -> None:
        """Wake the sender (sending happens on the loop; see :meth:`aflush`)."""
        loop = self._loop
        if loop is not None and self._waiting and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake)

    # -- subclass hooks ---------------------------------------------------------

    def _prepare(self, record: logging.LogRecord) -> bytes:
        raise NotImplementedError

    async def _connect(self) -> None:
        raise NotImplementedError

    async def _send(self, batch: list[bytes]) -> None:
        raise NotImplementedError

    def _disconnect(self) -> None:
        raise NotImplementedError

    def _send_sync(self, batch: list[bytes]) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} buffered={self.buffered} dropped={self.dropped}>"


class _Refused(Exception):
    """The sink answered but refused the batch for good (e.g. HTTP 400)."""


def _drop_record(lost: int, handler: logging.Handler) -> logging.LogRecord:
    return logging.LogRecord(
        "anycore.logging",
        logging.WARNING,
        __file__,
        0,
        "%d log records dropped by %s (sink down or too slow)",
        (lost, type(handler).__name__),
        None,
    )


# -- stream and datagram sockets -------------------------------------------------


class _StreamMixin:
    _writer: asyncio.StreamWriter | None = None

    async def _open_stream(self, host: str, port: int | None, ssl_ctx: Any = None) -> None:
        if port is None:
            _, writer = await asyncio.open_unix_connection(host)
        else:
            _, writer = await asyncio.open_connection(host, port, ssl=ssl_ctx)
            sock = writer.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._writer = writer

    async def _write_stream(self, data: bytes) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            raise ConnectionResetError("log sink connection is closed")
        writer.write(data)
        await writer.drain()

    # The most a push may leave in the transport's write buffer.
    push_limit = 16 * 1024 * 1024

    def _push_stream(self, batch: list[bytes]) -> int:
        writer = self._writer
        if writer is None or writer.is_closing():
            return 0
        if writer.transport.get_write_buffer_size() > self.push_limit:
            return 0  # the peer does not keep up: this is a stalled sink
        writer.write(b"".join(batch))
        return len(batch)

    def _close_stream(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()


class _DatagramMixin:
    """A connected non-blocking datagram socket; EAGAIN waits with add_writer."""

    _sock: socket.socket | None = None

    def _open_datagram(self, family: int, address: Any) -> None:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    async def _send_datagrams(self, items: Iterable[bytes]) -> None:
        sock = self._sock
        if sock is None:
            raise ConnectionResetError("log sink socket is closed")
        loop = asyncio.get_running_loop()
        for data in items:
            while True:
                try:
                    sock.send(data)
                    break
                except BlockingIOError:
                    fut = loop.create_future()
                    loop.add_writer(sock.fileno(), _set_none, fut)
                    try:
                        await fut
                    finally:
                        loop.remove_writer(sock.fileno())

    def _push_datagrams(self, batch: list[bytes]) -> int:
        sock = self._sock
        if sock is None:
            return 0
        for i, data in enumerate(batch):
            try:
                sock.send(data)
            except BlockingIOError:
                return i
        return len(batch)

    def _close_datagram(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def _set_none(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class SocketHandler(_StreamMixin, AsyncNetworkHandler):
    """Sends records to a TCP (or Unix stream) socket in the stdlib's format.

    Every record is a 4-byte big-endian length followed by the pickled record
    dict, exactly what :class:`logging.handlers.SocketHandler` sends, so the
    stdlib's socket receiver (and anycore's :func:`open_log_receiver`) read it.

    Args:
        host: the receiver's host, or a Unix socket path when ``port`` is None.
        port: the receiver's TCP port.
        **options: see :class:`AsyncNetworkHandler`.
    """

    def __init__(self, host: str, port: int | None, **options: Any) -> None:
        super().__init__(**options)
        self.host = host
        self.port = port

    def _prepare(self, record: logging.LogRecord) -> bytes:
        return frame_record(record)

    async def _connect(self) -> None:
        await self._open_stream(self.host, self.port)

    async def _send(self, batch: list[bytes]) -> None:
        await self._write_stream(b"".join(batch))

    _push_keeps_order = True

    def _push_now(self, batch: list[bytes]) -> int:
        return self._push_stream(batch)

    def _disconnect(self) -> None:
        self._close_stream()

    def _send_sync(self, batch: list[bytes]) -> None:
        if self.port is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.connect_timeout)
            sock.connect(self.host)
        else:
            sock = socket.create_connection((self.host, self.port), self.connect_timeout)
        with sock:
            sock.sendall(b"".join(batch))


class DatagramHandler(_DatagramMixin, AsyncNetworkHandler):
    """Sends each record as one UDP datagram (or Unix datagram when ``port`` is None).

    The datagram holds what :class:`logging.handlers.DatagramHandler` sends:
    the length-prefixed pickle of the record dict.
    """

    def __init__(self, host: str, port: int | None, **options: Any) -> None:
        super().__init__(**options)
        self.host = host
        self.port = port

    def _prepare(self, record: logging.LogRecord) -> bytes:
        return frame_record(record)

    def _address(self) -> tuple[int, Any]:
        if self.port is None:
            return socket.AF_UNIX, self.host
        info = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
        return info[0], info[4]

    async def _connect(self) -> None:
        self._open_datagram(*self._address())

    async def _send(self, batch: list[bytes]) -> None:
        await self._send_datagrams(batch)

    def _push_now(self, batch: list[bytes]) -> int:
        return self._push_datagrams(batch)

    def _disconnect(self) -> None:
        self._close_datagram()

    def _send_sync(self, batch: list[bytes]) -> None:
        family, address = self._address()
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(self.connect_timeout)
            for data in batch:
                sock.sendto(data, address)
