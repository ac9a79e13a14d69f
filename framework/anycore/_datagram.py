"""Datagram (UDP) handlers, servers and client endpoints.

This module owns everything connectionless: :class:`DatagramHandler` (the class
users subclass, with ``datagram_received(data, addr)`` and ``sendto``),
:func:`serve_datagram` / :class:`DatagramServer` (one handler per bound socket)
and :func:`open_datagram_endpoint` / :class:`DatagramEndpoint` (the client side:
send to a server and receive its answers, either through a handler or with
``await receive()``).

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
import ipaddress
import logging
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, TypeAlias, cast

import anyio
import anyio.abc

from ._backend import running_on_asyncio
from ._endpoints import Endpoint, parse_endpoint
from ._runtime import Phase, current_runtime
from .errors import ClosedError, EndpointError, LocalProtocolError, RuntimeStateError

__all__ = [
    "Address",
    "DatagramHandler",
    "DatagramStatistics",
    "DatagramServer",
    "DatagramEndpoint",
    "serve_datagram",
    "open_datagram_endpoint",
]

log = logging.getLogger("anycore.datagram")

#: A socket address as the loop reports it: ``(host, port)`` for IPv4,
#: ``(host, port, flowinfo, scope_id)`` for IPv6.
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
    _glue: _Glue | _PortableGlue | None = None

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


class _Glue(asyncio.DatagramProtocol):
    """The asyncio protocol between a transport and a DatagramHandler."""

    def __init__(self, handler: DatagramHandler) -> None:
        self.handler = handler
        handler._glue = self
        self.transport: asyncio.DatagramTransport | None = None
        self.sockname: Address | None = None
        self.peer: Address | None = None
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
        # counters
        self.datagrams_received = 0
        self.bytes_received = 0
        self.datagrams_sent = 0
        self.bytes_sent = 0
        self.dropped_too_large = 0
        self.dropped_backlog = 0
        self.dropped_write_buffer = 0
        self.handler_errors = 0
        self.os_errors = 0

    def send(self, data: bytes | bytearray | memoryview, addr: Address | None, size: int) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ClosedError("the datagram socket is closed")
        if self.paused_writing and _buffered(transport) > self.handler.write_buffer_limit:
            self.dropped_write_buffer += 1
            return
        transport.sendto(data, addr)
        self.datagrams_sent += 1
        self.bytes_sent += size

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
            queued=len(self._pending),
        )

    # -- asyncio callbacks --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not every loop's datagram transport subclasses DatagramTransport.
        transport = cast(asyncio.DatagramTransport, transport)
        self.transport = transport
        self.handler._transport = transport
        name = transport.get_extra_info("sockname")
        self.sockname = None if name is None else tuple(name)
        peer = transport.get_extra_info("peername")
        self.peer = None if peer is None else tuple(peer)
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
        self.os_errors += 1
        try:
            self.handler.error_received(exc if isinstance(exc, OSError) else OSError(str(exc)))
        except Exception:
            self.handler_errors += 1
            log.exception("error_received of %r failed", self.handler)

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


class _PortableGlue:
    """Runs a DatagramHandler over an anyio UDP socket, on any anyio backend (trio).

    The receive loop is a task: each datagram is handled before the next is
    received, so an async handler keeps order and applies backpressure by not
    receiving (the kernel's buffer then drops the excess, as UDP does).
    ``sendto`` stays synchronous: it writes to the non-blocking socket and
    counts a datagram the kernel has no room for as dropped.
    """

    transport = None  # no asyncio transport on this path

    def __init__(
        self, handler: DatagramHandler, sock: Any, raw: socket.socket, *, connected: bool
    ) -> None:
        self.handler = handler
        handler._glue = self
        self.sock = sock
        # The stdlib socket anyio wrapped (same fd, non-blocking): sendto stays sync.
        self.raw = raw
        self.connected = connected
        self.sockname: Address | None = tuple(self.raw.getsockname())
        self.peer: Address | None = tuple(self.raw.getpeername()) if connected else None
        self.closing = False
        self.closed = False
        self.paused_writing = False
        self._outer = anyio.CancelScope()
        self._receiving: anyio.CancelScope | None = None
        self.lost = anyio.Event()
        self.datagrams_received = 0
        self.bytes_received = 0
        self.datagrams_sent = 0
        self.bytes_sent = 0
        self.dropped_too_large = 0
        self.dropped_write_buffer = 0
        self.handler_errors = 0
        self.os_errors = 0

    def statistics(self) -> DatagramStatistics:
        return DatagramStatistics(
            datagrams_received=self.datagrams_received,
            bytes_received=self.bytes_received,
            datagrams_sent=self.datagrams_sent,
            bytes_sent=self.bytes_sent,
            dropped_too_large=self.dropped_too_large,
            dropped_write_buffer=self.dropped_write_buffer,
            handler_errors=self.handler_errors,
            os_errors=self.os_errors,
        )

    def send(self, data: bytes | bytearray | memoryview, addr: Address | None, size: int) -> None:
        try:
            if addr is None:
                self.raw.send(data)
            else:
                self.raw.sendto(data, addr)
        except BlockingIOError:
            self.dropped_write_buffer += 1
            return
        except OSError as exc:
            self._error(exc)
            return
        self.datagrams_sent += 1
        self.bytes_sent += size

    def _error(self, exc: OSError) -> None:
        self.os_errors += 1
        try:
            self.handler.error_received(exc)
        except Exception:
            self.handler_errors += 1
            log.exception("error_received of %r failed", self.handler)

    async def wait_writable(self) -> None:
        return  # never paused: a full kernel buffer drops instead

    def close(self) -> None:
        """Stop after the datagram being handled (if any)."""
        self.closing = True
        if self._receiving is not None:
            self._receiving.cancel()

    def abort(self) -> None:
        self.closing = True
        self._outer.cancel()

    async def wait_lost(self) -> None:
        await self.lost.wait()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        handler = self.handler
        limit = handler.max_datagram_size
        exc: BaseException | None = None
        try:
            with self._outer:
                result = handler.connection_made()
                task_status.started()
                if result is not None:
                    await result
                while not self.closing:
                    with anyio.CancelScope() as receiving:
                        self._receiving = receiving
                        try:
                            item = await self.sock.receive()
                        except (anyio.ClosedResourceError, anyio.EndOfStream):
                            break
                        except anyio.BrokenResourceError as broken:
                            if isinstance(broken.__cause__, OSError):
                                self._error(broken.__cause__)
                                continue
                            exc = broken
                            break
                        except OSError as os_error:
                            self._error(os_error)
                            continue
                        finally:
                            self._receiving = None
                    if receiving.cancelled_caught:
                        break
                    data: bytes
                    addr: Address
                    if self.connected:
                        data, addr = item, cast(Address, self.peer)
                    else:
                        data, addr = item
                    size = len(data)
                    if size > limit:
                        self.dropped_too_large += 1
                        try:
                            handler.datagram_too_large(size, addr)
                        except Exception:
                            self.handler_errors += 1
                            log.exception("datagram_too_large hook of %r failed", handler)
                        continue
                    self.datagrams_received += 1
                    self.bytes_received += size
                    try:
                        result = handler.datagram_received(data, addr)
                        if result is not None:
                            await result
                    except Exception:
                        self.handler_errors += 1
                        log.exception("datagram_received of %r failed", handler)
        finally:
            self.closing = True
            self.closed = True
            with anyio.CancelScope(shield=True):
                await self.sock.aclose()
                try:
                    with anyio.move_on_after(_LOST_TIMEOUT):
                        result = handler.connection_lost(exc)
                        if result is not None:
                            await result
                except Exception:
                    self.handler_errors += 1
                    log.exception("connection_lost of %r failed", handler)
                self.lost.set()


# An async connection_lost on the portable path gets this long (it runs shielded).
_LOST_TIMEOUT = 5.0


# -- endpoint strings -------------------------------------------------------------


def _parse_udp(endpoint: str | Endpoint) -> tuple[Endpoint, str, int]:
    """Parse with the shared endpoint parser and insist on ``udp://``."""
    ep = parse_endpoint(endpoint)
    if ep.scheme != "udp":
        raise EndpointError(
            f"{str(ep)!r}: datagram endpoints use the udp:// scheme (e.g. udp://127.0.0.1:0); "
            "stream endpoints go to serve() / connect()"
        )
    assert ep.host is not None
    assert ep.port is not None
    return ep, ep.host, ep.port


def _endpoint_of(addr: Address) -> Endpoint:
    return Endpoint("udp", host=str(addr[0]), port=int(addr[1]))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _bind_addresses(host: str, port: int) -> list[tuple[int, Address]]:
    """(family, sockaddr) pairs to bind for ``host``: one for a literal IP."""
    if _is_ip(host):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return [(family, (host, port))]
    infos = await anyio.getaddrinfo(
        host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP, flags=socket.AI_PASSIVE
    )
    seen: list[tuple[int, Address]] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        entry = (int(family), tuple(sockaddr[:2]))
        if entry not in seen:
            seen.append(entry)
    if not seen:
        raise EndpointError(f"{host!r} resolved to no address")
    return seen


def _make_socket(family: int, addr: Address, *, reuse_port: bool, broadcast: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        if family == socket.AF_INET6:
            # Bind exactly the IPv6 address asked for (like asyncio's create_server).
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if broadcast:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setblocking(False)
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return sock


async def _attach(sock: socket.socket, handler: DatagramHandler) -> _Glue:
    loop = asyncio.get_running_loop()
    glue: _Glue | None = None

    def factory() -> _Glue:
        nonlocal glue
        glue = _Glue(handler)
        return glue

    try:
        await loop.create_datagram_endpoint(factory, sock=sock)
    except BaseException:
        sock.close()
        raise
    assert glue is not None
    # connection_made runs from a loop callback; surface its failure here.
    await glue.made
    return glue


async def _close_glues(glues: list[_Glue], drain_timeout: float | None) -> None:
    """Stop reading, let async work finish (bounded), flush, close, await the end."""
    if not glues:
        return
    try:
        for g in glues:
            g.closing = True
            g.stop_reading()
        if drain_timeout is None or drain_timeout > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_timeout):
                    await asyncio.gather(*(g.wait_idle() for g in glues))
        for g in glues:
            g.close()
        if drain_timeout is None or drain_timeout > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_timeout):
                    await asyncio.gather(*(g.wait_lost() for g in glues))
    finally:
        # Whatever happened above (timeout, cancellation): nothing stays open,
        # and a connection_lost hook still running past the deadline is cancelled.
        for g in glues:
            g.abort()
        for g in glues:
            if not g.lost.done():
                await g.force_lost()


