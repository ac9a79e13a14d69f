# Design: the portable driver - the same Handler classes over anyio byte streams.
#
# This module owns ``_StreamDriver`` (one connection on an anyio ByteStream, on
# any backend anyio supports: trio, asyncio), ``PortableEngine`` (what a Server
# runs when the backend is not asyncio or ``portable=True``) and
# ``connect_portable``.  The per-frame work is the same as on the fast path
# (framer.feed, next_frame loop, one handler call per frame, replies joined per
# batch); what differs is I/O: a reader loop awaits ``stream.receive()`` and a
# writer task sends the joined replies, because anyio streams have no
# synchronous write.  So ``send()`` outside a read batch hands its bytes to the
# writer task rather than writing them before returning.
#
# Backpressure: the reader does not receive while unsent bytes are above the
# handler's high-water mark, nor while more than ``max_queued_frames`` frames
# wait for an async handler.  Lifetimes are structured: each connection runs in
# a task group; cancelling it cancels the handler, then connection_lost runs.
# The engine's task group (accept loops and connections) lives in a task of
# its own (a BackgroundJob) from start() to aclose(), never in the caller's
# task: a scope entered by ``start()`` and left by ``aclose()`` in whichever
# task calls it breaks trio's cancel-scope stack (issue 11).
#
# Rejected: memory object streams between reader and handler task (frames in a
# stream cannot be re-cut when the handler switches framers; a deque can).
# Not supported here: ``start_tls`` (the reader owns the stream while it waits
# in receive(); use a tls:// endpoint instead).

from __future__ import annotations

import collections
import errno
import inspect
import logging
import math
import ssl as _ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

from .._core._backend import BackgroundJob, current_backend
from ..errors import (
    ConnectError,
    RemoteProtocolError,
)
from ._endpoints import Endpoint
from ._handler import (
    Handler,
    _Connection,
    connection_context,
    log_handler_error,
    peer_string,
)

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["PortableEngine", "connect_portable", "run_handler"]

H = TypeVar("H", bound=Handler)

_server_logger = logging.getLogger("anycore.server")
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
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


_ListenerEntry = tuple[anyio.abc.SocketListener, Endpoint, _ssl.SSLContext | None]


class PortableEngine:
    """The accept side of a :class:`~anycore.Server` on anyio listeners."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.endpoints: list[Endpoint] = []
        self.accepting = False
        self._listeners: list[
            tuple[anyio.abc.SocketListener, Endpoint, _ssl.SSLContext | None]
        ] = []
        self._drivers: dict[_StreamDriver, None] = {}
        self._pending = 0
        self._tg: anyio.abc.TaskGroup | None = None
        self._accept_scopes: list[anyio.CancelScope] = []
        self._slot_freed = anyio.Event()
        self._closed = anyio.Event()
        self._idle = anyio.Event()
        self._stop = anyio.Event()
        self._host: BackgroundJob | None = None

    async def start(self) -> None:
        srv = self.server
        try:
            for ep in srv.requested_endpoints:
                ctx = srv.ssl_for(ep)
                if ep.scheme == "unix":
                    listener = await anyio.create_unix_listener(ep.path or "", backlog=srv.backlog)
                    self._listeners.append((listener, ep, ctx))
                    self.endpoints.append(ep)
                    continue
                multi = await anyio.create_tcp_listener(
                    local_host=ep.host,
                    local_port=ep.port or 0,
                    reuse_port=srv.reuse_port,
                    backlog=srv.backlog,
                )
                for sub in multi.listeners:
                    assert isinstance(sub, anyio.abc.SocketListener)
                    addr: Any = sub.extra(anyio.abc.SocketAttribute.local_address)
                    host, port = addr[0], addr[1]
                    bound = Endpoint(ep.scheme, host=host, port=port, options=ep.options)
                    self._listeners.append((sub, bound, ctx))
                    self.endpoints.append(bound)
        except BaseException:
            for listener, _ep, _ctx in self._listeners:
                await listener.aclose()
            raise
        self.accepting = True
        self._host = BackgroundJob(self._run_host, name="anycore-portable-server")

    async def _run_host(self) -> None:
        """The engine's own task: its task group is entered and left here."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for listener, ep, ctx in self._listeners:
                    tg.start_soon(self._accept_loop, listener, ep, ctx)
                await self._stop.wait()
                tg.cancel_scope.cancel()  # aclose() drained or aborted the connections
        finally:
            self._tg = None
            self.stop_accepting()

    async def _accept_loop(
        self, listener: anyio.abc.SocketListener, ep: Endpoint, ctx: _ssl.SSLContext | None
    ) -> None:
        srv = self.server
        backoff = 0.0
        scope = anyio.CancelScope()
        self._accept_scopes.append(scope)
        if not self.accepting:
            scope.cancel()
        with scope:
            while True:
                limit = srv.max_connections
                while limit is not None and srv.on_limit == "hold" and self._live() >= limit:
                    # Several loops (and aclose calls) may wait on one event:
                    # replace it only once it has fired, never under a waiter.
                    if self._slot_freed.is_set():
                        self._slot_freed = anyio.Event()
                    await self._slot_freed.wait()
                try:
                    stream = await listener.accept()
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return  # the listener was closed: stop accepting
                except OSError as exc:
                    srv.counters.accept_errors += 1
                    if exc.errno in _RESOURCE_ERRNOS:
                        backoff = min(1.0, max(0.01, backoff * 2))
                        _server_logger.warning(
                            "accept() on %s failed: %s; retrying in %.2f s", ep, exc, backoff
                        )
                        await anyio.sleep(backoff)
                        continue
                    raise
                backoff = 0.0
                if limit is not None and self._live() >= limit:
                    srv.counters.refused += 1
                    _server_logger.warning(
                        "refusing a connection on %s: max_connections=%d reached", ep, limit
                    )
                    await anyio.aclose_forcefully(stream)
                    continue
                assert self._tg is not None
                self._pending += 1
                self._tg.start_soon(self._handle, stream, ep, ctx)

    def _live(self) -> int:
        return len(self._drivers) + self._pending

    async def _handle(
        self, stream: anyio.abc.ByteStream, ep: Endpoint, ctx: _ssl.SSLContext | None
    ) -> None:
        srv = self.server
        driver: _StreamDriver | None = None
        try:
            if ctx is not None:
                try:
                    with anyio.fail_after(srv.handshake_timeout):
                        stream = await TLSStream.wrap(
                            stream, server_side=True, ssl_context=ctx, standard_compatible=False
                        )
                except Exception as exc:
                    srv.counters.errors += 1
                    _server_logger.warning(
                        "connection on %s failed during the TLS handshake: %s: %s",
                        ep,
                        type(exc).__name__,
                        exc,
                    )
                    await anyio.aclose_forcefully(stream)
                    return
            handler = srv.handler_factory()
            handler.server = srv
            driver = _StreamDriver(
                handler,
                stream,
                idle_timeout=srv.idle_timeout,
                write_buffer_limit=srv.write_buffer_limit,
                on_error=srv.handler_failed,
            )
            self._drivers[driver] = None
            srv.counters.total_connections += 1
            self._pending -= 1
            await driver.run()
        finally:
            if driver is None:
                self._pending -= 1
            else:
                self._drivers.pop(driver, None)
                c = srv.counters
                c.bytes_in += driver.bytes_in
                c.bytes_out += driver.bytes_out
                c.frames += driver.frames_in
            self._slot_freed.set()
            if not self._drivers and not self._pending:
                self._idle.set()

    def stop_accepting(self) -> None:
        self.accepting = False
        for scope in self._accept_scopes:
            scope.cancel()
        self._closed.set()

    async def serve_forever(self) -> None:
        try:
            await self._closed.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await self.server.aclose()

    async def aclose(self, timeout: float) -> None:
        host = self._host
        if host is None:
            return
        self.stop_accepting()
        try:
            for listener, _ep, _ctx in self._listeners:
                await listener.aclose()
            self._listeners.clear()
            for driver in list(self._drivers):
                driver.begin_graceful_close()
            with anyio.move_on_after(timeout):
                while self._drivers or self._pending:
                    if self._idle.is_set():
                        self._idle = anyio.Event()
                    await self._idle.wait()
        finally:
            if self._drivers:
                _server_logger.warning(
                    "aborting %d connection(s) still open after the drain deadline",
                    len(self._drivers),
                )
                for driver in list(self._drivers):
                    driver.abort()
            # The host task ends the task group; wait for it (connection_lost
            # callbacks included), even when this aclose() is being cancelled.
            self._stop.set()
            with anyio.CancelScope(shield=True):
                await host.wait()

    def handlers(self) -> list[Handler]:
        return [d.handler for d in self._drivers]

    def live_counts(self) -> list[tuple[int, int, int]]:
        return [(d.bytes_in, d.bytes_out, d.frames_in) for d in self._drivers]


