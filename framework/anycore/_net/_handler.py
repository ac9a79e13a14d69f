# Design: the handler API - the class users subclass, and the ready-made handlers.
#
# This module owns ``Handler`` (Twisted's vocabulary: connection_made /
# frame_received / connection_lost, each a plain method or ``async def``), the
# ready-made handler classes built on the sans-IO framers of ``_framing``
# (LineHandler, LengthPrefixedHandler, NetstringHandler, FixedSizeHandler,
# RawHandler), the checks serve() and connect() run on a handler factory
# before any socket is opened, and ``class_info``: which methods of a handler
# class are async, computed once per class, so a driver picks the inline path
# or the task path without inspecting anything per frame.
#
# A Handler knows its connection only through ``_ConnectionPort``, the
# interface both drivers implement (``_connection_base._Connection``): this
# module imports no driver, so drivers, servers and clients depend on it and
# never the other way round.  The actions are thin forwards (``send`` is one
# attribute read and one call; the asyncio driver replaces it with the reply
# list's ``append`` for the duration of a read batch, see ``_asyncio_driver``).
#
# The layers above, bottom up: ``_loglimit`` (rate-limited per-connection log
# records), ``_connection_base`` (the state and policy both drivers share),
# ``_guard`` (the server's slowloris guard), ``_asyncio_driver`` and
# ``_anyio_driver`` (the two drivers), ``_accept`` and ``_accept_anyio`` (the
# accept side of a server on each), ``_server`` and ``_client``.
#
# Rejected: a ``frame_received`` that forwards to ``line_received`` (or
# ``data_received``) as a second call per frame: the ready-made classes mark
# the forward with ``_forwards_to`` and the drivers call the target directly.

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl as _ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self

from .._core._state import connection_context
from ..errors import ClosedError, FrameTooLarge, HandlerError
from ._framing import (
    FixedSizeFramer,
    Framer,
    LengthPrefixFramer,
    NetstringFramer,
    RawFramer,
    TerminatorFramer,
)
from ._loglimit import limiter_of

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


class _ConnectionPort(Protocol):
    """What a Handler calls on the driver that runs it (``_Connection`` implements it)."""

    @property
    def connection_id(self) -> int: ...

    @property
    def framer(self) -> Framer: ...

    @property
    def transport(self) -> asyncio.BaseTransport | None: ...

    def send(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def set_framer(self, framer: Framer) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def is_closing(self) -> bool: ...

    def is_held(self) -> bool: ...

    async def wait_closed(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...

    async def start_tls(
        self,
        ssl_context: _ssl.SSLContext,
        *,
        server_side: bool | None = None,
        server_hostname: str | None = None,
        handshake_timeout: float | None = None,
    ) -> None: ...

    def statistics(self) -> ConnectionStatistics: ...


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

    _conn: _ConnectionPort | None = None
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