async def _close_portable(glues: list[_PortableGlue], drain_timeout: float | None) -> None:
    """Stop receiving, let the datagram being handled finish (bounded), close."""
    for g in glues:
        g.close()
    try:
        with anyio.move_on_after(drain_timeout):
            for g in glues:
                await g.wait_lost()
    finally:
        # Past the deadline, or cancelled: end every socket now.
        for g in glues:
            g.abort()
        with anyio.CancelScope(shield=True):
            for g in glues:
                await g.wait_lost()


# -- servers ----------------------------------------------------------------------


class DatagramServer:
    """UDP sockets bound to one or more endpoints, each served by a handler.

    Create it with :func:`serve_datagram` and use it as an async context
    manager (or call :meth:`start` and :meth:`aclose` from one task).

    Attributes:
        handlers: one handler per bound socket, in endpoint order.
    """

    def __init__(
        self,
        handler_factory: Callable[[], DatagramHandler],
        endpoints: tuple[str | Endpoint, ...],
        *,
        reuse_port: bool = False,
        allow_broadcast: bool = False,
        drain_timeout: float | None = 5.0,
        portable: bool | None = None,
    ) -> None:
        if not endpoints:
            raise EndpointError(
                "serve_datagram needs at least one endpoint, e.g. udp://127.0.0.1:0"
            )
        self._factory = handler_factory
        self._endpoints = endpoints
        self._reuse_port = reuse_port
        self._broadcast = allow_broadcast
        self._drain_timeout = drain_timeout
        self._portable_opt = portable
        self._portable = False
        self._glues: list[_Glue] = []
        self._pglues: list[_PortableGlue] = []
        self._tg: anyio.abc.TaskGroup | None = None
        self._tg_task: int | None = None
        self.handlers: list[DatagramHandler] = []
        self._started = False
        self._closing = False
        self._closed: anyio.Event | None = None
        self._closing_task: asyncio.Task[None] | None = None
        self._runtime_handle: Any = None

    async def start(self) -> None:
        """Bind every endpoint and start serving.

        Raises:
            EndpointError: an endpoint string cannot be understood.
            OSError: a socket could not be bound (address in use, ...).
            RuntimeStateError: the server was already started.
        """
        if self._started:
            raise RuntimeStateError("this datagram server was already started")
        self._started = True
        self._closed = anyio.Event()
        portable = self._portable_opt
        self._portable = not running_on_asyncio() if portable is None else portable
        parsed = [_parse_udp(e) for e in self._endpoints]
        try:
            if self._portable:
                self._tg = anyio.create_task_group()
                await self._tg.__aenter__()
                self._tg_task = anyio.get_current_task().id
            for _ep, host, port in parsed:
                reuse, broadcast = self._reuse_port, self._broadcast
                first_port = port
                for family, addr in await _bind_addresses(host, port):
                    # With port 0 and a name resolving to several addresses,
                    # bind them all to the same (first picked) port.
                    if port == 0 and first_port != 0:
                        addr = (addr[0], first_port)
                    sock = _make_socket(family, addr, reuse_port=reuse, broadcast=broadcast)
                    if port == 0 and first_port == 0:
                        first_port = sock.getsockname()[1]
                    made: object = self._factory()
                    if not isinstance(made, DatagramHandler):
                        sock.close()
                        raise TypeError(
                            f"the handler factory returned {made!r}, not a DatagramHandler"
                        )
                    handler = made
                    self.handlers.append(handler)
                    if self._portable:
                        assert self._tg is not None
                        try:
                            wrapped = await anyio.abc.UDPSocket.from_socket(sock)
                        except BaseException:
                            sock.close()
                            raise
                        pglue = _PortableGlue(handler, wrapped, sock, connected=False)
                        self._pglues.append(pglue)
                        await self._tg.start(pglue.run)
                    else:
                        self._glues.append(await _attach(sock, handler))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._shutdown(0)
            # Outside the shield: scopes must be left in the order they were entered.
            await self._exit_task_group()
            raise
        runtime = None if self._portable else current_runtime()
        if runtime is not None:
            self._runtime_handle = runtime.add_shutdown_step(
                Phase.STOP_ACCEPTING,
                f"datagram server {' '.join(map(str, self.endpoints))}",
                self.aclose,
            )
        log.debug("datagram server serving %s", " ".join(map(str, self.endpoints)))

    def _all(self) -> list[_Glue | _PortableGlue]:
        return [*self._glues, *self._pglues]

    @property
    def addresses(self) -> list[Address]:
        """The addresses of the open sockets (with the real port when 0 was asked).

        Empty once the server is closed.
        """
        return [g.sockname for g in self._all() if g.sockname is not None and not g.closed]

    @property
    def endpoints(self) -> list[Endpoint]:
        """The open sockets as endpoints (``str()`` gives ``udp://host:port``)."""
        return [_endpoint_of(a) for a in self.addresses]

    @property
    def port(self) -> int:
        """The port of the first bound socket (handy with port 0).

        Raises:
            RuntimeStateError: nothing is bound.
        """
        addresses = self.addresses
        if not addresses:
            raise RuntimeStateError("the datagram server has no bound socket")
        return int(addresses[0][1])

    def is_serving(self) -> bool:
        """True between :meth:`start` and the beginning of :meth:`aclose`."""
        glues = self._all()
        return self._started and bool(glues) and not any(g.closing for g in glues)

    def statistics(self) -> DatagramStatistics:
        """Counters summed over every socket of the server."""
        total = DatagramStatistics()
        for g in self._all():
            total = total + g.statistics()
        return total

    async def serve_forever(self) -> None:
        """Wait until the server is closed (by :meth:`aclose` or the runtime).

        Cancelling this closes the server.
        """
        if not self._started:
            await self.start()
        assert self._closed is not None
        try:
            await self._closed.wait()
        finally:
            if not self._closed.is_set():
                with anyio.CancelScope(shield=True):
                    await self.aclose()

    async def aclose(self) -> None:
        """Close gracefully: stop reading, finish queued async work within
        ``drain_timeout``, flush writes, close.  Idempotent; concurrent calls
        wait for the same close.  Cancelling it aborts the sockets.
        """
        if not self._started:
            self._started = True
            self._closed = anyio.Event()
            self._closed.set()
            return
        assert self._closed is not None
        if self._portable:
            if self._closing:
                await self._closed.wait()
            else:
                self._closing = True
                await self._shutdown(self._drain_timeout)
            await self._exit_task_group()
            return
        if self._closing_task is None:
            self._closing_task = asyncio.get_running_loop().create_task(
                self._shutdown(self._drain_timeout)
            )
        try:
            await asyncio.shield(self._closing_task)
        except asyncio.CancelledError:
            for g in self._glues:
                g.abort()
            raise

    async def _shutdown(self, drain_timeout: float | None) -> None:
        handle, self._runtime_handle = self._runtime_handle, None
        if handle is not None:
            handle.remove()
        try:
            if self._portable:
                await _close_portable(self._pglues, drain_timeout)
            else:
                await _close_glues(self._glues, drain_timeout)
        finally:
            if self._closed is not None:
                self._closed.set()

    async def _exit_task_group(self) -> None:
        # A task group must be left by the task that entered it (trio checks).
        tg = self._tg
        if tg is not None and anyio.get_current_task().id == self._tg_task:
            self._tg = None
            await tg.__aexit__(None, None, None)

    async def __aenter__(self) -> DatagramServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        where = " ".join(map(str, self.endpoints or self._endpoints))
        return f"<DatagramServer {where}>"


