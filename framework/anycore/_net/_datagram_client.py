# Design: the UDP client side - open_datagram_endpoint() and DatagramEndpoint.
#
# An endpoint is one socket, connected to a remote address or not, served by a
# DatagramHandler like a server's (``_Glue`` on asyncio, ``_PortableGlue``
# elsewhere).  Without a handler of the caller's, a bounded ``_ReceiveQueue``
# handler backs ``await receive()`` (excess datagrams are dropped and counted,
# as UDP would).  Socket and endpoint-string helpers come from
# ``_datagram_server``.
# Rejected: an unbounded receive queue (a flood becomes an out-of-memory kill).

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.abc

from .._core._backend import running_on_asyncio
from .._core._resource import AsyncResource
from ..errors import ClosedError, EndpointError, RuntimeStateError
from ._datagram import Address, DatagramHandler, DatagramStatistics, _Glue
from ._datagram_portable import _close_portable, _PortableGlue
from ._datagram_server import (
    _attach,
    _bind_addresses,
    _close_glues,
    _is_ip,
    _make_socket,
    _parse_datagram,
    _parse_udp,
    _unix_datagram_socket,
)
from ._endpoints import Endpoint

__all__ = ["DatagramEndpoint", "open_datagram_endpoint"]

log = logging.getLogger("anycore.datagram")


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


class DatagramEndpoint(AsyncResource):
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
        self._unix_path: str | None = None
        self._unix_dir: str | None = None
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
        remote = None if self._remote is None else _parse_datagram(self._remote)
        local = None if self._local is None else _parse_datagram(self._local)
        if (remote is not None and remote.scheme == "unixgram") or (
            local is not None and local.scheme == "unixgram"
        ):
            await self._start_unix(remote, local)
            return
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

    def _make_handler(self) -> DatagramHandler:
        if self._factory is None:
            self._queue = _ReceiveQueue(self._max_queued)
            return self._queue
        made: object = self._factory()
        if not isinstance(made, DatagramHandler):
            raise TypeError(f"the handler factory returned {made!r}, not a DatagramHandler")
        return made

    async def _start_unix(self, remote: Endpoint | None, local: Endpoint | None) -> None:
        # A Unix datagram socket, connected to the remote path if given.  It
        # must be bound to receive replies: to the local path, or to one in
        # a private directory of its own (Linux's autobind names are not
        # portable, and uvloop cannot send to them).
        for ep in (remote, local):
            if ep is not None and ep.scheme != "unixgram":
                raise EndpointError(f"{ep}: cannot mix unixgram:// with {ep.scheme}://")
        if local is not None:
            assert local.path is not None
            path = local.path
        else:
            self._unix_dir = tempfile.mkdtemp(prefix="anycore-dgram-")
            path = os.path.join(self._unix_dir, "client.sock")
        sock = _unix_datagram_socket(path)
        self._unix_path = path
        try:
            if remote is not None:
                assert remote.path is not None
                sock.connect(remote.path)
        except BaseException:
            sock.close()
            raise
        handler = self.handler = self._make_handler()
        portable = not running_on_asyncio() if self._portable_opt is None else self._portable_opt
        if not portable:
            self._glue = await _attach(sock, handler)
            return
        usock: Any
        try:
            if remote is not None:
                usock = await anyio.abc.ConnectedUNIXDatagramSocket.from_socket(sock)
            else:
                usock = await anyio.abc.UNIXDatagramSocket.from_socket(sock)
        except BaseException:
            sock.close()
            raise
        pglue = _PortableGlue(handler, usock, sock, connected=remote is not None)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg_task = anyio.get_current_task().id
        self._pglue = pglue
        try:
            await self._tg.start(pglue.run)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.aclose()
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
        path, self._unix_path = self._unix_path, None
        if path is not None:  # our unixgram socket file (and its directory)
            with contextlib.suppress(OSError):
                os.unlink(path)
        directory, self._unix_dir = self._unix_dir, None
        if directory is not None:
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        tg = self._tg
        if tg is not None and anyio.get_current_task().id == self._tg_task:
            self._tg = None
            await tg.__aexit__(None, None, None)


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
