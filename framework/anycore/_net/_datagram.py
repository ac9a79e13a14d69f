"""Datagram (UDP) handlers and their asyncio driver.

This module owns :class:`DatagramHandler` (the class users subclass, with
``datagram_received(data, addr)`` and ``sendto``) and ``_Glue``, the
asyncio.DatagramProtocol that runs one handler per socket.  Around it:
``_datagram_portable`` (the same handlers over anyio UDP sockets, for trio),
``_datagram_server`` (:func:`serve_datagram` / :class:`DatagramServer`, one
handler per bound socket) and ``_datagram_client`` (:func:`open_datagram_endpoint`
/ :class:`DatagramEndpoint`: send to a server and receive its answers, through
a handler or with ``await receive()``).  The notes below cover all four.

Design notes:

* Fast path.  A handler sits behind one small :class:`asyncio.DatagramProtocol`
  (``_Glue``); a synchronous ``datagram_received`` is called inline from the
  loop's callback, so a datagram costs one size check, two counters and one
  method call.  No stream reader, no task, no queue on that path.
* Async handlers.  When ``datagram_received`` is a coroutine function (or a
  sync one returns an awaitable), datagrams go through a per-socket FIFO served
  by one task, so they are handled in arrival order, like frames of a stream
  connection.  The FIFO is bounded (``max_queued_datagrams``): beyond it the
  socket stops reading where the transport can pause (asyncio's selector
  loop); uvloop's UDP transport cannot pause, so excess datagrams are dropped
  and counted.  Dropping is what UDP does under load anyway; an unbounded
  queue was rejected because it turns a flood into an out-of-memory kill.
* Writes.  ``sendto`` never blocks.  The loop's transport buffers when the
  kernel buffer is full; past ``write_buffer_limit`` further datagrams are
  dropped and counted, and ``await drain()`` waits for the transport to ask
  for more.  Raising on a full buffer was rejected: a UDP sender cannot tell
  whether the peer got anything anyway, and one slow path must not kill the
  handler.
* Size.  ``max_datagram_size`` bounds both directions: an oversized datagram
  received is dropped and reported to the ``datagram_too_large`` hook; one
  sent raises :class:`~anycore.errors.LocalProtocolError` at once instead of
  surfacing later as ``EMSGSIZE`` in ``error_received``.
* Errors.  An exception from a handler method is logged and counted, and the
  socket keeps serving: unlike a stream, one bad datagram has no connection to
  end.  ICMP errors reported by the OS arrive in ``error_received``.
* Portable path.  On other anyio backends (trio), or with ``portable=True``,
  ``_PortableGlue`` runs the same handler over an anyio UDP socket: a task
  receives, calls the handler (awaiting it when async), then receives again.
  ``sendto`` writes to the non-blocking stdlib socket anyio wrapped, so it
  stays synchronous; a full kernel buffer counts as a drop.  A memory object
  stream between receiver and handler was rejected: it adds a hop per
  datagram and a second buffer to bound.
* Lifecycle.  A server is an async context manager; with a runtime it registers
  a ``Phase.STOP_ACCEPTING`` step (UDP has no connections to drain later).  A
  graceful close stops reading, lets queued async work finish within
  ``drain_timeout``, flushes buffered writes, then closes; cancelling the close
  aborts the sockets.  ``connection_lost`` runs exactly once per handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, cast

from ..errors import ClosedError, LocalProtocolError

__all__ = ["Address", "DatagramHandler", "DatagramStatistics"]

log = logging.getLogger("anycore.datagram")

#: A socket address as the loop reports it: ``(host, port)`` for IPv4,
#: ``(host, port, flowinfo, scope_id)`` for IPv6.
# (host, port[, flowinfo, scope_id]) for UDP; (path,) for a Unix datagram
# socket - the path a str, or bytes for an abstract or autobound name.
Address: TypeAlias = tuple[Any, ...]

# The largest UDP payload over IPv4 (65535 - 8 byte UDP header - 20 byte IP header).
MAX_UDP_PAYLOAD = 65507


@dataclasses.dataclass(frozen=True, slots=True)
class DatagramStatistics:
    """Counters of one datagram socket (or, from a server, summed over its sockets).

    Attributes:
        datagrams_received: datagrams delivered to the handler (or queued for it).
        bytes_received: their payload bytes.
        datagrams_sent: datagrams handed to the transport.
        bytes_sent: their payload bytes.
        dropped_too_large: received datagrams over ``max_datagram_size``.
        dropped_backlog: received datagrams dropped because the async handler's
            queue was full and the transport could not pause reading.
        dropped_write_buffer: datagrams not sent because the write buffer was
            over ``write_buffer_limit``.
        handler_errors: exceptions raised by handler methods (logged).
        os_errors: OS errors reported through ``error_received``.
        queued: datagrams waiting for an async handler right now.
    """

    datagrams_received: int = 0
    bytes_received: int = 0
    datagrams_sent: int = 0
    bytes_sent: int = 0
    dropped_too_large: int = 0
    dropped_backlog: int = 0
    dropped_write_buffer: int = 0
    handler_errors: int = 0
    os_errors: int = 0
    queued: int = 0

    def __add__(self, other: DatagramStatistics) -> DatagramStatistics:
        return DatagramStatistics(
            *(
                getattr(self, f.name) + getattr(other, f.name)
                for f in dataclasses.fields(DatagramStatistics)
            )
        )


class DatagramHandler:
    """Base class for UDP handlers: subclass it and override the hooks.

    One handler serves one socket: a server calls its factory once per bound
    address; a client endpoint has one handler.  Hooks may be plain methods
    (called inline, the fast path) or coroutine functions (run in order, one
    at a time, per socket).

    Class attributes configure the limits:

    Attributes:
        max_datagram_size: largest datagram accepted or sent, in bytes.
        max_queued_datagrams: how many datagrams may wait for an async handler
            before reading pauses (or, where the transport cannot pause,
            before datagrams are dropped).
        write_buffer_limit: bytes the transport may buffer before ``sendto``
            drops datagrams (counted in ``dropped_write_buffer``).
    """

    max_datagram_size: int = MAX_UDP_PAYLOAD
    max_queued_datagrams: int = 256
    write_buffer_limit: int = 1024 * 1024

    # Set by the glue; read through the properties below.
    _transport: asyncio.DatagramTransport | None = None
    _glue: DatagramDriver | None = None

    # -- hooks ------------------------------------------------------------------

    def connection_made(self) -> Awaitable[None] | None:
        """Called once the socket is bound (and connected, for a client).

        Datagrams that arrive while an async ``connection_made`` runs wait
        for it.
        """
        return None

    def datagram_received(self, data: bytes, addr: Address) -> Awaitable[None] | None:
        """Called for each datagram received.

        Args:
            data: the payload.
            addr: the sender's address; pass it to :meth:`sendto` to answer.
        """
        return None

    def error_received(self, exc: OSError) -> None:
        """Called when the OS reports an error for this socket.

        Typically ``ConnectionRefusedError`` after sending to a port nobody
        listens on (an ICMP "port unreachable").  The default logs it at
        debug level; the socket keeps working.

        Args:
            exc: the error.
        """
        log.debug("datagram socket %s: %r", self.sockname, exc)

    def datagram_too_large(self, size: int, addr: Address) -> None:
        """Called when a datagram over ``max_datagram_size`` was received.

        The datagram has already been dropped and counted.  The default logs
        a warning.

        Args:
            size: the datagram's size in bytes.
            addr: its sender.
        """
        log.warning(
            "datagram socket %s: dropped a %d-byte datagram from %s (max_datagram_size=%d)",
            self.sockname,
            size,
            addr,
            self.max_datagram_size,
        )

    def connection_lost(self, exc: BaseException | None) -> Awaitable[None] | None:
        """Called exactly once when the socket is closed.

        Args:
            exc: ``None`` on a normal close, else the error that closed it.
        """
        return None

    # -- actions ----------------------------------------------------------------

    def sendto(self, data: bytes | bytearray | memoryview, addr: Address | None = None) -> None:
        """Send one datagram.  Never blocks.

        Args:
            data: the payload.
            addr: the destination; ``None`` on a connected (client) socket.

        Raises:
            LocalProtocolError: ``data`` is longer than ``max_datagram_size``,
                or empty (the loops' transports cannot send empty datagrams).
            ClosedError: the socket is closed or closing.
        """
        glue = self._glue
        if glue is None or glue.closed or glue.closing:
            raise ClosedError("the datagram socket is closed")
        size = len(data)
        if size > self.max_datagram_size:
            raise LocalProtocolError(
                f"datagram of {size} bytes exceeds max_datagram_size={self.max_datagram_size}"
            )
        if not size:
            # asyncio's and uvloop's transports silently skip empty datagrams.
            raise LocalProtocolError("cannot send an empty datagram on this event loop")
        glue.send(data, addr, size)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its low-water mark.

        Raises:
            ClosedError: the socket closed while waiting (or before).
        """
        glue = self._glue
        if glue is None or glue.closed:
            raise ClosedError("the datagram socket is closed")
        await glue.wait_writable()

    def close(self) -> None:
        """Close the socket after buffered datagrams are sent.  Idempotent."""
        glue = self._glue
        if glue is not None:
            glue.close()

    def abort(self) -> None:
        """Close the socket at once, dropping buffered datagrams.  Idempotent."""
        glue = self._glue
        if glue is not None:
            glue.abort()

    # -- information ------------------------------------------------------------

    @property
    def transport(self) -> asyncio.DatagramTransport | None:
        """The loop's transport, or ``None`` before ``connection_made``."""
        return self._transport

    @property
    def sockname(self) -> Address | None:
        """The local address the socket is bound to."""
        glue = self._glue
        return None if glue is None else glue.sockname

    @property
    def peer(self) -> Address | None:
        """The remote address of a connected socket (a client), else ``None``."""
        glue = self._glue
        return None if glue is None else glue.peer

    @property
    def closing(self) -> bool:
        """True once the socket is closing or closed."""
        glue = self._glue
        return glue is None or glue.closed or glue.closing

    def statistics(self) -> DatagramStatistics:
        """This socket's counters."""
        glue = self._glue
        return DatagramStatistics() if glue is None else glue.statistics()


def _buffered(transport: asyncio.DatagramTransport) -> int:
    # Both loops' datagram transports have it; typeshed's ABC does not.
    return int(cast(Any, transport).get_write_buffer_size())


def _is_async(method: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(method)


def _address(name: Any) -> Address | None:
    """The socket module's address as anycore's: a tuple, ``(path,)`` for AF_UNIX."""
    if name is None or name == "" or name == b"":
        return None
    return (name,) if isinstance(name, str | bytes) else tuple(name)


def _sockaddr(addr: Address | None) -> Any:
    """anycore's address as the socket module's (``(path,)`` -> ``path``)."""
    if addr is not None and len(addr) == 1 and isinstance(addr[0], str | bytes):
        return addr[0]
    return addr


class DatagramDriver:
    """What both datagram drivers share, and all a :class:`DatagramHandler` sees.

    The asyncio driver (:class:`_Glue`, an ``asyncio.DatagramProtocol``) and
    the anyio driver (``_datagram_portable._PortableGlue``, a receive task)
    keep the same counters, report OS errors the same way and answer the
    handler's calls (``send``, ``wait_writable``, ``close``, ``abort``), so
    the handler API, servers and clients do not care which one runs.
    """

    handler: DatagramHandler
    transport: asyncio.DatagramTransport | None = None
    sockname: Address | None = None
    peer: Address | None = None
    closing = False
    closed = False
    paused_writing = False

    def _start_counters(self) -> None:
        self.datagrams_received = 0
        self.bytes_received = 0
        self.datagrams_sent = 0
        self.bytes_sent = 0
        self.dropped_too_large = 0
        self.dropped_backlog = 0
        self.dropped_write_buffer = 0
        self.handler_errors = 0
        self.os_errors = 0

    def queued(self) -> int:
        """Datagrams waiting for an async handler now."""
        return 0

    def statistics(self) -> DatagramStatistics:
        return DatagramStatistics(
            datagrams_received=self.datagrams_received,
            bytes_received=self.bytes_received,
            datagrams_sent=self.datagrams_sent,
            bytes_sent=self.bytes_sent,
            dropped_too_large=self.dropped_too_large,
            dropped_backlog=self.dropped_backlog,
            dropped_write_buffer=self.dropped_write_buffer,
            handler_errors=self.handler_errors,
            os_errors=self.os_errors,
            queued=self.queued(),
        )

    def report_os_error(self, exc: OSError) -> None:
        """Count an OS error and hand it to the handler's ``error_received``."""
        self.os_errors += 1
        try:
            self.handler.error_received(exc)
        except Exception:
            self.handler_errors += 1
            log.exception("error_received of %r failed", self.handler)

    # -- what each driver implements ----------------------------------------------

    def send(self, data: bytes | bytearray | memoryview, addr: Address | None, size: int) -> None:
        raise NotImplementedError  # pragma: no cover - both drivers define it

    async def wait_writable(self) -> None:
        raise NotImplementedError  # pragma: no cover

    def close(self) -> None:
        raise NotImplementedError  # pragma: no cover

    def abort(self) -> None:
        raise NotImplementedError  # pragma: no cover


class _Glue(DatagramDriver, asyncio.DatagramProtocol):
    """The asyncio driver: the protocol between a transport and a DatagramHandler."""

    def __init__(self, handler: DatagramHandler) -> None:
        self.handler = handler
        handler._glue = self
        self.transport = None
        self.sockname = None
        self.peer = None
        self.unix = False  # an AF_UNIX socket: addresses are (path,)
        self.loop = asyncio.get_running_loop()
        self._received_cb = handler.datagram_received
        self._async = _is_async(handler.datagram_received)
        self._max_size = handler.max_datagram_size
        self._backlog_limit = max(1, handler.max_queued_datagrams)
        # Work for the serial worker: (data, addr) tuples or awaitables.
        self._pending: deque[Any] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._reading_paused = False
        self.paused_writing = False
        self._writable: asyncio.Future[None] | None = None
        self.closing = False
        self.closed = False
        self._inflight: Any = None
        self.closed_fut = self.loop.create_future()
        self.lost = self.loop.create_future()
        self.made = self.loop.create_future()
        self._lost_task: asyncio.Task[None] | None = None
        self._start_counters()

    def send(self, data: bytes | bytearray | memoryview, addr: Address | None, size: int) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ClosedError("the datagram socket is closed")
        if self.paused_writing and _buffered(transport) > self.handler.write_buffer_limit:
            self.dropped_write_buffer += 1
            return
        transport.sendto(data, _sockaddr(addr) if self.unix else addr)
        self.datagrams_sent += 1
        self.bytes_sent += size

    def queued(self) -> int:
        return len(self._pending)

    # -- asyncio callbacks --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not every loop's datagram transport subclasses DatagramTransport.
        transport = cast(asyncio.DatagramTransport, transport)
        self.transport = transport
        self.handler._transport = transport
        self.sockname = _address(transport.get_extra_info("sockname"))
        self.peer = _address(transport.get_extra_info("peername"))
        sock = transport.get_extra_info("socket")
        self.unix = sock is not None and sock.family == socket.AF_UNIX
        limit = self.handler.write_buffer_limit
        # Ask to pause writing at the limit; sendto drops beyond it.
        cast(Any, transport).set_write_buffer_limits(high=limit, low=limit // 4)
        try:
            result = self.handler.connection_made()
        except Exception as exc:
            self.handler_errors += 1
            if not self.made.done():
                self.made.set_exception(exc)
            transport.abort()
            return
        if result is not None:
            self._enqueue(_Awaited(result, "connection_made"))
        if not self.made.done():
            self.made.set_result(None)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if self.unix:
            addr = (addr,)  # a path (or an autobound name): anycore's 1-tuple
        size = len(data)
        if size > self._max_size:
            self.dropped_too_large += 1
            try:
                self.handler.datagram_too_large(size, addr)
            except Exception:
                self.handler_errors += 1
                log.exception("datagram_too_large hook of %r failed", self.handler)
            return
        self.datagrams_received += 1
        self.bytes_received += size
        if self._async or self._pending:
            self._enqueue((data, addr))
            return
        try:
            result = self._received_cb(data, addr)
        except Exception:
            self.handler_errors += 1
            log.exception("datagram_received of %r failed (datagram from %s)", self.handler, addr)
            return
        if result is not None:
            self._enqueue(_Awaited(result, "datagram_received"))

    def error_received(self, exc: Exception) -> None:
        self.report_os_error(exc if isinstance(exc, OSError) else OSError(str(exc)))

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        waiter = self._writable
        if waiter is not None:
            self._writable = None
            if not waiter.done():
                waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.closing = True
        self.paused_writing = False
        waiter = self._writable
        if waiter is not None and not waiter.done():
            waiter.set_exception(ClosedError("the datagram socket closed"))
            # Nobody may be waiting any more; do not warn about it.
            waiter.exception()
        self._writable = None
        if not self.made.done():
            self.made.set_exception(exc or ClosedError("the datagram socket closed at once"))
            self.made.exception()
        worker = self._worker
        for item in self._pending:
            if isinstance(item, _Awaited) and item is not self._inflight:
                item.discard()
        self._pending.clear()
        if not self.closed_fut.done():
            self.closed_fut.set_result(None)
        self._lost_task = self.loop.create_task(
            self._finish(worker, exc), name=f"anycore datagram close {self.handler!r}"
        )

    # -- internals ----------------------------------------------------------------

    async def _finish(self, worker: asyncio.Task[None] | None, exc: Exception | None) -> None:
        try:
            if worker is not None and not worker.done():
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
            try:
                result = self.handler.connection_lost(exc)
                if result is not None:
                    await result
            except Exception:
                self.handler_errors += 1
                log.exception("connection_lost of %r failed", self.handler)
        finally:
            if not self.lost.done():
                self.lost.set_result(None)

    def _enqueue(self, item: Any) -> None:
        pending = self._pending
        if len(pending) >= self._backlog_limit:
            # Should not happen where reading pauses; uvloop cannot pause UDP.
            self.dropped_backlog += 1
            if isinstance(item, _Awaited):
                item.discard()
            return
        pending.append(item)
        if len(pending) >= self._backlog_limit and not self._reading_paused:
            pause = getattr(self.transport, "pause_reading", None)
            if pause is not None:
                pause()
                self._reading_paused = True
        if self._worker is None and not self.closed:
            self._worker = self.loop.create_task(
                self._serve_pending(), name=f"anycore datagram handler {self.handler!r}"
            )

    async def _serve_pending(self) -> None:
        pending = self._pending
        callback = self._received_cb
        low = self._backlog_limit // 2
        try:
            while pending:
                item = pending[0]
                self._inflight = item
                try:
                    if isinstance(item, _Awaited):
                        await item.awaitable
                    else:
                        result = callback(*item)
                        if result is not None:
                            await result
                except Exception:
                    self.handler_errors += 1
                    log.exception("handler %r failed", self.handler)
                finally:
                    self._inflight = None
                    # Remove after handling, so datagrams arriving meanwhile
                    # queue behind it (order) and len(pending) counts it.
                    if pending and pending[0] is item:
                        pending.popleft()
                if self._reading_paused and len(pending) <= low and not self.closing:
                    resume = getattr(self.transport, "resume_reading", None)
                    if resume is not None:
                        resume()
                    self._reading_paused = False
        finally:
            self._worker = None

    async def wait_writable(self) -> None:
        if not self.paused_writing:
            return
        if self._writable is None:
            self._writable = self.loop.create_future()
        await asyncio.shield(self._writable)

    async def wait_idle(self) -> None:
        """Wait until no async handler work is queued or running."""
        while self._worker is not None and not self.closed:
            # asyncio.wait never raises the worker's cancellation into us.
            await asyncio.wait([self._worker])

    def stop_reading(self) -> None:
        pause = getattr(self.transport, "pause_reading", None)
        if pause is not None and not self._reading_paused and not self.closed:
            pause()
            self._reading_paused = True

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None and not self.closed:
            self.transport.abort()

    async def wait_lost(self) -> None:
        await asyncio.shield(self.lost)

    async def force_lost(self) -> None:
        """After abort(): wait for connection_lost, cutting short a hung hook."""
        self.abort()
        await asyncio.shield(self.closed_fut)
        task = self._lost_task
        if not self.lost.done() and task is not None:
            task.cancel()
            await asyncio.wait([task])


class _Awaited:
    """An awaitable returned by a hook, queued to keep per-socket order."""

    __slots__ = ("awaitable", "what")

    def __init__(self, awaitable: Awaitable[Any], what: str) -> None:
        self.awaitable = awaitable
        self.what = what

    def discard(self) -> None:
        close = getattr(self.awaitable, "close", None)
        if close is not None:
            close()