def serve_datagram(
    handler_factory: Callable[[], DatagramHandler],
    *endpoints: str | Endpoint,
    reuse_port: bool = False,
    allow_broadcast: bool = False,
    drain_timeout: float | None = 5.0,
    portable: bool | None = None,
) -> DatagramServer:
    """Serve UDP datagrams on ``endpoints`` with handlers from ``handler_factory``.

    Use the result as an async context manager::

        async with serve_datagram(EchoHandler, "udp://127.0.0.1:0") as server:
            print(server.endpoints)
            await server.serve_forever()

    Args:
        handler_factory: called once per bound socket (a class works).
        *endpoints: ``udp://host:port`` strings (or parsed ``Endpoint``
            objects); ``udp://[::1]:port`` for IPv6; a host name binds every
            address it resolves to (on one port); ``udp://0.0.0.0:port``
            serves every IPv4 interface.  The host is always explicit, so
            nothing is exposed beyond loopback by accident.
        reuse_port: set ``SO_REUSEPORT`` (several processes share a port).
        allow_broadcast: set ``SO_BROADCAST``.
        drain_timeout: how long a graceful close waits for queued async work
            and buffered writes (``None``: no limit).
        portable: run on anyio UDP sockets instead of the asyncio transports
            (default: only when the running backend is not asyncio, e.g. trio).

    Returns:
        The (not yet started) server; ``async with`` starts it.

    Raises:
        EndpointError: immediately, when there is no endpoint.
    """
    return DatagramServer(
        handler_factory,
        endpoints,
        reuse_port=reuse_port,
        allow_broadcast=allow_broadcast,
        drain_timeout=drain_timeout,
        portable=portable,
    )


