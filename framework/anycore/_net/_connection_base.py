# Design: the connection base both stream drivers share.
#
# ``_Connection`` is the base class of the asyncio driver (``_asyncio_driver``)
# and the anyio driver (``_anyio_driver``): the interface a Handler calls
# (``_handler._ConnectionPort``), plus the state, counters and policy the two
# share - handler errors, malformed input and oversized frames, the write
# buffer limit, slow and idle connections, framer switches (``requeue``), the
# async-handler frame queue, end of stream, statistics.  Each driver keeps
# only its I/O.  Nothing here runs per frame on the asyncio fast path: the
# drivers' read loops stay inline and call into this class only on errors,
# framer switches, end of stream and the async-handler queue.
#
# Rejected: moving the read loop itself into the base class behind
# per-driver hooks (one more call per read batch on the fast path, which
# stays inline in the asyncio driver).

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import ssl as _ssl
from collections.abc import Callable
from typing import Any

from .._core._state import connection_context
from ..errors import (
    BrokenError,
    ClosedError,
    FrameTooLarge,
    IncompleteFrame,
    LocalProtocolError,
    RemoteProtocolError,
)
from ._framing import Framer
from ._handler import ConnectionStatistics, Handler, class_info
from ._loglimit import LogLimiter, limiter_of, log_limiter

__all__ = ["log_handler_error", "peer_string", "requeue"]

logger = logging.getLogger("anycore.protocol")

_connection_ids = itertools.count(1)


def peer_string(peer: Any) -> str:
    """Render a peername for logs: ``host:port``, ``[v6]:port`` or a path."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    if peer in (None, "", b""):
        return "unix"
    return str(peer)


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

    The two drivers (``_ProtocolDriver`` in ``_asyncio_driver``, ``_StreamDriver``
    in ``_anyio_driver``) differ in I/O only; the connection state, the counters
    and the policy for handler errors, malformed input, framer switches and end
    of stream live here once.  Nothing here runs per frame on the asyncio fast path: the drivers'
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
