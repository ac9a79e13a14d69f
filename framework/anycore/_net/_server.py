# Design: stream servers.
#
# This module owns ``serve()`` and ``Server``: binding endpoints, the accept loop,
# connection limits, the registry of live connections, statistics, graceful close
# and the registration with the runtime's shutdown phases.
#
# The accept loop is our own (a reader callback on each listening socket that
# accepts in a bounded batch), not ``loop.create_server``, because we need three
# things asyncio.Server does not give:
# - running out of file descriptors (EMFILE/ENFILE) backs off with a logged
#   warning and retries, instead of calling the loop's exception handler (asyncio)
#   or accepting-and-dropping connections (libuv's EMFILE trick under uvloop);
# - ``max_connections`` with ``on_limit="hold"`` stops calling accept() so excess
#   clients wait in the kernel backlog, ``"refuse"`` closes them at once, and
#   ``"shed"`` (the default) makes room by aborting the connection idle or slow
#   the longest (slowloris peers cannot hold every slot).  ``frame_deadline``,
#   ``min_receive_rate`` and shedding share one sweep timer per server over the
#   connections' guards (rejected: a timer per connection, 10x the CPU at 8,000
#   idle connections);
# - ``close()`` leaves a registry we drain: stop accepting, let handlers finish
#   within a deadline, then abort what is left (asyncio.Server.close() leaves
#   client connections open, cpython#113538).
# Accepted sockets become transports with ``loop.connect_accepted_socket``, so
# asyncio and uvloop keep their own (fast) transports and TLS implementation.
#
# On a non-asyncio backend (trio) or with ``portable=True`` the same Server runs
# the portable engine from ``_accept_anyio`` (anyio listeners and byte streams).

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl as _ssl
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.abc

from .._core._backend import running_on_asyncio
from .._core._backoff import Backoff
from .._core._resource import AsyncResource
from .._core._runtime import Phase, current_runtime
from ..errors import EndpointError, LoopUnavailable
from ._asyncio_driver import _Owner, _ProtocolDriver
from ._endpoints import Endpoint, parse_endpoint
from ._guard import GuardPolicy
from ._handler import Handler, check_handler_factory, checked_handler
from ._loglimit import LogLimiter

if TYPE_CHECKING:
    from .._core._runtime import Handle
    from ._accept_anyio import PortableEngine

__all__ = ["Server", "ServerStatistics", "serve"]

logger = logging.getLogger("anycore.server")

_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_BATCH = 128
_MAX_BACKOFF = 1.0


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """A snapshot of a server's counters (``Server.statistics()``).

    Attributes:
        connections: connections open now.
        total_connections: connections accepted since the server started.
        refused: connections refused by ``max_connections``.
        bytes_in: bytes received over all connections.
        bytes_out: bytes written over all connections.
        frames: frames handled over all connections.
        errors: handler errors, oversized or truncated frames, failed handshakes
            and connections aborted for their write buffer.
        accept_errors: accept() failures such as running out of file descriptors.
        shed: idle or slow connections closed to make room for new ones at
            ``max_connections`` (``on_limit="shed"``).
    """

    connections: int
    total_connections: int
    refused: int
    bytes_in: int
    bytes_out: int
    frames: int
    errors: int
    accept_errors: int
    shed: int = 0


class _Counters:
    __slots__ = (
        "accept_errors",
        "bytes_in",
        "bytes_out",
        "errors",
        "frames",
        "refused",
        "shed",
        "total_connections",
    )

    def __init__(self) -> None:
        self.total_connections = 0
        self.refused = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.frames = 0
        self.errors = 0
        self.accept_errors = 0
        self.shed = 0


class _Listener:
    __slots__ = ("backoff", "endpoint", "reading", "retry", "sock", "ssl", "unix_inode")

    def __init__(
        self, sock: socket.socket, endpoint: Endpoint, ssl: _ssl.SSLContext | None
    ) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self.ssl = ssl
        self.reading = False
        self.backoff = Backoff(0.01, _MAX_BACKOFF, jitter=0)  # accept() out of fds
        self.retry: asyncio.TimerHandle | None = None
        self.unix_inode: tuple[int, int] | None = None


