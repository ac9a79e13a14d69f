# Design: the accept side of a server on anyio listeners (trio, or portable=True).
#
# ``PortableEngine`` is what a Server runs when the backend is not asyncio or
# ``portable=True``: anyio listeners, one accept loop per listener, one
# ``_StreamDriver`` (``_anyio_driver``) per connection, TLS by wrapping the
# accepted stream.  The engine's task group (accept loops and connections)
# lives in a task of its own (a BackgroundJob) from start() to aclose(), never
# in the caller's task: a scope entered by ``start()`` and left by ``aclose()``
# in whichever task calls it breaks trio's cancel-scope stack (issue 11).

from __future__ import annotations

import errno
import logging
import ssl as _ssl
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

from .._core._backend import BackgroundJob
from .._core._backoff import Backoff
from ._anyio_driver import _StreamDriver
from ._endpoints import Endpoint
from ._handler import Handler

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["PortableEngine"]

_server_logger = logging.getLogger("anycore.server")
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


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
        backoff = Backoff(0.01, 1.0, jitter=0)  # accept() out of fds
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
                        delay = backoff.next()
                        _server_logger.warning(
                            "accept() on %s failed: %s; retrying in %.2f s", ep, exc, delay
                        )
                        await anyio.sleep(delay)
                        continue
                    raise
                if backoff.attempt:
                    backoff.reset()
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
