# Design: protocol handlers and the asyncio fast-path driver.
#
# This module owns the ``Handler`` base class that users subclass (Twisted's
# vocabulary: connection_made / frame_received / connection_lost), the ready-made
# handler classes built on the sans-IO framers of ``_framing``, and
# ``_ProtocolDriver``, the asyncio.Protocol that runs one handler per connection.
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
#
# The portable driver (anyio byte streams, any backend) lives in ``_portable`` and
# runs the same Handler classes.  ``_Connection`` is the base class of both
# drivers: the interface Handler calls, plus the state, counters and policy they
# share (handler errors, malformed input, framer switches, the async-handler
# queue, end of stream, statistics); each driver keeps only its I/O.  Rejected:
# moving the read loop itself into the base class behind per-driver hooks (one
# more call per read batch on the fast path, which stays inline here).

from __future__ import annotations

import asyncio
import collections
import contextvars
import inspect
import itertools
import logging
import socket
import ssl as _ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Self, cast

from .._core._state import connection_context
from ..errors import (
    BrokenError,
    ClosedError,
    FrameTooLarge,
    HandlerError,
    IncompleteFrame,
    LocalProtocolError,
    RemoteProtocolError,
)
from ._framing import (
    FixedSizeFramer,
    Framer,
    LengthPrefixFramer,
    NetstringFramer,
    RawFramer,
    TerminatorFramer,
)

__all__ = [
    "ConnectionStatistics",
    "FixedSizeHandler",
    "Handler",
    "LengthPrefixedHandler",
    "LineHandler",
    "NetstringHandler",
    "RawHandler",
    "connection_context",
    "current_connection_id",
]

logger = logging.getLogger("anycore.protocol")

# connection_context (in _state, the leaf the logging layer reads): the logging
# context of the connection whose handler is running, a dict with
# ``connection_id`` and ``peer``.  The drivers set it on every entry into
# handler code and in the context of each connection's task.

_connection_ids = itertools.count(1)


def current_connection_id() -> int | None:
    """The id of the connection whose handler code is running, or ``None``.

    Inside a handler's methods (and the tasks of an async handler) this is
    ``self.connection_id``; code the handler calls (a library, a log filter)
    can read it without being handed the handler.  Ids are unique within the
    process and start at 1.
    """
    ctx = connection_context.get()
    if ctx is None:
        return None
    cid = ctx.get("connection_id")
    return cid if isinstance(cid, int) else None


# The frame queue of connections whose handler is synchronous: always empty
# (only the async path appends), shared to save a deque per connection.
_NO_FRAMES: collections.deque[bytes] = collections.deque(maxlen=0)

# Back-pressure inside a read batch: the replies collected are measured every
# this many frames (a batch of up to this many runs as a bare loop).
_CHECK_EVERY = 16

_MaybeAwaitable = Awaitable[None] | None


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    """A snapshot of one connection's counters (``Handler.statistics()``).

    Attributes:
        connection_id: the process-unique id of the connection.
        bytes_in: bytes received.
        bytes_out: bytes handed to the transport.
        frames_in: frames delivered to the handler.
        reads: read batches received.
        writes: transport writes made (one per read batch at most for replies).
        queued_frames: frames parsed but not yet handled (async handlers).
        write_buffer_size: bytes waiting in the transport's write buffer.
        reading_paused: whether reading is paused by backpressure.
        writing_paused: whether the transport asked us to stop writing.
    """

    connection_id: int
    bytes_in: int
    bytes_out: int
    frames_in: int
    reads: int
    writes: int
    queued_frames: int
    write_buffer_size: int
    reading_paused: bool
    writing_paused: bool


