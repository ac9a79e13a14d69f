# Design: UDP servers - serve_datagram() and DatagramServer.
#
# A server binds every address an endpoint resolves to (``localhost`` gives
# IPv4 and IPv6), puts one handler on each socket (``_Glue`` on asyncio,
# ``_PortableGlue`` elsewhere) and is an async context manager.  UDP has no
# connections to drain, so with a runtime it registers one ``STOP_ACCEPTING``
# step; a graceful close stops reading, lets queued async work finish within
# ``drain_timeout``, flushes buffered writes, then closes.  The endpoint-string
# and socket helpers here are shared with ``_datagram_client``.
# Rejected: binding one dual-stack socket for ``::`` only (``localhost`` and
# explicit IPv4 addresses would then need a second code path anyway).

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import stat
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from .._core._backend import running_on_asyncio
from .._core._resource import AsyncResource
from .._core._runtime import Phase, current_runtime
from ..errors import EndpointError, RuntimeStateError
from ._datagram import Address, DatagramHandler, DatagramStatistics, _Glue
from ._datagram_portable import _close_portable, _PortableGlue
from ._endpoints import Endpoint, parse_endpoint

__all__ = ["DatagramServer", "serve_datagram"]

log = logging.getLogger("anycore.datagram")


# -- endpoint strings -------------------------------------------------------------


def _parse_datagram(endpoint: str | Endpoint) -> Endpoint:
    """Parse with the shared endpoint parser and insist on a datagram scheme."""
    ep = parse_endpoint(endpoint)
    if ep.scheme not in ("udp", "unixgram"):
        raise EndpointError(
            f"{str(ep)!r}: datagram endpoints use udp://host:port or unixgram:///path "
            "(e.g. udp://127.0.0.1:0); stream endpoints go to serve() / connect()"
        )
    return ep


def _parse_udp(endpoint: str | Endpoint) -> tuple[Endpoint, str, int]:
    """Parse with the shared endpoint parser and insist on ``udp://``."""
    ep = _parse_datagram(endpoint)
    if ep.scheme != "udp":
        raise EndpointError(f"{str(ep)!r}: expected a udp://host:port endpoint here")
    assert ep.host is not None
    assert ep.port is not None
    return ep, ep.host, ep.port


def _endpoint_of(addr: Address) -> Endpoint:
    if len(addr) == 1:  # (path,): a Unix datagram socket
        path = addr[0]
        if isinstance(path, bytes):
            path = path.decode("utf-8", "backslashreplace")
        return Endpoint("unixgram", path=str(path))
    return Endpoint("udp", host=str(addr[0]), port=int(addr[1]))


def _unix_datagram_socket(path: str) -> socket.socket:
    """A non-blocking AF_UNIX datagram socket bound to ``path``.

    A stale socket file left by a dead server is replaced; a live one, or a
    file that is not a socket, is an error.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(mode):
                raise EndpointError(f"unixgram://{path}: the path exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                probe.connect(path)
            except ConnectionRefusedError:
                os.unlink(path)  # nobody is bound to it any more
            else:
                raise OSError(errno.EADDRINUSE, f"unixgram://{path} is in use")
            finally:
                probe.close()
        sock.bind(path)
    except BaseException:
        sock.close()
        raise
    return sock


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


# -- servers ----------------------------------------------------------------------


class DatagramServer(AsyncResource):
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
        self._unix_paths: list[str] = []
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
        parsed = [_parse_datagram(e) for e in self._endpoints]
        try:
            if self._portable:
                self._tg = anyio.create_task_group()
                await self._tg.__aenter__()
                self._tg_task = anyio.get_current_task().id
            for ep in parsed:
                if ep.scheme == "unixgram":
                    assert ep.path is not None
                    await self._serve_socket(_unix_datagram_socket(ep.path))
                    self._unix_paths.append(ep.path)
                    continue
                assert ep.host is not None
                assert ep.port is not None
                host, port = ep.host, ep.port
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
                    await self._serve_socket(sock)
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

    async def _serve_socket(self, sock: socket.socket) -> None:
        # One handler per bound socket, on the asyncio or the portable driver.
        made: object = self._factory()
        if not isinstance(made, DatagramHandler):
            sock.close()
            raise TypeError(f"the handler factory returned {made!r}, not a DatagramHandler")
        handler = made
        self.handlers.append(handler)
        if self._portable:
            assert self._tg is not None
            wrapped: Any
            try:
                if sock.family == socket.AF_UNIX:
                    wrapped = await anyio.abc.UNIXDatagramSocket.from_socket(sock)
                else:
                    wrapped = await anyio.abc.UDPSocket.from_socket(sock)
            except BaseException:
                sock.close()
                raise
            pglue = _PortableGlue(handler, wrapped, sock, connected=False)
            self._pglues.append(pglue)
            await self._tg.start(pglue.run)
        else:
            self._glues.append(await _attach(sock, handler))

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
        addresses = [a for a in self.addresses if len(a) >= 2]
        if not addresses:
            raise RuntimeStateError("the datagram server has no bound UDP socket")
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

    async def serve_forever(
        self, *, task_status: anyio.abc.TaskStatus[DatagramServer] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Wait until the server is closed (by :meth:`aclose` or the runtime).

        Cancelling this closes the server.  ``await task_group.start(
        server.serve_forever)`` returns the server once it is bound (anyio's
        ``task_status`` protocol).
        """
        if not self._started:
            await self.start()
        task_status.started(self)
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
            paths, self._unix_paths = self._unix_paths, []
            for path in paths:  # our unixgram socket files
                with contextlib.suppress(OSError):
                    os.unlink(path)
            if self._closed is not None:
                self._closed.set()

    async def _exit_task_group(self) -> None:
        # A task group must be left by the task that entered it (trio checks).
        tg = self._tg
        if tg is not None and anyio.get_current_task().id == self._tg_task:
            self._tg = None
            await tg.__aexit__(None, None, None)

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
