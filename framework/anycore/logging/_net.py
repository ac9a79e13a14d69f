"""Network log handlers that live on the event loop.

Owns :class:`AsyncNetworkHandler` (bounded buffer, one sender task, reconnect
with backoff, dropped-record counter) and its wire formats:
:class:`SocketHandler` (TCP or a Unix stream socket, the stdlib's
length-prefixed pickles), :class:`DatagramHandler` (UDP, the same bytes per
datagram, as the stdlib sends them), :class:`SysLogHandler` (RFC 3164 as the
stdlib writes it, or RFC 5424; UDP, TCP with octet counting, Unix sockets)
and :class:`HTTPHandler` (batched POSTs of JSON arrays over a small
HTTP/1.1 client on asyncio streams).  Also :class:`SMTPHandler` (smtplib on a
writer thread: mail is slow and rare, a thread is the honest tool) and
:class:`MemoryHandler` (the stdlib's, with its buffer actually bounded).

``emit`` never does I/O: it renders the record on the caller's thread (the
loop, usually), appends the bytes to a ``deque`` and wakes the sender task if
it sleeps - directly on the loop thread, through ``call_soon_threadsafe``
from other threads.  The handler binds to the first running loop that uses
it.  While the sink is down, records wait in the bounded buffer and the
oldest are dropped and counted; the count is sent once the sink is back.

Rejected: the stdlib handlers' blocking ``sendall`` on the loop (one stuck
peer freezes every coroutine, cpython#65046), a task per record, and a
``loop.sock_sendto`` path for UDP (uvloop lacks it; a non-blocking socket
with ``add_writer`` on EAGAIN works on both loops).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import email.utils
import errno
import json
import logging
import logging.handlers
import os
import random
import smtplib
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Iterable
from email.message import EmailMessage
from typing import Any

from ..errors import RemoteProtocolError
from . import _lifecycle
from ._records import frame_record, record_to_dict
from ._sink import ThreadedHandler

__all__ = [
    "AsyncNetworkHandler",
    "DatagramHandler",
    "HTTPHandler",
    "MemoryHandler",
    "SMTPHandler",
    "SocketHandler",
    "SysLogHandler",
]

_get_running_loop = asyncio._get_running_loop


class AsyncNetworkHandler(logging.Handler):
    """Base of the loop-native network handlers.

    Subclasses implement :meth:`_prepare` (caller's thread: record -> bytes),
    :meth:`_connect`, :meth:`_send`, :meth:`_disconnect` (loop) and
    :meth:`_send_sync` (a blocking last resort used by :meth:`close` when no
    loop runs any more, e.g. at interpreter exit).

    Args:
        level: the handler's level.
        buffer_size: most records held while the sink is slow or down; the
            oldest are dropped beyond it (see :attr:`dropped`).
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
        buffer_size: int = 10_000,
        max_batch: int = 256,
        backoff_initial: float = 0.1,
        backoff_max: float = 30.0,
        connect_timeout: float = 5.0,
        close_timeout: float = 5.0,
    ) -> None:
        logging.Handler.__init__(self, level)
        if buffer_size < 1 or max_batch < 1:
            raise ValueError("buffer_size and max_batch must be at least 1")
        self.buffer_size = buffer_size
        self.max_batch = max_batch
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self._buffer: deque[bytes] = deque(maxlen=buffer_size)
        self._inflight: list[bytes] = []
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
        self._inflight = []
        self._connected = False
        self._reset_loop_state()
        with contextlib.suppress(Exception):
            self._disconnect()

    def createLock(self) -> None:
        self.lock = threading.RLock()

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
        """Queue rendered bytes; never blocks, drops the oldest when full."""
        buf = self._buffer
        if len(buf) >= self.buffer_size:
            self._dropped += 1
        buf.append(item)
        loop = self._loop
        if loop is None or self._task is None:
            self._bind()
        elif self._waiting:
            if threading.get_ident() == self._loop_thread:
                self._wake()
            else:
                with contextlib.suppress(RuntimeError):  # the loop was closed
                    loop.call_soon_threadsafe(self._wake)

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
        backoff = self.backoff_initial
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
                        backoff = await self._backoff(wakeup, backoff)
                        continue
                    self._connected = True
                batch = self._inflight
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
                    backoff = await self._backoff(wakeup, backoff)
                    continue
                else:
                    self._sent += len(batch)
                    backoff = self.backoff_initial
                self._inflight = []
        finally:
            self._waiting = False

    async def _backoff(self, wakeup: asyncio.Event, backoff: float) -> float:
        # Wait before the next attempt (jittered), unless close() wakes us;
        # returns the next, doubled, delay.
        delay = backoff * (0.5 + random.random())
        if self._closing:
            # Closing: keep trying until aclose()'s deadline cancels us.
            await asyncio.sleep(delay)
        else:
            wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing_event(wakeup), delay)
        return min(backoff * 2, self.backoff_max)

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
        with contextlib.suppress(IndexError):
            for _ in range(self.max_batch):
                batch.append(buf.popleft())
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

    async def __aenter__(self) -> AsyncNetworkHandler:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

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

    def _disconnect(self) -> None:
        self._close_datagram()

    def _send_sync(self, batch: list[bytes]) -> None:
        family, address = self._address()
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(self.connect_timeout)
            for data in batch:
                sock.sendto(data, address)


