"""Syslog on the loop: RFC 3164 as the stdlib writes it, or RFC 5424.

Owns :class:`SysLogHandler`, an :class:`~._net.AsyncNetworkHandler` over UDP,
TCP (RFC 6587 octet counting by default) or a Unix socket (datagram first,
then stream, as the stdlib tries them).  The message bytes are built on the
caller's thread; the framing depends on the transport.  Rejected: adding a
timestamp and hostname to the 3164 flavour by default (the stdlib does not,
and receivers that parse the stdlib's output would see a different format).
"""

from __future__ import annotations

import datetime
import errno
import logging
import logging.handlers
import os
import socket
import sys
from typing import Any

from ._net import AsyncNetworkHandler, _DatagramMixin, _StreamMixin

__all__ = ["SysLogHandler"]


class SysLogHandler(_StreamMixin, _DatagramMixin, AsyncNetworkHandler):
    """Syslog over UDP, TCP or a Unix socket, on the loop.

    By default each message is what :class:`logging.handlers.SysLogHandler`
    sends: ``<PRI>`` + ident + the formatted record + a NUL byte (the
    stdlib's RFC 3164 flavour, without timestamp or hostname).  With
    ``rfc=5424`` the header is ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID
    MSGID -`` and the message is UTF-8 with a BOM.

    Over TCP, messages are framed with RFC 6587 octet counting (``LEN SP
    MSG``, no NUL) unless ``framing="nul"``; datagrams and Unix sockets carry
    one message each, as the stdlib sends them.

    Args:
        address: ``(host, port)`` or a Unix socket path such as ``/dev/log``.
        facility: a ``LOG_*`` facility (name or number), as in the stdlib.
        socktype: ``socket.SOCK_DGRAM`` (default for host/port) or
            ``socket.SOCK_STREAM``; for a path, None tries datagram then stream.
        rfc: ``3164`` (default) or ``5424``.
        framing: ``"octet-counting"`` (TCP default) or ``"nul"``.
        app_name: APP-NAME for RFC 5424 (default: the program name).
        hostname: HOSTNAME for RFC 5424 (default: ``socket.gethostname()``).
        msgid: MSGID for RFC 5424 (``"-"`` by default).
        **options: see :class:`AsyncNetworkHandler`.
    """

    LOG_USER = logging.handlers.SysLogHandler.LOG_USER
    priority_names = logging.handlers.SysLogHandler.priority_names
    facility_names = logging.handlers.SysLogHandler.facility_names
    priority_map = logging.handlers.SysLogHandler.priority_map
    ident = ""
    append_nul = True

    def __init__(
        self,
        address: tuple[str, int] | str = ("localhost", logging.handlers.SYSLOG_UDP_PORT),
        facility: int | str = logging.handlers.SysLogHandler.LOG_USER,
        socktype: int | None = None,
        *,
        rfc: int = 3164,
        framing: str | None = None,
        app_name: str | None = None,
        hostname: str | None = None,
        msgid: str = "-",
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if rfc not in (3164, 5424):
            raise ValueError("rfc must be 3164 or 5424")
        if isinstance(facility, str):
            facility = self.facility_names[facility]
        self.address = address
        self.facility = facility
        self.socktype = socktype
        self.unixsocket = isinstance(address, str)
        if self.unixsocket:
            self._stream = socktype == socket.SOCK_STREAM
        else:
            self._stream = socktype == socket.SOCK_STREAM
        self.rfc = rfc
        if framing is None:
            framing = "octet-counting" if self._stream and not self.unixsocket else "nul"
        if framing not in ("octet-counting", "nul"):
            raise ValueError("framing must be 'octet-counting' or 'nul'")
        self.framing = framing
        self.app_name = _sd_name(app_name or os.path.basename(sys.argv[0] or "python"), 48)
        self.hostname = _sd_name(hostname or socket.gethostname(), 255)
        self.msgid = _sd_name(msgid, 32)

    def encodePriority(self, facility: int | str, priority: int | str) -> int:
        """The PRI value, as the stdlib computes it."""
        if isinstance(facility, str):
            facility = self.facility_names[facility]
        if isinstance(priority, str):
            priority = self.priority_names[priority]
        return (facility << 3) | priority

    def mapPriority(self, levelName: str) -> str:
        """Map a level name to a syslog priority name (stdlib semantics)."""
        return self.priority_map.get(levelName, "warning")

    def _prepare(self, record: logging.LogRecord) -> bytes:
        msg = self.format(record)
        pri = self.encodePriority(self.facility, self.mapPriority(record.levelname))
        if self.rfc == 5424:
            stamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            header = (
                f"<{pri}>1 {stamp.isoformat(timespec='microseconds').replace('+00:00', 'Z')} "
                f"{self.hostname} {self.app_name} {record.process or '-'} {self.msgid} - "
            )
            data = header.encode("ascii", "replace") + b"\xef\xbb\xbf" + msg.encode("utf-8")
        else:
            if self.ident:
                msg = self.ident + msg
            data = f"<{pri}>".encode() + msg.encode("utf-8")
        if self.framing == "octet-counting":
            return b"%d " % len(data) + data
        if (self.rfc == 3164 and self.append_nul) or (self.rfc == 5424 and self._stream):
            data += b"\x00"  # the stdlib's habit for 3164; a frame end for 5424 streams
        return data

    def _hostport(self) -> tuple[str, int]:
        assert not isinstance(self.address, str)
        return self.address[0], int(self.address[1])

    async def _connect(self) -> None:
        if self.unixsocket:
            assert isinstance(self.address, str)
            if self.socktype in (None, socket.SOCK_DGRAM):
                try:
                    self._open_datagram(socket.AF_UNIX, self.address)
                    self._stream = False
                    return
                except OSError as exc:
                    # /dev/log of a stream-only daemon: EPROTOTYPE.
                    if self.socktype is not None or exc.errno != errno.EPROTOTYPE:
                        raise
            await self._open_stream(self.address, None)
            self._stream = True
        elif self._stream:
            host, port = self._hostport()
            await self._open_stream(host, port)
        else:
            host, port = self._hostport()
            info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            self._open_datagram(info[0], info[4])

    async def _send(self, batch: list[bytes]) -> None:
        if self._stream:
            await self._write_stream(b"".join(batch))
        else:
            await self._send_datagrams(batch)

    def _push_now(self, batch: list[bytes]) -> int:
        return self._push_stream(batch) if self._stream else self._push_datagrams(batch)

    @property
    def _push_keeps_order(self) -> bool:  # type: ignore[override]
        return bool(self._stream)

    def _disconnect(self) -> None:
        self._close_stream()
        self._close_datagram()

    def _send_sync(self, batch: list[bytes]) -> None:
        if self.unixsocket:
            assert isinstance(self.address, str)
            kind = socket.SOCK_STREAM if self._stream else socket.SOCK_DGRAM
            with socket.socket(socket.AF_UNIX, kind) as sock:
                sock.settimeout(self.connect_timeout)
                sock.connect(self.address)
                for data in batch:
                    sock.sendall(data) if self._stream else sock.send(data)
        elif self._stream:
            with socket.create_connection(self._hostport(), self.connect_timeout) as sock:
                sock.sendall(b"".join(batch))
        else:
            host, port = self._hostport()
            info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            with socket.socket(info[0], socket.SOCK_DGRAM) as sock:
                for data in batch:
                    sock.sendto(data, info[4])


def _sd_name(value: str, limit: int) -> str:
    # RFC 5424 header fields: printable US-ASCII without spaces, bounded.
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"