# -- clients ----------------------------------------------------------------------


class _ReceiveQueue(DatagramHandler):
    """The handler behind ``DatagramEndpoint.receive()``: a bounded FIFO."""

    def __init__(self, maxsize: int) -> None:
        self.queue: deque[tuple[bytes, Address] | OSError] = deque()
        self.maxsize = maxsize
        self.dropped = 0
        self._event = anyio.Event()  # set when the queue gets something (or ends)
        self.ended = False

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if len(self.queue) >= self.maxsize:
            self.dropped += 1
            return
        self.queue.append((data, addr))
        self._event.set()

    def error_received(self, exc: OSError) -> None:
        if len(self.queue) < self.maxsize:
            self.queue.append(exc)
            self._event.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.ended = True
        self._event.set()

    async def get(self) -> tuple[bytes, Address]:
        while not self.queue:
            if self.ended:
                raise ClosedError("the datagram endpoint is closed")
            if self._event.is_set():
                self._event = anyio.Event()
            await self._event.wait()
        item = self.queue.popleft()
        if isinstance(item, OSError):
            raise item
        return item


class DatagramEndpoint:
    """A client UDP socket: send datagrams and receive answers.

    Create it with :func:`open_datagram_endpoint` and use it as an async
    context manager.  Without a handler factory, received datagrams (and OS
    errors such as ``ConnectionRefusedError``) queue up, bounded, for
    :meth:`receive` and ``async for``; with one, they go to the handler.

    Attributes:
        handler: the handler serving the socket.
    """

    def __init__(
        self,
        remote: str | Endpoint | None,
        handler_factory: Callable[[], DatagramHandler] | None,
        *,
        local: str | Endpoint | None,
        max_queued: int,
        reuse_port: bool,
        allow_broadcast: bool,
        portable: bool | None = None,
    ) -> None:
        if remote is None and local is None:
            raise EndpointError("open_datagram_endpoint needs a remote or a local endpoint")
        self._remote = remote
        self._local = local
        self._factory = handler_factory
        self._max_queued = max_queued
        self._reuse_port = reuse_port
        self._broadcast = allow_broadcast
        self._portable_opt = portable
        self._queue: _ReceiveQueue | None = None
        self._glue: _Glue | None = None
        self._pglue: _PortableGlue | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._tg_task: int | None = None
        self.handler: DatagramHandler | None = None

    async def start(self) -> None:
        """Create the socket (bind and connect as configured).

        Raises:
            EndpointError: an endpoint string cannot be understood.
            OSError: the socket could not be bound or connected.
            RuntimeStateError: already started.
        """
        if self.handler is not None:
            raise RuntimeStateError("this datagram endpoint was already started")
        remote_addr: Address | None = None
        local_addr: Address | None = None
        family = 0
        reuse, broadcast = self._reuse_port, self._broadcast
        if self._remote is not None:
            _ep, host, port = _parse_udp(self._remote)
            if port == 0:
                raise EndpointError(f"{self._remote!r}: a remote endpoint needs a real port")
            remote_addr = (host, port)
        if self._local is not None:
            _lep, lhost, lport = _parse_udp(self._local)
            local_addr = (lhost, lport)
            if _is_ip(lhost):
                family = socket.AF_INET6 if ":" in lhost else socket.AF_INET
        if self._factory is None:
            self._queue = _ReceiveQueue(self._max_queued)
            handler: DatagramHandler = self._queue
        else:
            made: object = self._factory()
            if not isinstance(made, DatagramHandler):
                raise TypeError(f"the handler factory returned {made!r}, not a DatagramHandler")
            handler = made
        self.handler = handler
        portable = not running_on_asyncio() if self._portable_opt is None else self._portable_opt
        if portable:
            await self._start_portable(handler, remote_addr, local_addr, family, reuse, broadcast)
            return
        loop = asyncio.get_running_loop()
        glue: _Glue | None = None

        def factory() -> _Glue:
            nonlocal glue
            glue = _Glue(handler)
            return glue

        kwargs: dict[str, Any] = {}
        if reuse:
            kwargs["reuse_port"] = True
        if broadcast:
            kwargs["allow_broadcast"] = True
        await loop.create_datagram_endpoint(
            factory, local_addr=local_addr, remote_addr=remote_addr, family=family, **kwargs
        )
        assert glue is not None
        self._glue = glue
        try:
            await glue.made
        except BaseException:
            glue.abort()
            raise

    async def _start_portable(
        self,
        handler: DatagramHandler,
        remote_addr: Address | None,
        local_addr: Address | None,
        family: int,
        reuse: bool,
        broadcast: bool,
    ) -> None:
        usock: Any
        if remote_addr is not None:
            infos = await anyio.getaddrinfo(
                remote_addr[0], remote_addr[1], family=family, type=socket.SOCK_DGRAM
            )
            fam, _type, _proto, _canon, sockaddr = infos[0]
            sock = socket.socket(fam, socket.SOCK_DGRAM)
            try:
                if reuse:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if broadcast:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                sock.setblocking(False)
                if local_addr is not None:
                    sock.bind(local_addr)
                sock.connect(sockaddr)  # UDP: no handshake, returns at once
                usock = await anyio.abc.ConnectedUDPSocket.from_socket(sock)
            except BaseException:
                sock.close()
                raise
        else:
            assert local_addr is not None
            lfam, laddr = (await _bind_addresses(local_addr[0], local_addr[1]))[0]
            sock = _make_socket(lfam, laddr, reuse_port=reuse, broadcast=broadcast)
            try:
                usock = await anyio.abc.UDPSocket.from_socket(sock)
            except BaseException:
                sock.close()
                raise
        try:
            pglue = _PortableGlue(handler, usock, sock, connected=remote_addr is not None)
            self._tg = anyio.create_task_group()
            await self._tg.__aenter__()
            self._tg_task = anyio.get_current_task().id
        except BaseException:
            with anyio.CancelScope(shield=True):
                await usock.aclose()
            raise
        self._pglue = pglue
        try:
            await self._tg.start(pglue.run)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.aclose()
            raise

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send a datagram to the remote endpoint (connected sockets only).

        Raises:
            LocalProtocolError: ``data`` exceeds ``max_datagram_size``.
            ClosedError: the endpoint is closed.
        """
        self._require().sendto(data, None)

    def sendto(self, data: bytes | bytearray | memoryview, addr: Address | None) -> None:
        """Send a datagram to ``addr`` (``None``: the remote endpoint).

        Raises:
            LocalProtocolError: ``data`` exceeds ``max_datagram_size``.
            ClosedError: the endpoint is closed.
        """
        self._require().sendto(data, addr)

    async def receive(self) -> tuple[bytes, Address]:
        """Wait for the next datagram.

        Returns:
            ``(data, sender_address)``.

        Raises:
            OSError: the OS reported an error for the socket (for example
                ``ConnectionRefusedError`` when nobody listens at the remote
                port); the endpoint stays usable.
            ClosedError: the endpoint is closed and nothing is left queued.
            RuntimeStateError: datagrams go to a handler, not to ``receive``.
        """
        if self._queue is None:
            if self.handler is None:
                raise RuntimeStateError("the datagram endpoint is not started")
            raise RuntimeStateError(
                "this endpoint delivers datagrams to its handler; "
                "open it without handler_factory to use receive()"
            )
        return await self._queue.get()

    def __aiter__(self) -> AsyncIterator[tuple[bytes, Address]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[tuple[bytes, Address]]:
        while True:
            try:
                yield await self.receive()
            except ClosedError:
                return

    async def drain(self) -> None:
        """Wait until the write buffer is below its low-water mark.

        Raises:
            ClosedError: the endpoint is closed.
        """
        await self._require().drain()

    @property
    def local_address(self) -> Address:
        """The local address the socket is bound to."""
        address = self._require().sockname
        assert address is not None
        return tuple(address)

    @property
    def remote_address(self) -> Address | None:
        """The connected remote address, or ``None``."""
        return self._require().peer

    @property
    def dropped(self) -> int:
        """Datagrams dropped because the receive queue was full."""
        return 0 if self._queue is None else self._queue.dropped

    def statistics(self) -> DatagramStatistics:
        """The socket's counters."""
        return self._require().statistics()

    def _require(self) -> DatagramHandler:
        if self.handler is None:
            raise RuntimeStateError("the datagram endpoint is not started")
        return self.handler

    async def aclose(self) -> None:
        """Flush buffered datagrams (briefly) and close.  Idempotent."""
        if self._glue is not None:
            await _close_glues([self._glue], 1.0)
        if self._pglue is not None:
            await _close_portable([self._pglue], 1.0)
        tg = self._tg
        if tg is not None and anyio.get_current_task().id == self._tg_task:
            self._tg = None
            await tg.__aexit__(None, None, None)

    async def __aenter__(self) -> DatagramEndpoint:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def open_datagram_endpoint(
    remote: str | Endpoint | None = None,
    handler_factory: Callable[[], DatagramHandler] | None = None,
    *,
    local: str | Endpoint | None = None,
    max_queued: int = 1024,
    reuse_port: bool = False,
    allow_broadcast: bool = False,
    portable: bool | None = None,
) -> DatagramEndpoint:
    """Open a client UDP socket, as an async context manager.

    ::

        async with open_datagram_endpoint("udp://127.0.0.1:7000") as ep:
            ep.send(b"ping")
            data, addr = await ep.receive()

    Args:
        remote: ``udp://host:port`` to connect the socket to (then
            :meth:`DatagramEndpoint.send` works and only that peer's datagrams
            are received).  ``None``: an unconnected socket, use ``sendto``.
        handler_factory: a :class:`DatagramHandler` factory; ``None`` queues
            received datagrams for :meth:`DatagramEndpoint.receive`.
        local: ``udp://host:port`` to bind to (default: any port on the
            address family of ``remote``).
        max_queued: bound of the receive queue (datagrams beyond it are
            dropped and counted in :attr:`DatagramEndpoint.dropped`).
        reuse_port: set ``SO_REUSEPORT`` on the socket.
        allow_broadcast: set ``SO_BROADCAST``.
        portable: use anyio UDP sockets instead of the asyncio transports
            (default: only when the running backend is not asyncio, e.g. trio).

    Returns:
        The (not yet started) endpoint; ``async with`` starts it.

    Raises:
        EndpointError: neither ``remote`` nor ``local`` was given.
    """
    return DatagramEndpoint(
        remote,
        handler_factory,
        local=local,
        max_queued=max_queued,
        reuse_port=reuse_port,
        allow_broadcast=allow_broadcast,
        portable=portable,
    )