class Server(_Owner, AsyncResource):
    """A stream server; create it with :func:`serve`.

    Use it as an async context manager (``async with serve(...) as server:``),
    or ``await server.serve_forever()``.  Leaving the context (or cancelling
    ``serve_forever``) closes it gracefully: stop accepting, let the handlers
    finish what they were given within ``drain_timeout``, then abort the rest.
    """

    def __init__(
        self,
        handler_factory: Callable[[], Handler],
        endpoints: Sequence[str | Endpoint],
        *,
        ssl: _ssl.SSLContext | None = None,
        reuse_port: bool = False,
        max_connections: int | None = None,
        on_limit: Literal["shed", "refuse", "hold"] = "shed",
        idle_timeout: float | None = None,
        frame_deadline: float | None = None,
        min_receive_rate: float | None = None,
        receive_rate_window: float = 5.0,
        write_buffer_limit: int | None = 16 * 1024 * 1024,
        handshake_timeout: float = 10.0,
        backlog: int = 1024,
        drain_timeout: float = 10.0,
        portable: bool | None = None,
        sockets: Sequence[socket.socket] = (),
    ) -> None:
        check_handler_factory(handler_factory, "serve")
        if not endpoints and not sockets:
            raise EndpointError("serve() needs at least one endpoint or socket")
        for sock in sockets:
            if sock.type != socket.SOCK_STREAM:
                raise EndpointError(f"socket fd {sock.fileno()} is not a stream socket")
        if on_limit not in ("shed", "refuse", "hold"):
            raise ValueError(f"on_limit must be 'shed', 'refuse' or 'hold', not {on_limit!r}")
        if max_connections is not None and max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        for name, value in (
            ("idle_timeout", idle_timeout),
            ("frame_deadline", frame_deadline),
            ("min_receive_rate", min_receive_rate),
            ("receive_rate_window", receive_rate_window),
        ):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, not {value!r}")
        parsed = [parse_endpoint(e) for e in endpoints]
        for ep in parsed:
            if not ep.is_stream:
                raise EndpointError(f"{ep}: serve() takes stream endpoints; use serve_datagram()")
        self.handler_factory = handler_factory
        self._requested = parsed
        self._ssl = ssl
        self.reuse_port = reuse_port
        self.max_connections = max_connections
        self.on_limit = on_limit
        self.idle_timeout = idle_timeout
        self.frame_deadline = frame_deadline
        self.min_receive_rate = min_receive_rate
        self.receive_rate_window = receive_rate_window
        # The per-connection guard (asyncio engine): slow frames, and the
        # idle-or-slow bookkeeping that shedding needs.
        self._guard: GuardPolicy | None = None
        if (
            frame_deadline is not None
            or min_receive_rate is not None
            or (max_connections is not None and on_limit == "shed")
        ):
            self._guard = GuardPolicy.build(frame_deadline, min_receive_rate, receive_rate_window)
        self.write_buffer_limit = write_buffer_limit
        self.handshake_timeout = handshake_timeout
        self.backlog = backlog
        self.drain_timeout = drain_timeout
        self.portable = portable
        self._sockets = list(sockets)
        self._counters = _Counters()
        #: Rate-limits this server's per-connection log records (see LogLimiter).
        self.log_limiter = LogLimiter()
        self._conns: dict[_ProtocolDriver, None] = {}
        self._setups: set[asyncio.Task[None]] = set()
        self._setup_of: dict[_ProtocolDriver, asyncio.Task[None]] = {}
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._listeners: list[_Listener] = []
        self._endpoints: list[Endpoint] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._accepting = False
        self._closed_event: asyncio.Event | None = None
        self._idle_event: asyncio.Event | None = None
        self._runtime_handles: list[Handle] = []
        self._engine: PortableEngine | None = None

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Bind every endpoint and start accepting (idempotent).

        Raises:
            OSError: an endpoint cannot be bound (the others are released).
            EndpointError: a tls endpoint has neither cert options nor ``ssl=``.
        """
        if self._started:
            return
        self._started = True
        if self._use_portable():
            if self._sockets:
                self._started = False
                for sock in self._sockets:
                    sock.close()
                raise LoopUnavailable(
                    "serve(sockets=...) needs the asyncio engine (asyncio, uvloop)"
                )
            from ._accept_anyio import PortableEngine

            self._engine = PortableEngine(self)
            await self._engine.start()
            self._endpoints = self._engine.endpoints
            self._register_runtime()
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._closed_event = asyncio.Event()
        self._idle_event = asyncio.Event()
        try:
            for ep in self._requested:
                ctx = self._ssl_for(ep)
                for sock in await self._bind(ep):
                    bound = self._bound_endpoint(ep, sock)
                    listener = _Listener(sock, bound, ctx)
                    if ep.scheme == "unix":
                        st = os.stat(bound.path or "")
                        listener.unix_inode = (st.st_dev, st.st_ino)
                    self._listeners.append(listener)
                    self._endpoints.append(bound)
            for sock in self._sockets:
                self._adopt(sock)
        except BaseException:
            self._close_listeners()
            for sock in self._sockets:
                sock.close()  # ours from start(): not leaked when starting fails
            self._endpoints.clear()
            self._started = False
            raise
        self._accepting = True
        for listener in self._listeners:
            self._start_reading(listener)
        if self._guard is not None:
            self._sweep_handle = loop.call_later(self._guard.period, self._sweep)
        self._register_runtime()
        logger.info("serving on %s", ", ".join(str(e) for e in self._endpoints))

    def _use_portable(self) -> bool:
        if self.portable is not None:
            return self.portable
        return not running_on_asyncio()

    def _register_runtime(self) -> None:
        rt = current_runtime()  # on trio too: the portable engine drains the same way
        if rt is None:
            return
        name = f"server {', '.join(str(e) for e in self._endpoints)}"

        async def stop_accepting() -> None:
            self.close()

        async def drain() -> None:
            await self.aclose()

        self._runtime_handles = [
            rt.add_shutdown_step(Phase.STOP_ACCEPTING, name, stop_accepting),
            rt.add_shutdown_step(Phase.DRAIN, name, drain),
        ]

    def _ssl_for(self, ep: Endpoint) -> _ssl.SSLContext | None:
        if ep.is_tls and ep.option("cert") is not None:
            return ep.ssl_context(server_side=True)
        if self._ssl is not None:
            return self._ssl
        if ep.is_tls:
            raise EndpointError(f"{ep}: a tls endpoint needs ?cert=...&key=... or serve(ssl=...)")
        return None

    async def _bind(self, ep: Endpoint) -> list[socket.socket]:
        if ep.scheme == "unix":
            return [self._bind_unix(ep.path or "")]
        assert self._loop is not None
        try:
            # Numeric hosts never block: skip the resolver thread.
            infos = socket.getaddrinfo(
                ep.host,
                ep.port,
                type=socket.SOCK_STREAM,
                flags=socket.AI_PASSIVE | socket.AI_NUMERICHOST,
            )
        except socket.gaierror:
            infos = await self._loop.getaddrinfo(
                ep.host, ep.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        socks: list[socket.socket] = []
        seen: set[tuple[int, Any]] = set()
        port = ep.port or 0
        try:
            for family, type_, proto, _canon, addr in infos:
                key = (family, addr[:2])
                if key in seen:
                    continue
                seen.add(key)
                sock = socket.socket(family, type_, proto)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if self.reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                # Several addresses for one name (localhost): one port for all.
                bind_addr = (addr[0], port, *addr[2:]) if port else addr
                sock.bind(bind_addr)
                if not port:
                    port = sock.getsockname()[1]
                sock.listen(self.backlog)
                sock.setblocking(False)
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        return socks

    def _bind_unix(self, path: str) -> socket.socket:
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)  # a stale socket from an earlier run
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(self.backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _adopt(self, sock: socket.socket) -> None:
        # An already-bound socket (inherited, socket activation): listen and serve
        # it.  Its unix socket file belongs to whoever bound it: never unlinked.
        sock.listen(self.backlog)
        sock.setblocking(False)
        name = sock.getsockname()
        if sock.family == socket.AF_UNIX:
            path = name.decode() if isinstance(name, bytes) else name
            ep = Endpoint("unix", path=path)
        else:
            ep = Endpoint("tcp", host=name[0], port=name[1])
        self._listeners.append(_Listener(sock, ep, None))
        self._endpoints.append(ep)

    @staticmethod
    def _bound_endpoint(ep: Endpoint, sock: socket.socket) -> Endpoint:
        if ep.scheme == "unix":
            return ep
        host, port = sock.getsockname()[:2]
        return Endpoint(ep.scheme, host=host, port=port, options=ep.options)

    async def serve_forever(
        self, *, task_status: anyio.abc.TaskStatus[Server] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Start if needed and serve until closed; cancelling it closes gracefully.

        ``server = await task_group.start(serve(...).serve_forever)`` returns
        once the server listens (anyio's ``task_status`` protocol): the bound
        endpoints are then in ``server.endpoints``.

        Args:
            task_status: set by ``TaskGroup.start``; reports the started server.
        """
        await self.start()
        task_status.started(self)
        if self._engine is not None:
            await self._engine.serve_forever()
            return
        assert self._closed_event is not None
        try:
            await self._closed_event.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await self.aclose()

    def close(self) -> None:
        """Stop accepting new connections (open ones are left alone)."""
        if self._engine is not None:
            self._engine.stop_accepting()
            return
        if not self._accepting and not self._listeners:
            return
        self._accepting = False
        self._close_listeners()
        if self._closed_event is not None:
            self._closed_event.set()

    def _close_listeners(self) -> None:
        for listener in self._listeners:
            self._stop_reading(listener)
            if listener.retry is not None:
                listener.retry.cancel()
                listener.retry = None
            if listener.unix_inode is not None and listener.endpoint.path:
                try:
                    st = os.stat(listener.endpoint.path)
                    if (st.st_dev, st.st_ino) == listener.unix_inode:
                        os.unlink(listener.endpoint.path)
                except OSError:
                    pass
            listener.sock.close()
        self._listeners.clear()

    async def aclose(self, timeout: float | None = None) -> None:
        """Close gracefully: stop accepting, drain, then abort what is left.

        Every open connection stops reading; a connection closes as soon as its
        handler has handled the frames it already received.  After ``timeout``
        (default ``drain_timeout``) the remaining connections are aborted.  If
        this is cancelled, the remaining connections are aborted at once.

        Args:
            timeout: seconds to wait for connections to finish.
        """
        for handle in self._runtime_handles:
            handle.remove()
        self._runtime_handles = []
        deadline = self.drain_timeout if timeout is None else timeout
        rt = current_runtime()
        left = None if rt is None else rt.drain_time_left()
        if left is not None:  # the runtime's drain bound wins during shutdown
            deadline = min(deadline, left)
        if self._engine is not None:
            await self._engine.aclose(deadline)
            return
        self.close()
        if self._loop is None:
            return
        for task in list(self._setups):
            task.cancel()
        for driver in list(self._conns):
            driver.begin_graceful_close()
        try:
            with anyio.move_on_after(deadline):
                await self._wait_idle()
        finally:
            if self._conns or self._setups:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
                    if self._conns:
                        logger.warning(
                            "aborting %d connection(s) still open after the drain deadline",
                            len(self._conns),
                        )
                    for driver in list(self._conns):
                        driver.abort()
                    await self._wait_idle()
                for driver in list(self._conns):
                    # connection_lost handlers that did not finish in time.
                    lost_task = driver._task
                    if lost_task is not None and not lost_task.done():
                        lost_task.cancel()
            if self._sweep_handle is not None:
                self._sweep_handle.cancel()
                self._sweep_handle = None

    async def _wait_idle(self) -> None:
        assert self._idle_event is not None
        while self._conns or self._setups:
            self._idle_event.clear()
            await self._idle_event.wait()

    # -- information --------------------------------------------------------------

    @property
    def endpoints(self) -> list[Endpoint]:
        """The bound endpoints (port 0 replaced by the port the OS chose)."""
        return list(self._endpoints)

    @property
    def addresses(self) -> list[Any]:
        """The bound socket addresses: ``(host, port)`` tuples or unix paths."""
        return [ep.path if ep.scheme == "unix" else (ep.host, ep.port) for ep in self._endpoints]

    @property
    def port(self) -> int:
        """The port of the first TCP endpoint (handy with port 0).

        Raises:
            EndpointError: the server has no TCP endpoint.
        """
        for ep in self._endpoints:
            if ep.port is not None:
                return ep.port
        raise EndpointError("this server has no TCP endpoint")

    def is_serving(self) -> bool:
        """Whether the server is accepting connections."""
        if self._engine is not None:
            return self._engine.accepting
        return self._accepting

    def connections(self) -> list[Handler]:
        """The handlers of the connections open now."""
        if self._engine is not None:
            return self._engine.handlers()
        return [driver.handler for driver in self._conns]

    def statistics(self) -> ServerStatistics:
        """Counters over the server's lifetime."""
        c = self._counters
        bytes_in, bytes_out, frames = c.bytes_in, c.bytes_out, c.frames
        if self._engine is not None:
            live = self._engine.live_counts()
            count = len(live)
            for b_in, b_out, fr in live:
                bytes_in += b_in
                bytes_out += b_out
                frames += fr
        else:
            count = len(self._conns)
            for d in self._conns:
                bytes_in += d.bytes_in
                bytes_out += d.bytes_out
                frames += d.frames_in
        return ServerStatistics(
            connections=count,
            total_connections=c.total_connections,
            refused=c.refused,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            frames=frames,
            errors=c.errors,
            accept_errors=c.accept_errors,
            shed=c.shed,
        )

    # -- accept loop --------------------------------------------------------------

    def _start_reading(self, listener: _Listener) -> None:
        if not listener.reading and self._loop is not None:
            listener.reading = True
            self._loop.add_reader(listener.sock.fileno(), self._accept, listener)

    def _stop_reading(self, listener: _Listener) -> None:
        if listener.reading and self._loop is not None:
            listener.reading = False
            self._loop.remove_reader(listener.sock.fileno())

    def _live(self) -> int:
        return len(self._conns) + len(self._setups)

    def _accept(self, listener: _Listener) -> None:
        limit = self.max_connections
        for _ in range(_ACCEPT_BATCH):
            if not self._accepting:
                return
            if limit is not None and self.on_limit == "hold" and self._live() >= limit:
                # Leave the excess in the kernel backlog until a slot frees.
                for lst in self._listeners:
                    self._stop_reading(lst)
                return
            try:
                conn, _addr = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._counters.accept_errors += 1
                if exc.errno in _RESOURCE_ERRNOS:
                    self._back_off(listener, exc)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # the peer gave up before we accepted
                logger.error("accept() on %s failed: %s", listener.endpoint, exc)
                self._back_off(listener, exc)
                return
            if listener.backoff.attempt:
                listener.backoff.reset()
            if limit is not None and self._live() >= limit and not self._shed_one():
                self._counters.refused += 1
                self.log_limiter.log(
                    logger,
                    logging.WARNING,
                    "connections refused at max_connections",
                    "refusing a connection on %s: max_connections=%d reached",
                    listener.endpoint,
                    limit,
                )
                _reset_and_close(conn)
                continue
            conn.setblocking(False)
            assert self._loop is not None
            task = self._loop.create_task(self._setup(conn, listener))
            self._setups.add(task)
            task.add_done_callback(self._setup_done)

    def _sweep(self) -> None:
        """Every guard period: each connection's slowloris guard looks once
        (one timer per server rather than one per connection)."""
        assert self._loop is not None
        assert self._guard is not None
        now = self._loop.time()
        for driver in list(self._conns):
            driver.check_guard(now)
        if self._accepting or self._conns:
            self._sweep_handle = self._loop.call_later(self._guard.period, self._sweep)
        else:
            self._sweep_handle = None

    def _shed_one(self) -> bool:
        """``on_limit="shed"``: abort the connection that has been idle or slow
        the longest (at least one guard period) to make room; False when none
        qualifies (the new connection is then refused)."""
        guard = self._guard
        if self.on_limit != "shed" or guard is None or self._loop is None:
            return False
        now = self._loop.time()
        oldest: float | None = None
        victim: _ProtocolDriver | None = None
        for driver in self._conns:
            since = driver.shed_rank(now)
            if (
                since is not None
                and now - since >= guard.period
                and (oldest is None or since < oldest)
            ):
                oldest, victim = since, driver
        if victim is None:
            return False
        self._counters.shed += 1
        assert oldest is not None
        self.log_limiter.log(
            logger,
            logging.INFO,
            "connections shed at max_connections",
            "max_connections=%s reached: closing connection %s (idle or slow for %.1f s) "
            "for a new one",
            self.max_connections,
            victim.connection_id,
            now - oldest,
        )
        victim.abort()
        return True

    def _back_off(self, listener: _Listener, exc: OSError) -> None:
        delay = listener.backoff.next()
        logger.warning(
            "accept() on %s failed: %s (%s); retrying in %.2f s",
            listener.endpoint,
            exc.strerror or exc,
            errno.errorcode.get(exc.errno or 0, "?"),
            delay,
        )
        self._stop_reading(listener)
        assert self._loop is not None
        listener.retry = self._loop.call_later(delay, self._retry_accept, listener)

    def _retry_accept(self, listener: _Listener) -> None:
        listener.retry = None
        if self._accepting and listener in self._listeners:
            self._start_reading(listener)

    async def _setup(self, conn: socket.socket, listener: _Listener) -> None:
        assert self._loop is not None
        task = asyncio.current_task()

        def make_driver() -> _ProtocolDriver:
            driver = self._make_driver()
            if task is not None:
                # Counted once: as a setup until connection_made, then a connection.
                self._setup_of[driver] = task
            return driver

        try:
            if listener.ssl is not None:
                await self._loop.connect_accepted_socket(
                    make_driver,
                    conn,
                    ssl=listener.ssl,
                    ssl_handshake_timeout=self.handshake_timeout,
                )
            else:
                await self._loop.connect_accepted_socket(make_driver, conn)
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception as exc:
            self._counters.errors += 1
            self.log_limiter.log(
                logger,
                logging.WARNING,
                "connections that failed during setup",
                "connection on %s failed during setup%s: %s: %s",
                listener.endpoint,
                " (TLS handshake)" if listener.ssl is not None else "",
                type(exc).__name__,
                exc,
            )
            conn.close()

    def _setup_done(self, task: asyncio.Task[None]) -> None:
        self._setups.discard(task)
        self._maybe_resume()
        self._maybe_idle()

    def _make_driver(self) -> _ProtocolDriver:
        handler = checked_handler(self.handler_factory(), self.handler_factory)
        handler.server = self
        return _ProtocolDriver(
            handler,
            owner=self,
            server_side=True,
            idle_timeout=self.idle_timeout,
            write_buffer_limit=self.write_buffer_limit,
            guard=self._guard,
        )

    # -- _Owner -------------------------------------------------------------------

    def connection_started(self, driver: _ProtocolDriver) -> bool:
        if not self._accepting and self._loop is not None and not self._listeners:
            # Closed while the connection was being set up.
            return False
        setup = self._setup_of.pop(driver, None)
        if setup is not None:
            self._setups.discard(setup)
        self._conns[driver] = None
        self._counters.total_connections += 1
        return True

    def connection_finished(self, driver: _ProtocolDriver) -> None:
        self._setup_of.pop(driver, None)
        if self._conns.pop(driver, 0) is None:
            c = self._counters
            c.bytes_in += driver.bytes_in
            c.bytes_out += driver.bytes_out
            c.frames += driver.frames_in
        self._maybe_resume()
        self._maybe_idle()

    def _maybe_resume(self) -> None:
        if (
            self._accepting
            and self.max_connections is not None
            and self._live() < self.max_connections
        ):
            for listener in self._listeners:
                if listener.retry is None:
                    self._start_reading(listener)

    def handler_failed(self) -> None:
        self._counters.errors += 1

    def _maybe_idle(self) -> None:
        if self._idle_event is not None and not self._conns and not self._setups:
            self._idle_event.set()

    # used by the portable engine
    @property
    def requested_endpoints(self) -> list[Endpoint]:
        return list(self._requested)

    @property
    def counters(self) -> _Counters:
        return self._counters

    def ssl_for(self, ep: Endpoint) -> _ssl.SSLContext | None:
        return self._ssl_for(ep)