# -- syslog ---------------------------------------------------------------------


class SysLogHandler(_StreamMixin, _DatagramMixin, AsyncNetworkHandler):
    """Syslog over UDP, TCP or a Unix socket, on the loop.

    By default each message is what :class:`logging.handlers.SysLogHandler`
    sends: ``<PRI>`` + ident + the formatted record + a NUL byte (the
    stdlib's RFC 3164 flavour, without timestamp or hostname).  With
    ``rfc=5424`` the header is ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID
    MSGID -`` and the message is UTF-8 with a BOM.

    Over TCP, messages are framed with RFC 6587 octet counting (``LEN SP
    MSG``, no NUL) unless ``framing="nul"``; datagrams and Unix sockets carry
    one message each, as the stdlib sends them.

    Args:
        address: ``(host, port)`` or a Unix socket path such as ``/dev/log``.
        facility: a ``LOG_*`` facility (name or number), as in the stdlib.
        socktype: ``socket.SOCK_DGRAM`` (default for host/port) or
            ``socket.SOCK_STREAM``; for a path, None tries datagram then stream.
        rfc: ``3164`` (default) or ``5424``.
        framing: ``"octet-counting"`` (TCP default) or ``"nul"``.
        app_name: APP-NAME for RFC 5424 (default: the program name).
        hostname: HOSTNAME for RFC 5424 (default: ``socket.gethostname()``).
        msgid: MSGID for RFC 5424 (``"-"`` by default).
        **options: see :class:`AsyncNetworkHandler`.
    """

    LOG_USER = logging.handlers.SysLogHandler.LOG_USER
    priority_names = logging.handlers.SysLogHandler.priority_names
    facility_names = logging.handlers.SysLogHandler.facility_names
    priority_map = logging.handlers.SysLogHandler.priority_map
    ident = ""
    append_nul = True

    def __init__(
        self,
        address: tuple[str, int] | str = ("localhost", logging.handlers.SYSLOG_UDP_PORT),
        facility: int | str = logging.handlers.SysLogHandler.LOG_USER,
        socktype: int | None = None,
        *,
        rfc: int = 3164,
        framing: str | None = None,
        app_name: str | None = None,
        hostname: str | None = None,
        msgid: str = "-",
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if rfc not in (3164, 5424):
            raise ValueError("rfc must be 3164 or 5424")
        if isinstance(facility, str):
            facility = self.facility_names[facility]
        self.address = address
        self.facility = facility
        self.socktype = socktype
        self.unixsocket = isinstance(address, str)
        if self.unixsocket:
            self._stream = socktype == socket.SOCK_STREAM
        else:
            self._stream = socktype == socket.SOCK_STREAM
        self.rfc = rfc
        if framing is None:
            framing = "octet-counting" if self._stream and not self.unixsocket else "nul"
        if framing not in ("octet-counting", "nul"):
            raise ValueError("framing must be 'octet-counting' or 'nul'")
        self.framing = framing
        self.app_name = _sd_name(app_name or os.path.basename(sys.argv[0] or "python"), 48)
        self.hostname = _sd_name(hostname or socket.gethostname(), 255)
        self.msgid = _sd_name(msgid, 32)

    def encodePriority(self, facility: int | str, priority: int | str) -> int:
        """The PRI value, as the stdlib computes it."""
        if isinstance(facility, str):
            facility = self.facility_names[facility]
        if isinstance(priority, str):
            priority = self.priority_names[priority]
        return (facility << 3) | priority

    def mapPriority(self, levelName: str) -> str:
        """Map a level name to a syslog priority name (stdlib semantics)."""
        return self.priority_map.get(levelName, "warning")

    def _prepare(self, record: logging.LogRecord) -> bytes:
        msg = self.format(record)
        pri = self.encodePriority(self.facility, self.mapPriority(record.levelname))
        if self.rfc == 5424:
            stamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            header = (
                f"<{pri}>1 {stamp.isoformat(timespec='microseconds').replace('+00:00', 'Z')} "
                f"{self.hostname} {self.app_name} {record.process or '-'} {self.msgid} - "
            )
            data = header.encode("ascii", "replace") + b"\xef\xbb\xbf" + msg.encode("utf-8")
        else:
            if self.ident:
                msg = self.ident + msg
            data = f"<{pri}>".encode() + msg.encode("utf-8")
        if self.framing == "octet-counting":
            return b"%d " % len(data) + data
        if (self.rfc == 3164 and self.append_nul) or (self.rfc == 5424 and self._stream):
            data += b"\x00"  # the stdlib's habit for 3164; a frame end for 5424 streams
        return data

    def _hostport(self) -> tuple[str, int]:
        assert not isinstance(self.address, str)
        return self.address[0], int(self.address[1])

    async def _connect(self) -> None:
        if self.unixsocket:
            assert isinstance(self.address, str)
            if self.socktype in (None, socket.SOCK_DGRAM):
                try:
                    self._open_datagram(socket.AF_UNIX, self.address)
                    self._stream = False
                    return
                except OSError as exc:
                    # /dev/log of a stream-only daemon: EPROTOTYPE.
                    if self.socktype is not None or exc.errno != errno.EPROTOTYPE:
                        raise
            await self._open_stream(self.address, None)
            self._stream = True
        elif self._stream:
            host, port = self._hostport()
            await self._open_stream(host, port)
        else:
            host, port = self._hostport()
            info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            self._open_datagram(info[0], info[4])

    async def _send(self, batch: list[bytes]) -> None:
        if self._stream:
            await self._write_stream(b"".join(batch))
        else:
            await self._send_datagrams(batch)

    def _disconnect(self) -> None:
        self._close_stream()
        self._close_datagram()

    def _send_sync(self, batch: list[bytes]) -> None:
        if self.unixsocket:
            assert isinstance(self.address, str)
            kind = socket.SOCK_STREAM if self._stream else socket.SOCK_DGRAM
            with socket.socket(socket.AF_UNIX, kind) as sock:
                sock.settimeout(self.connect_timeout)
                sock.connect(self.address)
                for data in batch:
                    sock.sendall(data) if self._stream else sock.send(data)
        elif self._stream:
            with socket.create_connection(self._hostport(), self.connect_timeout) as sock:
                sock.sendall(b"".join(batch))
        else:
            host, port = self._hostport()
            info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            with socket.socket(info[0], socket.SOCK_DGRAM) as sock:
                for data in batch:
                    sock.sendto(data, info[4])


def _sd_name(value: str, limit: int) -> str:
    # RFC 5424 header fields: printable US-ASCII without spaces, bounded.
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


# -- HTTP -----------------------------------------------------------------------

_MAX_HEADER = 64 * 1024
_MAX_BODY = 1 << 20


class HTTPHandler(_StreamMixin, AsyncNetworkHandler):
    """POSTs batches of records as a JSON array, over one kept-alive connection.

    Each record becomes the JSON object of :meth:`mapLogRecord` (the record's
    attributes, message merged).  A 2xx answer means delivered; 5xx, 408 and
    429 answers and connection errors are retried after a backoff; any other
    status drops the batch (counted in :attr:`dropped`).  The client is a
    small HTTP/1.1 client on asyncio streams (no dependency).

    Args:
        host: ``"host"`` or ``"host:port"`` (port 80, or 443 with ``secure``).
        url: the request path, e.g. ``"/logs"``.
        method: ``"POST"`` (default) or ``"PUT"``.
        secure: use TLS (with ``context`` or the default context).
        credentials: ``(user, password)`` for HTTP basic authentication.
        context: an :class:`ssl.SSLContext` for ``secure``.
        timeout: seconds allowed for one request and its answer.
        **options: see :class:`AsyncNetworkHandler`.
    """

    def __init__(
        self,
        host: str,
        url: str,
        method: str = "POST",
        secure: bool = False,
        credentials: tuple[str, str] | None = None,
        context: ssl.SSLContext | None = None,
        *,
        timeout: float = 10.0,
        **options: Any,
    ) -> None:
        options.setdefault("max_batch", 100)
        super().__init__(**options)
        method = method.upper()
        if method not in ("POST", "PUT"):
            raise ValueError("HTTPHandler sends JSON bodies: method must be POST or PUT")
        self.host = host
        self.url = url if url.startswith("/") else "/" + url
        self.method = method
        self.secure = secure
        self.credentials = credentials
        self.context = context
        self.timeout = timeout
        parsed = urllib.parse.urlsplit("//" + host)
        self._hostname = parsed.hostname or host
        self._port = parsed.port or (443 if secure else 80)
        self._reader: asyncio.StreamReader | None = None

    def mapLogRecord(self, record: logging.LogRecord) -> dict[str, Any]:
        """The JSON object sent for ``record`` (stdlib name; override to reshape)."""
        d = record_to_dict(record, self.formatter)
        d["message"] = d["msg"]
        return d

    def _prepare(self, record: logging.LogRecord) -> bytes:
        return json.dumps(self.mapLogRecord(record), default=repr).encode()

    def _request_head(self, length: int) -> bytes:
        lines = [
            f"{self.method} {self.url} HTTP/1.1",
            f"Host: {self.host}",
            "Content-Type: application/json",
            f"Content-Length: {length}",
            "User-Agent: anycore-logging",
        ]
        if self.credentials:
            token = base64.b64encode(":".join(self.credentials).encode()).decode()
            lines.append(f"Authorization: Basic {token}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _connect(self) -> None:
        ctx = None
        if self.secure:
            ctx = self.context or ssl.create_default_context()
        if ctx is None:
            reader, writer = await asyncio.open_connection(self._hostname, self._port)
        else:
            reader, writer = await asyncio.open_connection(
                self._hostname, self._port, ssl=ctx, server_hostname=self._hostname
            )
        self._reader, self._writer = reader, writer

    async def _send(self, batch: list[bytes]) -> None:
        body = b"[" + b",".join(batch) + b"]"
        await asyncio.wait_for(self._exchange(body), self.timeout)

    async def _exchange(self, body: bytes) -> None:
        reader = self._reader
        if reader is None:
            raise ConnectionResetError("not connected")
        await self._write_stream(self._request_head(len(body)) + body)
        status, headers = await _read_head(reader)
        await _read_body(reader, headers)
        if headers.get("connection", "").lower() == "close":
            self._connected = False
            self._disconnect()
        if 200 <= status < 300:
            return
        if status >= 500 or status in (408, 429):
            raise ConnectionResetError(f"log sink answered HTTP {status}")
        raise _Refused(f"log sink refused the batch with HTTP {status}")

    def _disconnect(self) -> None:
        self._reader = None
        self._close_stream()

    def _send_sync(self, batch: list[bytes]) -> None:
        import http.client

        conn_cls = http.client.HTTPSConnection if self.secure else http.client.HTTPConnection
        kwargs: dict[str, Any] = {"timeout": self.timeout}
        if self.secure and self.context is not None:
            kwargs["context"] = self.context
        conn = conn_cls(self._hostname, self._port, **kwargs)
        try:
            body = b"[" + b",".join(batch) + b"]"
            headers = {"Content-Type": "application/json"}
            if self.credentials:
                token = base64.b64encode(":".join(self.credentials).encode()).decode()
                headers["Authorization"] = f"Basic {token}"
            conn.request(self.method, self.url, body, headers)
            conn.getresponse().read()
        finally:
            conn.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise ConnectionResetError("log sink closed the connection") from exc
    except asyncio.LimitOverrunError as exc:
        raise RemoteProtocolError("HTTP response head too large") from exc
    if len(head) > _MAX_HEADER:
        raise RemoteProtocolError("HTTP response head too large")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise RemoteProtocolError(f"bad HTTP status line: {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        total = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            total += size
            if total > _MAX_BODY:
                raise RemoteProtocolError("HTTP response body too large")
            await reader.readexactly(size + 2)
            if size == 0:
                return
    length = int(headers.get("content-length", "0") or "0")
    if length > _MAX_BODY:
        raise RemoteProtocolError("HTTP response body too large")
    if length:
        await reader.readexactly(length)


# -- SMTP -----------------------------------------------------------------------


class SMTPHandler(ThreadedHandler, logging.handlers.SMTPHandler):
    """Mails records from a writer thread (smtplib), never from the loop.

    Same arguments as :class:`logging.handlers.SMTPHandler`; the writer sends
    one message per record, all of a batch over one SMTP session, and retries
    a failed session ``retries`` times with a doubling delay before counting
    the batch as dropped.
    """

    def __init__(
        self,
        mailhost: str | tuple[str, int],
        fromaddr: str,
        toaddrs: str | list[str],
        subject: str,
        credentials: tuple[str, str] | None = None,
        secure: tuple[()] | tuple[str] | tuple[str, str] | None = None,
        timeout: float = 5.0,
        *,
        retries: int = 3,
        retry_delay: float = 1.0,
        queue_size: int = 1000,
        max_batch: int = 50,
        block: bool = False,
        close_timeout: float = 30.0,
    ) -> None:
        logging.handlers.SMTPHandler.__init__(
            self, mailhost, fromaddr, toaddrs, subject, credentials, secure, timeout
        )
        self.retries = retries
        self.retry_delay = retry_delay
        self._init_sink(
            queue_size=queue_size, max_batch=max_batch, block=block, close_timeout=close_timeout
        )

    def _prepare(self, record: logging.LogRecord) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.fromaddr
        msg["To"] = ",".join(self.toaddrs)
        msg["Subject"] = self.getSubject(record)
        msg["Date"] = email.utils.localtime()
        msg.set_content(self.format(record))
        return msg

    def _write_batch(self, batch: list[Any]) -> None:
        delay = self.retry_delay
        for attempt in range(self.retries + 1):
            try:
                self._send_session(batch)
                return
            except (OSError, smtplib.SMTPException):
                if attempt == self.retries or self._closing:
                    raise
                time.sleep(delay)
                delay *= 2

    def _send_session(self, batch: list[EmailMessage]) -> None:
        port = self.mailport or smtplib.SMTP_PORT
        with smtplib.SMTP(self.mailhost, port, timeout=self.timeout) as smtp:
            if self.username:
                if self.secure is not None:
                    smtp.ehlo()
                    smtp.starttls(*self.secure)
                    smtp.ehlo()
                smtp.login(self.username, self.password)
            for msg in batch:
                smtp.send_message(msg)


# -- memory ---------------------------------------------------------------------


class MemoryHandler(logging.handlers.MemoryHandler):
    """The stdlib's buffering handler, with a bound that holds without a target.

    Buffers up to ``capacity`` records and hands them to ``target`` when the
    buffer is full or a record at ``flushLevel`` or above arrives.  The
    stdlib's buffer grows without limit while ``target`` is None; here the
    oldest records are dropped (and counted in :attr:`dropped`) instead.  Use
    an anycore handler as the target so that flushing never blocks the loop.
    """

    def __init__(
        self,
        capacity: int,
        flushLevel: int = logging.ERROR,
        target: logging.Handler | None = None,
        flushOnClose: bool = True,
    ) -> None:
        super().__init__(capacity, flushLevel, target, flushOnClose)
        self.dropped = 0

    def flush(self) -> None:
        """Hand the buffer to the target; without one, trim it to ``capacity``."""
        assert self.lock is not None
        with self.lock:
            if self.target is not None:
                for record in self.buffer:
                    self.target.handle(record)
                self.buffer.clear()
            elif len(self.buffer) > self.capacity:
                excess = len(self.buffer) - self.capacity
                del self.buffer[:excess]
                self.dropped += excess