async def connect_portable(
    ep: Endpoint,
    handler_factory: Callable[[], H],
    *,
    timeout: float | None,
    retries: int,
    backoff: float,
    max_backoff: float,
    ssl: _ssl.SSLContext | None,
    server_hostname: str | None,
    happy_eyeballs_delay: float,
) -> H:
    """``connect()`` on the portable driver; the connection runs as a system task."""
    from ._client import client_ssl_context, retry_delay

    ctx = client_ssl_context(ep, ssl)
    last: BaseException | None = None
    stream: anyio.abc.ByteStream | None = None
    for attempt in range(retries + 1):
        if attempt:
            await anyio.sleep(retry_delay(attempt, backoff, max_backoff))
        try:
            with anyio.fail_after(math.inf if timeout is None else timeout):
                if ep.scheme == "unix":
                    stream = await anyio.connect_unix(ep.path or "")
                    if ctx is not None:
                        stream = await TLSStream.wrap(
                            stream,
                            ssl_context=ctx,
                            hostname=server_hostname or ep.option("hostname"),
                            standard_compatible=False,
                        )
                else:
                    stream = await anyio.connect_tcp(
                        ep.host or "", ep.port or 0, happy_eyeballs_delay=happy_eyeballs_delay
                    )
                    if ctx is not None:
                        stream = await TLSStream.wrap(
                            stream,
                            ssl_context=ctx,
                            hostname=server_hostname or ep.option("hostname") or ep.host,
                            standard_compatible=False,
                        )
            break
        except _ssl.SSLCertVerificationError as exc:
            raise ConnectError(f"cannot connect to {ep}: {exc}") from exc
        except (OSError, TimeoutError, anyio.BrokenResourceError) as exc:
            last = exc
    if stream is None:
        raise ConnectError(
            f"cannot connect to {ep} after {retries + 1} attempt(s): {last}"
        ) from last
    handler = handler_factory()
    driver = _StreamDriver(handler, stream)
    _spawn_system(driver.run)
    await driver._made.wait()
    return handler


_background: set[Any] = set()


def _spawn_system(fn: Callable[[], Any]) -> None:
    """Run a connection outside the caller's scope (a client connection outlives
    the ``connect()`` call, like a transport on asyncio)."""
    if current_backend() == "trio":
        import trio

        trio.lowlevel.spawn_system_task(fn, name="anycore-portable-connection")
        return
    import asyncio

    task = asyncio.get_running_loop().create_task(fn())
    _background.add(task)
    task.add_done_callback(_background.discard)