def _reset_and_close(conn: socket.socket) -> None:
    try:
        # SO_LINGER 0: the client sees a reset at once instead of a silent close.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    conn.close()


def serve(
    handler_factory: Callable[[], Handler],
    *endpoints: str | Endpoint,
    ssl: _ssl.SSLContext | None = None,
    reuse_port: bool = False,
    max_connections: int | None = None,
    on_limit: Literal["shed", "refuse", "hold"] = "shed",
    idle_timeout: float | None = None,
    frame_deadline: float | None = None,
    min_receive_rate: float | None = None,
    receive_rate_window: float = 5.0,
    write_buffer_limit: int | None = 16 * 1024 * 1024,
    handshake_timeout: float = 10.0,
    backlog: int = 1024,
    drain_timeout: float = 10.0,
    portable: bool | None = None,
    sockets: Sequence[socket.socket] = (),
) -> Server:
    """Create a server running one ``handler_factory()`` per connection.

    ``async with serve(Echo, "tcp://127.0.0.1:0") as server:`` binds and starts
    accepting; leaving the block closes gracefully.

    Args:
        handler_factory: called once per connection; returns a :class:`Handler`.
        *endpoints: ``tcp://``, ``tls://`` or ``unix://`` endpoints (strings or
            :class:`Endpoint`); port 0 picks a free port (see ``server.endpoints``).
        ssl: an SSL context for every endpoint (tls endpoints may carry their
            own cert/key/ca options instead).  Mutual TLS: a context with
            ``verify_mode = CERT_REQUIRED`` and a CA loaded, or
            ``tls://...?ca=FILE&verify=required``.
        reuse_port: set SO_REUSEPORT (several processes on one port).
        max_connections: the most connections open at once.
        on_limit: at the limit, ``"shed"`` (the default) aborts the connection
            that has been idle (no bytes received) or slow (inside an
            unfinished frame) the longest, at least a second, to make room for
            the new one, and refuses the new one when every connection is
            active; ``"refuse"`` closes new connections (with a reset);
            ``"hold"`` leaves them in the kernel backlog until a slot frees.
        idle_timeout: close a connection after this many seconds without I/O.
        frame_deadline: abort a connection whose frame is not complete this
            many seconds after its first byte (slowloris; checked about every
            second, or a quarter of the deadline when shorter).  A frame is
            what the handler's framer cuts: a ``RawHandler`` has none.
        min_receive_rate: abort a connection inside an unfinished frame that
            receives fewer bytes/s than this over ``receive_rate_window``.
        receive_rate_window: seconds over which ``min_receive_rate`` is measured.
        write_buffer_limit: abort a connection whose unsent data exceeds this
            many bytes (a peer that does not read); ``None`` for no limit.
        handshake_timeout: seconds for a TLS handshake.
        backlog: the listen() backlog.
        drain_timeout: seconds graceful close waits before aborting connections.
        portable: run on anyio byte streams (default: only when the running
            backend is not asyncio, e.g. trio).
        sockets: already-bound stream sockets (inherited with ``--fd``, systemd
            socket activation, bound by a parent for its workers) served
            alongside ``endpoints``, plain TCP or unix.  The server listens on
            them and closes them when it closes (or fails to start); a unix
            socket's file is left to whoever bound it.  Served by the asyncio engine only.

    Returns:
        The :class:`Server` (not yet started; start it with ``async with`` or
        ``await server.start()``).

    Raises:
        EndpointError: an endpoint is malformed or is not a stream endpoint, or
            a socket in ``sockets`` is not a stream socket.
        HandlerError: ``handler_factory`` is not a Handler subclass or a
            function (an instance, another class), or the class is
            misconfigured (a ``str`` delimiter): checked before listening.
    """
    return Server(
        handler_factory,
        endpoints,
        ssl=ssl,
        reuse_port=reuse_port,
        max_connections=max_connections,
        on_limit=on_limit,
        idle_timeout=idle_timeout,
        frame_deadline=frame_deadline,
        min_receive_rate=min_receive_rate,
        receive_rate_window=receive_rate_window,
        write_buffer_limit=write_buffer_limit,
        handshake_timeout=handshake_timeout,
        backlog=backlog,
        drain_timeout=drain_timeout,
        portable=portable,
        sockets=sockets,
    )
