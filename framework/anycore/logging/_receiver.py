"""A log receiver for the stdlib's network format (TCP, Unix stream, UDP).

Owns :class:`LogReceiver`: asyncio protocols that cut the stream into
length-prefixed frames (bounded), unpickle each with the restricted
unpickler of :mod:`._records` (plain dicts only) and hand the rebuilt
:class:`logging.LogRecord` to a callback - by default to the local logger of
the same name, as the logging cookbook's receiver does.  It serves
``examples/log_receiver.py`` and the parent side of child-process forwarding.

Binds to loopback unless told otherwise.  Rejected: ``socketserver`` (a
thread per connection, blocking) and the cookbook's plain ``pickle.loads``
(runs code chosen by whoever connects).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

from .._net._framing import LengthPrefixFramer
from ..errors import FrameTooLarge, RemoteProtocolError
from ._records import MAX_RECORD_SIZE, dict_to_record, loads_record

__all__ = ["LogReceiver", "ReceiverStatistics", "open_log_receiver"]

_LENGTH = struct.Struct(">L")
logger = logging.getLogger("anycore.logging.receiver")


def dispatch_locally(record: logging.LogRecord) -> None:
    """Hand ``record`` to the local logger of the same name (cookbook semantics).

    Levels were applied by the sender; the local logger's filters and
    handlers apply here (``Logger.handle`` does not check levels again).
    """
    logging.getLogger(record.name).handle(record)


@dataclass(frozen=True, slots=True)
class ReceiverStatistics:
    """A snapshot of a :class:`LogReceiver`, from :meth:`LogReceiver.statistics`.

    Attributes:
        received: records received and dispatched.
        rejected: payloads refused (not a plain record pickle, too large).
        connections: stream connections open now.
    """

    received: int
    rejected: int
    connections: int


class LogReceiver:
    """Receives log records sent by stdlib or anycore socket/datagram handlers.

    Args:
        on_record: called with each received :class:`logging.LogRecord`
            (default: :func:`dispatch_locally`).
        max_record_size: frames announcing more bytes close the connection.
        max_connections: stream connections beyond this are refused.
    """

    def __init__(
        self,
        on_record: Callable[[logging.LogRecord], object] | None = None,
        *,
        max_record_size: int = MAX_RECORD_SIZE,
        max_connections: int = 256,
    ) -> None:
        self.on_record = on_record or dispatch_locally
        self.max_record_size = max_record_size
        self.max_connections = max_connections
        self.received = 0
        self.rejected = 0
        self._servers: list[asyncio.base_events.Server] = []
        self._transports: set[asyncio.BaseTransport] = set()
        self._unix_paths: list[str] = []
        self.addresses: dict[str, Any] = {}

    def statistics(self) -> ReceiverStatistics:
        """A :class:`ReceiverStatistics` snapshot."""
        return ReceiverStatistics(
            received=self.received, rejected=self.rejected, connections=len(self._transports)
        )

    # -- records --------------------------------------------------------------

    def _deliver(self, payload: bytes) -> None:
        try:
            record = dict_to_record(loads_record(payload))
        except RemoteProtocolError as exc:
            self.rejected += 1
            logger.warning("rejected a log record: %s", exc)
            return
        self.received += 1
        try:
            self.on_record(record)
        except Exception:
            logger.exception("log receiver callback failed")

    # -- servers --------------------------------------------------------------

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen for stream connections on ``host:port``; returns the bound address."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _StreamProtocol(self), host, port)
        self._servers.append(server)
        addr = server.sockets[0].getsockname()
        self.addresses["tcp"] = (addr[0], addr[1])
        return addr[0], addr[1]

    async def start_unix(self, path: str) -> str:
        """Listen for stream connections on a Unix socket at ``path`` (mode 0600)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(lambda: _StreamProtocol(self), path)
        os.chmod(path, 0o600)
        self._servers.append(server)
        self._unix_paths.append(path)
        self.addresses["unix"] = path
        return path

    async def start_udp(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Receive datagrams on ``host:port``; returns the bound address."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _DatagramProtocol(self), local_addr=(host, port)
        )
        self._transports.add(transport)
        addr = transport.get_extra_info("sockname")
        self.addresses["udp"] = (addr[0], addr[1])
        return addr[0], addr[1]

    async def aclose(self) -> None:
        """Stop listening and close every connection."""
        for server in self._servers:
            server.close()
        for transport in list(self._transports):
            transport.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()
        for path in self._unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._unix_paths.clear()
        await asyncio.sleep(0)  # let transports run connection_lost


class _StreamProtocol(asyncio.Protocol):
    def __init__(self, receiver: LogReceiver) -> None:
        self.receiver = receiver
        self.framer = LengthPrefixFramer(">L", receiver.max_record_size)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        rcv = self.receiver
        if len(rcv._transports) >= rcv.max_connections:
            transport.abort()
            return
        self.transport = transport
        rcv._transports.add(transport)

    def data_received(self, data: bytes) -> None:
        framer = self.framer
        deliver = self.receiver._deliver
        try:
            framer.feed(data)
            while (frame := framer.next_frame()) is not None:
                deliver(frame)
        except FrameTooLarge as exc:
            self.receiver.rejected += 1
            logger.warning("log record frame of %d bytes exceeds %d: closing", exc.size, exc.limit)
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.receiver._transports.discard(self.transport)


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, receiver: LogReceiver) -> None:
        self.receiver = receiver

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # The stdlib's DatagramHandler keeps SocketHandler's length prefix.
        if len(data) >= 4 and _LENGTH.unpack_from(data)[0] == len(data) - 4:
            data = data[4:]
        self.receiver._deliver(data)


@contextlib.asynccontextmanager
async def open_log_receiver(
    *,
    tcp: tuple[str, int] | None = ("127.0.0.1", 0),
    udp: tuple[str, int] | None = None,
    unix: str | None = None,
    on_record: Callable[[logging.LogRecord], object] | None = None,
    max_record_size: int = MAX_RECORD_SIZE,
) -> AsyncIterator[LogReceiver]:
    """Run a :class:`LogReceiver` for the body of the block.

    Args:
        tcp: ``(host, port)`` to listen on for stream connections (loopback,
            port chosen by the OS, by default); None: no TCP.
        udp: ``(host, port)`` for datagrams; None: no UDP.
        unix: a Unix socket path for stream connections.
        on_record: the callback for each record (default: local loggers).
        max_record_size: the largest accepted record, in bytes.

    Returns:
        An async context manager yielding the receiver; its ``addresses``
        dict holds the bound ``"tcp"``/``"udp"``/``"unix"`` addresses.
    """
    receiver = LogReceiver(on_record, max_record_size=max_record_size)
    try:
        if tcp is not None:
            await receiver.start_tcp(*tcp)
        if udp is not None:
            await receiver.start_udp(*udp)
        if unix is not None:
            await receiver.start_unix(unix)
        yield receiver
    finally:
        await receiver.aclose()