def _forwards_to(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a ready-made ``frame_received`` as a plain forward to method ``name``.

    The drivers then call ``name`` directly (one call per frame, not two) unless
    a subclass overrides ``frame_received`` itself.
    """

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn._anycore_forwards_to = name  # type: ignore[attr-defined]
        return fn

    return mark


@dataclass(frozen=True, slots=True)
class _ClassInfo:
    frame_method: str
    frame_async: bool
    made_async: bool
    lost_async: bool


_class_info: dict[type, _ClassInfo] = {}


def _is_async(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn)


def class_info(cls: type[Handler]) -> _ClassInfo:
    """Which methods of a handler class are async (computed once per class)."""
    info = _class_info.get(cls)
    if info is None:
        target = getattr(cls.frame_received, "_anycore_forwards_to", None)
        name = target if isinstance(target, str) else "frame_received"
        info = _ClassInfo(
            frame_method=name,
            frame_async=_is_async(getattr(cls, name)),
            made_async=_is_async(cls.connection_made),
            lost_async=_is_async(cls.connection_lost),
        )
        _class_info[cls] = info
    return info


def _not_connected() -> ClosedError:
    return ClosedError("the handler is not connected")


def _not_bytes(what: str, data: object) -> HandlerError:
    hint = (
        "; for str lines use anycore.TextLineHandler (or encode them)"
        if isinstance(data, str)
        else ""
    )
    return HandlerError(f"{what} takes bytes, not {type(data).__name__}{hint}")


def check_handler_factory(factory: object, caller: str) -> None:
    """Refuse, before any socket is opened, a handler factory that cannot work.

    Args:
        factory: what was passed to ``serve()`` / ``connect()``.
        caller: the function's name, for the message.

    Raises:
        HandlerError: an instance instead of a class, a class that is not a
            Handler, something not callable, or a misconfigured class.
    """
    if isinstance(factory, Handler):
        name = type(factory).__name__
        raise HandlerError(
            f"{caller}() got a {name} instance; pass the class ({name}) or a function "
            "that returns a new handler: each connection needs its own"
        )
    if isinstance(factory, type):
        if not issubclass(factory, Handler):
            raise HandlerError(
                f"{caller}(): {factory.__qualname__} is not a Handler subclass; "
                "subclass anycore.Handler (or LineHandler, RawHandler, ...)"
            )
        check_handler_class(factory)
        return
    if not callable(factory):
        raise HandlerError(
            f"{caller}() needs a Handler subclass or a function returning a handler, "
            f"not {type(factory).__name__}"
        )


def check_handler_class(cls: type[Handler]) -> None:
    """Check a handler class's configuration attributes (see check_handler_factory)."""
    name = cls.__qualname__
    if issubclass(cls, LineHandler):
        delimiter: object = cls.delimiter
        if isinstance(delimiter, str):
            raise HandlerError(
                f"{name}.delimiter is a str ({delimiter!r}); LineHandler works on bytes: "
                f"write delimiter = {delimiter.encode()!r}, or subclass "
                "anycore.TextLineHandler for str lines"
            )
        if not isinstance(delimiter, bytes) or not delimiter:
            raise HandlerError(f"{name}.delimiter must be non-empty bytes, not {delimiter!r}")
    for attr in ("max_frame_size", "max_queued_frames", "write_high_water", "write_low_water"):
        value: object = getattr(cls, attr)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise HandlerError(f"{name}.{attr} must be a non-negative int, not {value!r}")


def checked_handler(handler: object, factory: object) -> Handler:
    """The factory's result, refused with a clear error when it is not a Handler."""
    if not isinstance(handler, Handler):
        raise HandlerError(
            f"the handler factory {getattr(factory, '__qualname__', factory)!r} returned "
            f"{type(handler).__name__}, not a Handler"
        )
    return handler


class Handler:
    """Base class of stream protocol handlers; subclass it.

    One handler instance serves one connection.  Override any of
    :meth:`connection_made`, :meth:`frame_received` and :meth:`connection_lost`,
    each either a plain method or ``async def``.  Plain methods run inline on
    the fast path; ``async def`` methods are awaited in order by one task per
    connection.  Frames are cut by the framer :meth:`make_framer` returns.

    Class attributes configure the connection:

    Attributes:
        max_frame_size: largest frame the framer accepts (``FrameTooLarge``).
        max_queued_frames: frames that may wait for an async handler before
            reading pauses.
        write_high_water: transport buffer size above which writing is paused
            (reading pauses and ``drain()`` waits).
        write_low_water: buffer size at which writing resumes.
        server: the :class:`~anycore.Server` that accepted the connection
            (``None`` on the client side).
    """

    max_frame_size: ClassVar[int] = 64 * 1024
    max_queued_frames: ClassVar[int] = 128
    write_high_water: ClassVar[int] = 64 * 1024
    write_low_water: ClassVar[int] = 16 * 1024

    _conn: _Connection | None = None
    server: Any = None

    # -- events (override) ---------------------------------------------------

    def connection_made(self) -> _MaybeAwaitable:
        """Called once when the connection is up (may be ``async def``)."""
        return None

    def frame_received(self, frame: bytes) -> _MaybeAwaitable:
        """Called once per frame, in order (may be ``async def``).

        Args:
            frame: one complete frame as the framer cut it.
        """
        return None

    def connection_lost(self, exc: BaseException | None) -> _MaybeAwaitable:
        """Called exactly once when the connection is gone (may be ``async def``).

        A running async frame handler has been cancelled before this is called.

        Args:
            exc: the error that ended the connection, or ``None`` on a clean close.
        """
        return None

    def writing_resumed(self) -> None:
        """Hook: output that reached ``write_high_water`` has drained.

        While the replies built in one read batch are at or above
        ``write_high_water``, :attr:`output_blocked` is true and the driver
        stops handing frames to the handler; the frames left wait in the
        framer.  Once the output has drained, the waiting frames are handled
        and then this hook is called (with sends coalesced as in a read batch).
        A handler that parses its own input (a :class:`RawHandler` running a
        protocol parser) stops parsing while :attr:`output_blocked` is true and
        continues here.  The default does nothing.
        """
        return

    def frame_too_large(self, exc: FrameTooLarge) -> None:
        """Hook: the peer sent a frame larger than ``max_frame_size``.

        The default logs the error and closes this connection only.  An override
        that does not close the connection gets a fresh framer from
        :meth:`make_framer` (the bytes buffered so far are dropped) and reading
        continues.

        Args:
            exc: the :class:`~anycore.FrameTooLarge` error.
        """
        limiter_of(self).log(
            logger,
            logging.ERROR,
            "frames too large",
            "connection %s: %s; closing it",
            self.connection_id,
            exc,
            extra={"anycore_connection": connection_context.get()},
        )
        self.close()

    def make_framer(self) -> Framer:
        """Return the framer for a new connection (ready-made classes configure it).

        The base class delivers every received chunk as one frame.
        """
        return RawFramer(max_chunk=self.max_frame_size)

    # -- actions -------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send raw bytes.

        Inside a read batch the bytes are buffered and written once at the end of
        the batch; outside one they are written at once.  Sending on a closed
        connection does nothing (the data is dropped).

        Args:
            data: the bytes to send.

        Raises:
            ClosedError: the handler was never connected.
        """
        conn = self._conn
        if conn is None:
            raise _not_connected()
        conn.send(data)

    def send_frame(self, payload: bytes) -> None:
        """Encode ``payload`` with the current framer and send it.

        Args:
            payload: the frame's contents.
        """
        conn = self._conn
        if conn is None:
            raise _not_connected()
        conn.send(conn.framer.encode(payload))

    async def drain(self) -> None:
        """Wait until the write buffer is below the low-water mark.

        Safe to await from any number of tasks at once.

        Raises:
            ClosedError: the connection is closed.
            BrokenError: the connection was lost with an error.
        """
        conn = self._conn
        if conn is None:
            raise _not_connected()
        await conn.drain()

    def set_framer(self, framer: Framer) -> None:
        """Switch to another framer; bytes not yet consumed move over to it.

        Args:
            framer: the new framer (the old one's leftovers are fed to it).
        """
        conn = self._conn
        if conn is None:
            raise _not_connected()
        conn.set_framer(framer)

    @property
    def framer(self) -> Framer:
        """The framer in use."""
        conn = self._conn
        if conn is None:
            raise _not_connected()
        return conn.framer

    def close(self) -> None:
        """Close the connection after the buffered data has been written."""
        conn = self._conn
        if conn is not None:
            conn.close()

    def abort(self) -> None:
        """Close the connection at once, dropping buffered data."""
        conn = self._conn
        if conn is not None:
            conn.abort()

    def is_closing(self) -> bool:
        """Whether the connection is closed or closing."""
        conn = self._conn
        return conn is None or conn.is_closing()

    @property
    def output_blocked(self) -> bool:
        """Whether the replies built in this read batch reached ``write_high_water``.

        Frame handling has then stopped for the batch and continues once the
        output has drained (see :meth:`writing_resumed`).  Always false on the
        portable driver and for async handlers (they ``await drain()``).
        """
        conn = self._conn
        return conn is not None and conn.is_held()

    async def wait_closed(self) -> None:
        """Wait until the connection is gone and ``connection_lost`` has run."""
        conn = self._conn
        if conn is None:
            raise _not_connected()
        await conn.wait_closed()

    async def aclose(self) -> None:
        """Close after the buffered data is written and wait until the connection
        is gone (``connection_lost`` has run).

        Idempotent; does nothing on a handler that was never connected.  If
        this is cancelled, the connection is aborted.
        """
        conn = self._conn
        if conn is None:
            return
        conn.close()
        try:
            await conn.wait_closed()
        except BaseException:
            conn.abort()
            raise

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start_tls(
        self,
        ssl_context: _ssl.SSLContext,
        *,
        server_side: bool | None = None,
        server_hostname: str | None = None,
        handshake_timeout: float | None = None,
    ) -> None:
        """Upgrade this plain connection to TLS (STARTTLS-style protocols).

        Call it from an async handler after the plain-text exchange that
        announces the upgrade; bytes already received in clear and not yet
        handled are discarded (they cannot be trusted).

        Args:
            ssl_context: the context for the TLS session.
            server_side: defaults to True on a server, False on a client.
            server_hostname: the name to check the peer's certificate against
                (client side).
            handshake_timeout: seconds for the handshake.

        Raises:
            ClosedError: the connection is closed.
            ssl.SSLError, TimeoutError: the handshake failed.
        """
        conn = self._conn
        if conn is None:
            raise _not_connected()
        await conn.start_tls(
            ssl_context,
            server_side=server_side,
            server_hostname=server_hostname,
            handshake_timeout=handshake_timeout,
        )

    # -- information ---------------------------------------------------------

    @property
    def connection_id(self) -> int:
        """The process-unique id of this connection (0 before it is made)."""
        conn = self._conn
        return 0 if conn is None else conn.connection_id

    @property
    def peer(self) -> Any:
        """The peer's address as the socket reports it (``peername``), or ``None``.

        A ``(host, port)`` tuple for IPv4, ``(host, port, flowinfo, scope_id)``
        for IPv6, a path string (often empty) for a unix socket.  Logs show it
        rendered as ``host:port``.
        """
        return self.get_extra_info("peername")

    @property
    def sockname(self) -> Any:
        """This side's address (``sockname``), or ``None``."""
        return self.get_extra_info("sockname")

    @property
    def transport(self) -> asyncio.BaseTransport | None:
        """The asyncio transport (``None`` on the portable path)."""
        conn = self._conn
        return None if conn is None else conn.transport

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Transport information such as ``peername``, ``socket``, ``ssl_object``.

        Args:
            name: the key, as for :meth:`asyncio.BaseTransport.get_extra_info`.
            default: returned when the key is unknown.
        """
        conn = self._conn
        return default if conn is None else conn.get_extra_info(name, default)

    def statistics(self) -> ConnectionStatistics:
        """Counters of this connection.

        Raises:
            ClosedError: the handler was never connected.
        """
        conn = self._conn
        if conn is None:
            raise _not_connected()
        return conn.statistics()


# -- ready-made handlers -------------------------------------------------------


class LineHandler(Handler):
    """Lines cut by ``delimiter`` (bytes); override :meth:`line_received`.

    Attributes:
        delimiter: the line terminator, removed from received lines and added
            by :meth:`send_line`.
        max_line_length: longest line accepted (without the delimiter).
    """

    delimiter: ClassVar[bytes] = b"\r\n"
    max_line_length: ClassVar[int] = 64 * 1024

    @_forwards_to("line_received")
    def frame_received(self, frame: bytes) -> _MaybeAwaitable:
        return self.line_received(frame)

    def line_received(self, line: bytes) -> _MaybeAwaitable:
        """Called once per line, without the delimiter (may be ``async def``).

        Args:
            line: the line.
        """
        return None

    def send_line(self, line: bytes) -> None:
        """Send ``line`` followed by the delimiter.

        Args:
            line: the line, without a delimiter.

        Raises:
            HandlerError: ``line`` is not bytes (for ``str`` lines use
                :class:`~anycore.TextLineHandler`).
        """
        try:
            data = line + self.delimiter
        except TypeError:
            raise _not_bytes("send_line()", line) from None
        self.send(data)

    def make_framer(self) -> Framer:
        return TerminatorFramer(self.delimiter, max_frame_size=self.max_line_length)


class LengthPrefixedHandler(Handler):
    """Frames preceded by their length as a :mod:`struct` integer.

    Attributes:
        prefix_format: the struct format of the length (``"!H"``, ``"!I"``, ``"!Q"``...).
    """

    prefix_format: ClassVar[str] = "!I"
    max_frame_size: ClassVar[int] = 1024 * 1024

    def make_framer(self) -> Framer:
        return LengthPrefixFramer(self.prefix_format, max_frame_size=self.max_frame_size)


class NetstringHandler(Handler):
    """Netstrings (``b"5:hello,"``); ``send_frame`` encodes one."""

    max_frame_size: ClassVar[int] = 1024 * 1024

    def make_framer(self) -> Framer:
        return NetstringFramer(max_frame_size=self.max_frame_size)


class FixedSizeHandler(Handler):
    """Records of exactly ``record_size`` bytes.

    Attributes:
        record_size: the size of every record.
    """

    record_size: ClassVar[int] = 512

    def make_framer(self) -> Framer:
        return FixedSizeFramer(self.record_size)


class RawHandler(Handler):
    """Every received chunk as it came; override :meth:`data_received`.

    Attributes:
        max_chunk: chunks larger than this are split.
    """

    max_chunk: ClassVar[int] = 256 * 1024

    @_forwards_to("data_received")
    def frame_received(self, frame: bytes) -> _MaybeAwaitable:
        return self.data_received(frame)

    def data_received(self, data: bytes) -> _MaybeAwaitable:
        """Called with each received chunk (may be ``async def``).

        Args:
            data: the bytes received.
        """
        return None

    def make_framer(self) -> Framer:
        return RawFramer(max_chunk=self.max_chunk)


# -- the asyncio driver ----------------------------------------------------------


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


def peer_string(peer: Any) -> str:
    """Render a peername for logs: ``host:port``, ``[v6]:port`` or a path."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    if peer in (None, "", b""):
        return "unix"
    return str(peer)


class LogLimiter:
    """Rate-limits repeated per-connection log records, by category.

    In each ``interval`` the first ``burst`` records of a category are logged;
    the rest are counted, and one record at the end of the interval says
    ``... and K more <category> in the last 10 s``.  A flood of bad connections
    then costs a bounded number of lines, and nothing is silently lost.  The
    categories are a fixed set (the drivers' and the server's own), so the
    bookkeeping is bounded too.

    Args:
        burst: records logged per category and interval.
        interval: seconds.
        clock: monotonic time.
    """

    def __init__(
        self, burst: int = 10, interval: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = burst
        self.interval = interval
        self.clock = clock
        # category -> [window start, records in the window, level, logger]
        self._windows: dict[str, list[Any]] = {}

    def log(
        self,
        log: logging.Logger,
        level: int,
        category: str,
        msg: str,
        *args: object,
        **kwargs: Any,
    ) -> None:
        """Log ``msg % args`` unless ``category`` is over its burst this interval."""
        now = self.clock()
        window = self._windows.get(category)
        if window is not None and now - window[0] >= self.interval:
            self._summarise(category)
            window = None
        if window is None:
            window = self._windows[category] = [now, 0, level, log]
        window[1] += 1
        if window[1] <= self.burst:
            log.log(level, msg, *args, **kwargs)
        elif window[1] == self.burst + 1:
            self._schedule(category, window[0] + self.interval - now)

    def _schedule(self, category: str, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not on asyncio: summarised by the next record of the category
        loop.call_later(max(0.0, delay), self._summarise, category)

    def _summarise(self, category: str) -> None:
        window = self._windows.pop(category, None)
        if window is None:
            return
        start, count, level, log = window
        extra = count - self.burst
        if extra > 0:
            log.log(
                level,
                "... and %d more %s in the last %.0f s",
                extra,
                category,
                max(self.clock() - start, 0.0),
            )


#: The limiter of per-connection warnings and errors outside a server (client
#: connections); each Server has its own (``Server.log_limiter``).
log_limiter = LogLimiter()


def limiter_of(handler: Handler) -> LogLimiter:
    """The log limiter for ``handler``'s connection: its server's, else the default."""
    limiter = getattr(handler.server, "log_limiter", None)
    return limiter if isinstance(limiter, LogLimiter) else log_limiter


def log_handler_error(
    what: str, exc: BaseException, conn_id: int, limiter: LogLimiter | None = None
) -> None:
    (limiter or log_limiter).log(
        logger,
        logging.ERROR,
        "handler errors",
        "connection %s: %s raised %s: %s; closing the connection",
        conn_id,
        what,
        type(exc).__name__,
        exc,
        exc_info=exc,
        extra={"anycore_connection": connection_context.get()},
    )


def requeue(old: Framer, new: Framer, queued: collections.deque[bytes]) -> None:
    """Move queued (parsed, unhandled) frames and leftovers from ``old`` to ``new``."""
    parts = [old.encode(frame) for frame in queued]
    queued.clear()
    parts.append(old.take_buffer())
    data = b"".join(parts)
    if data:
        new.feed(data)


class _Connection:
    """What a Handler needs from the driver that runs it, and what both drivers share.

    The two drivers (``_ProtocolDriver`` here, ``_StreamDriver`` in ``_portable``)
    differ in I/O only; the connection state, the counters and the policy for
    handler errors, malformed input, framer switches and end of stream live here
    once.  Nothing here runs per frame on the asyncio fast path: the drivers'
    read loops stay inline and call into this class only on errors, framer
    switches, end of stream and the async-handler queue.
    """

    # Slots: thousands of idle connections should cost little memory (the
    # portable driver adds a __dict__; it holds a task group per connection anyway).
    __slots__ = (
        "__weakref__",
        "_cb",
        "_closing",
        "_draining",
        "_eof",
        "_in_batch",
        "_info",
        "_last_activity",
        "_lost",
        "_lost_exc",
        "_out",
        "_pending_exc",
        "_queue",
        "bytes_in",
        "bytes_out",
        "connection_id",
        "framer",
        "frames_in",
        "handler",
        "idle_timeout",
        "log_context",
        "reads",
        "write_buffer_limit",
        "writes",
    )

    connection_id: int
    framer: Framer
    log_context: dict[str, object]

    def _setup(
        self,
        handler: Handler,
        peer: str,
        queue: collections.deque[bytes],
        idle_timeout: float | None,
        write_buffer_limit: int | None,
    ) -> None:
        """Initialise the state both drivers keep; binds ``handler`` to this driver."""
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.write_buffer_limit = write_buffer_limit
        self.connection_id = next(_connection_ids)
        self.log_context = {"connection_id": self.connection_id, "peer": peer}
        self._out: list[bytes] = []
        self._in_batch = False
        self._closing = False  # close()/abort() asked, or the connection is gone
        self._draining = False  # the server is shutting down gracefully
        self._lost = False
        self._lost_exc: BaseException | None = None
        self._eof = False
        self._queue = queue  # frames parsed, not yet handled (async handlers)
        self._pending_exc: RemoteProtocolError | None = None
        self._last_activity = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.frames_in = 0
        self.reads = 0
        self.writes = 0
        info = class_info(type(handler))
        self._info = info
        self._cb: Callable[[bytes], Any] = getattr(handler, info.frame_method)
        self.framer = handler.make_framer()
        handler._conn = self

    # -- the interface Handler calls -------------------------------------------

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    async def drain(self) -> None:
        raise NotImplementedError

    def set_framer(self, framer: Framer) -> None:
        old = self.framer
        if old is not framer:
            self._hand_over(old, framer)
            self.framer = framer

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def is_closing(self) -> bool:
        return self._closing

    def is_held(self) -> bool:
        """Whether frame handling waits for the output to drain (asyncio driver)."""
        return False

    async def wait_closed(self) -> None:
        raise NotImplementedError

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        raise NotImplementedError

    async def start_tls(
        self,
        ssl_context: _ssl.SSLContext,
        *,
        server_side: bool | None = None,
        server_hostname: str | None = None,
        handshake_timeout: float | None = None,
    ) -> None:
        # The portable driver's answer (its reader owns the stream while it waits
        # in receive()); the asyncio driver overrides it.
        raise LocalProtocolError(
            "start_tls is not available on the portable driver; use a tls:// endpoint"
        )

    def statistics(self) -> ConnectionStatistics:
        write_buffer_size, reading_paused, writing_paused = self._write_state()
        return ConnectionStatistics(
            connection_id=self.connection_id,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            frames_in=self.frames_in,
            reads=self.reads,
            writes=self.writes,
            queued_frames=len(self._queue),
            write_buffer_size=write_buffer_size,
            reading_paused=reading_paused,
            writing_paused=writing_paused,
        )

    @property
    def transport(self) -> asyncio.BaseTransport | None:
        return None

    # -- what each driver provides -------------------------------------------------

    def _flush(self) -> None:
        """Push the buffered replies (``_out``, not empty) towards the peer."""
        raise NotImplementedError

    def _fail(self) -> None:
        """Count a handler failure or malformed input with the owner."""
        raise NotImplementedError

    def _write_state(self) -> tuple[int, bool, bool]:
        """(write buffer size, reading paused, writing paused) for statistics()."""
        raise NotImplementedError

    # -- shared policy -------------------------------------------------------------

    def _raise_closed(self) -> None:
        exc = self._lost_exc
        if exc is not None:
            raise BrokenError(f"connection lost: {exc}") from exc
        raise ClosedError("the connection is closed")

    def _hand_over(self, old: Framer, new: Framer) -> None:
        """Move the frames queued for an async handler and ``old``'s unconsumed
        bytes into ``new`` (a framer switch)."""
        if self._queue:
            requeue(old, new, self._queue)
        else:
            leftover = old.take_buffer()
            if leftover:
                new.feed(leftover)

    def _handler_error(self, what: str, exc: BaseException) -> None:
        log_handler_error(what, exc, self.connection_id, limiter_of(self.handler))
        self._fail()
        self.close()

    def _protocol_error(self, exc: RemoteProtocolError) -> None:
        self._fail()
        if isinstance(exc, FrameTooLarge):
            try:
                self.handler.frame_too_large(exc)
            except Exception as hook_exc:
                self._handler_error("frame_too_large", hook_exc)
                return
            if not self._closing:
                # The hook kept the connection: a failed framer stays failed, so
                # continue with a fresh one (the oversized frame's bytes are gone).
                self._queue.clear()
                self.framer = self.handler.make_framer()
            return
        if isinstance(exc, IncompleteFrame):
            limiter_of(self.handler).log(
                logger,
                logging.WARNING,
                "streams that ended inside a frame",
                "connection %s: peer closed the stream inside a frame (%d bytes pending)",
                self.connection_id,
                len(exc.data),
                extra={"anycore_connection": self.log_context},
            )
        else:
            limiter_of(self.handler).log(
                logger,
                logging.ERROR,
                "connections with malformed input",
                "connection %s: malformed input from the peer: %s; closing it",
                self.connection_id,
                exc,
                extra={"anycore_connection": self.log_context},
            )
        self.close()

    def _write_limit_exceeded(self, limit: int) -> None:
        limiter_of(self.handler).log(
            logger,
            logging.WARNING,
            "connections over their write buffer limit",
            "connection %s: write buffer above its limit of %d bytes (the peer is "
            "not reading); aborting the connection",
            self.connection_id,
            limit,
            extra={"anycore_connection": self.log_context},
        )
        self._fail()
        self.abort()

    def _cut_slow(self, why: str) -> None:
        limiter_of(self.handler).log(
            logger,
            logging.INFO,
            "slow connections closed",
            "connection %s: %s; closing it",
            self.connection_id,
            why,
            extra={"anycore_connection": self.log_context},
        )
        self._fail()
        self.abort()

    def _close_idle(self, seconds: float) -> None:
        logger.info(
            "connection %s: idle for %.1f s; closing it",
            self.connection_id,
            seconds,
            extra={"anycore_connection": self.log_context},
        )
        if self._write_state()[0]:
            # Unsent data after the whole idle time: the peer is not reading,
            # and a graceful close would wait for it for ever.
            self.abort()
        else:
            self.close()

    def _queue_frames(self, data: bytes) -> None:
        """Async handlers: parse ``data`` into the frame queue (a parse error is
        kept in ``_pending_exc`` until the frames before it are handled)."""
        framer = self.framer
        queue = self._queue
        try:
            framer.feed(data)
            queue.extend(framer.next_frames())
            while True:
                frame = framer.next_frame()
                if frame is None:
                    break
                queue.append(frame)
        except RemoteProtocolError as exc:
            self._pending_exc = exc

    def _reparse(self) -> bool:
        """Parse frames left in the (possibly new) framer; True when some were found."""
        found = False
        try:
            while True:
                frame = self.framer.next_frame()
                if frame is None:
                    break
                self._queue.append(frame)
                found = True
        except RemoteProtocolError as exc:
            self._pending_exc = exc
        return found

    def _refill(self) -> bool:
        """Async handlers, the queue just ran empty: queue the frames the framer
        still holds (a framer switch may have left complete ones), else act on a
        parse error kept until the frames before it were handled.  True when
        there is more to do."""
        if self._reparse():
            return True
        exc = self._pending_exc
        if exc is not None:
            self._pending_exc = None
            self._protocol_error(exc)
            return True
        return False

    def _deliver(self, data: bytes | None) -> None:
        """Sync handlers, frame by frame: a read batch, or (``None``) the end of
        the stream and the final frames it allows.  Replies leave once at the end.

        The asyncio driver's read batches do not come here: they take the inline
        path in ``data_received``.
        """
        self._in_batch = True
        cb = self._cb
        n = 0
        try:
            if data is None:
                self.framer.feed_eof()
            else:
                self.framer.feed(data)
            while not self._closing:
                frame = self.framer.next_frame()
                if frame is None:
                    break
                n += 1
                cb(frame)
        except RemoteProtocolError as exc:
            self._protocol_error(exc)
        except Exception as exc:
            self._handler_error("frame handler", exc)
        finally:
            self._in_batch = False
            self.frames_in += n
            if self._out:
                self._flush()


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


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    """What the server's per-connection guard enforces (see ``serve()``).

    Attributes:
        frame_deadline: seconds one frame may take from its first byte.
        min_receive_rate: bytes/s a frame in progress must arrive at, measured
            over ``rate_window``.
        rate_window: seconds over which the receive rate is measured.
        period: seconds between checks.
    """

    frame_deadline: float | None = None
    min_receive_rate: float | None = None
    rate_window: float = 5.0
    period: float = 1.0

    @classmethod
    def build(
        cls,
        frame_deadline: float | None,
        min_receive_rate: float | None,
        rate_window: float,
    ) -> GuardPolicy:
        steps = [1.0, rate_window / 4]
        if frame_deadline is not None:
            steps.append(frame_deadline / 4)
        return cls(frame_deadline, min_receive_rate, rate_window, max(0.01, min(steps)))


class _Guard:
    """Per-connection slowloris guard, checked by the server's sweep every
    ``policy.period`` (one timer per server, nothing per read): it looks at
    the framer and the counters.

    A frame is in progress while the framer holds a partial frame and reading
    is not paused by us.  It must complete within ``frame_deadline`` and, per
    ``rate_window``, arrive at ``min_receive_rate``.  The guard also tracks
    since when the connection has been quiet (no read), for shedding.
    """

    __slots__ = (
        "_conn",
        "_frames",
        "_partial_since",
        "_policy",
        "_quiet_since",
        "_rate_bytes",
        "_rate_since",
        "_reads",
    )

    def __init__(self, conn: _ProtocolDriver, policy: GuardPolicy) -> None:
        self._conn = conn
        self._policy = policy
        self._reads = 0
        self._quiet_since = 0.0
        self._partial_since: float | None = None
        self._frames = 0
        self._rate_since = 0.0
        self._rate_bytes = 0

    def start(self) -> None:
        self._quiet_since = self._conn.loop.time()

    def _in_frame(self) -> bool:
        conn = self._conn
        if conn._reading_paused or conn._closing:
            return False
        task = conn._task
        if task is not None and not task.done() and conn._waiter is None:
            return False  # an async handler is busy: the peer is waiting on us
        return conn.framer.buffered > 0

    def quiet_or_slow_since(self, now: float) -> float | None:
        if self._partial_since is not None and self._in_frame():
            return self._partial_since
        conn = self._conn
        task = conn._task
        if (task is not None and not task.done() and conn._waiter is None) or conn._out:
            return None
        if conn.reads != self._reads:
            return None  # read since the last check: not quiet
        return self._quiet_since

    def check(self, now: float) -> None:
        """One look (the server's sweep): cut a frame over its deadline or
        below the receive rate; note since when the connection is quiet."""
        conn = self._conn
        if conn._closing:
            return
        policy = self._policy
        if conn.reads != self._reads:
            self._reads = conn.reads
            self._quiet_since = now
        if self._in_frame():
            if self._partial_since is None or conn.frames_in != self._frames:
                # A frame began (or the previous one completed and another began).
                self._partial_since = self._rate_since = now
                self._frames = conn.frames_in
                self._rate_bytes = conn.bytes_in
            else:
                elapsed = now - self._partial_since
                deadline = policy.frame_deadline
                if deadline is not None and elapsed >= deadline:
                    conn._cut_slow(f"one frame took more than {deadline:g} s (frame_deadline)")
                    return
                rate = policy.min_receive_rate
                window = now - self._rate_since
                if rate is not None and window >= policy.rate_window:
                    got = (conn.bytes_in - self._rate_bytes) / window
                    if got < rate:
                        conn._cut_slow(
                            f"receiving {got:.0f} B/s inside a frame, below "
                            f"min_receive_rate={rate:g}"
                        )
                        return
                    self._rate_since = now
                    self._rate_bytes = conn.bytes_in
        else:
            self._partial_since = None


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
