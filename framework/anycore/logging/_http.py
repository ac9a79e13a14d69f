"""HTTP log shipping: batched JSON POSTs from the loop.

Owns :class:`HTTPHandler` and the small HTTP/1.1 client it needs (one
kept-alive connection on asyncio streams: a request with Content-Length, a
response read by Content-Length or chunked encoding, bounded).  Rejected:
aiohttp/httpx (a dependency for one POST) and ``http.client`` in a thread (a
thread hop per batch; it remains the last-resort path at interpreter exit).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import logging.handlers
import ssl
import urllib.parse
from typing import Any

from ..errors import RemoteProtocolError
from ._net import AsyncNetworkHandler, _Refused, _StreamMixin
from ._records import record_to_dict

__all__ = ["HTTPHandler"]

_MAX_HEADER = 64 * 1024
_MAX_BODY = 1 << 20


class HTTPHandler(_StreamMixin, AsyncNetworkHandler):
    """POSTs batches of records as a JSON array, over one kept-alive connection.

    Each record becomes the JSON object of :meth:`mapLogRecord` (the record's
    attributes, message merged).  A 2xx answer means delivered; 5xx, 408 and
    429 answers and connection errors are retried after a backoff; any other
    status drops the batch (counted in :attr:`dropped`).  The client is a
    small HTTP/1.1 client on asyncio streams (no dependency).

    Args:
        host: ``"host"`` or ``"host:port"`` (port 80, or 443 with ``secure``).
        url: the request path, e.g. ``"/logs"``.
        method: ``"POST"`` (default) or ``"PUT"``.
        secure: use TLS (with ``context`` or the default context).
        credentials: ``(user, password)`` for HTTP basic authentication.
        context: an :class:`ssl.SSLContext` for ``secure``.
        timeout: seconds allowed for one request and its answer.
        **options: see :class:`AsyncNetworkHandler`.
    """

    def __init__(
        self,
        host: str,
        url: str,
        method: str = "POST",
        secure: bool = False,
        credentials: tuple[str, str] | None = None,
        context: ssl.SSLContext | None = None,
        *,
        timeout: float = 10.0,
        **options: Any,
    ) -> None:
        options.setdefault("max_batch", 100)
        super().__init__(**options)
        method = method.upper()
        if method not in ("POST", "PUT"):
            raise ValueError("HTTPHandler sends JSON bodies: method must be POST or PUT")
        self.host = host
        self.url = url if url.startswith("/") else "/" + url
        self.method = method
        self.secure = secure
        self.credentials = credentials
        self.context = context
        self.timeout = timeout
        parsed = urllib.parse.urlsplit("//" + host)
        self._hostname = parsed.hostname or host
        self._port = parsed.port or (443 if secure else 80)
        self._reader: asyncio.StreamReader | None = None

    def mapLogRecord(self, record: logging.LogRecord) -> dict[str, Any]:
        """The JSON object sent for ``record`` (stdlib name; override to reshape)."""
        d = record_to_dict(record, self.formatter)
        d["message"] = d["msg"]
        return d

    def _prepare(self, record: logging.LogRecord) -> bytes:
        return json.dumps(self.mapLogRecord(record), default=repr).encode()

    def _request_head(self, length: int) -> bytes:
        lines = [
            f"{self.method} {self.url} HTTP/1.1",
            f"Host: {self.host}",
            "Content-Type: application/json",
            f"Content-Length: {length}",
            "User-Agent: anycore-logging",
        ]
        if self.credentials:
            token = base64.b64encode(":".join(self.credentials).encode()).decode()
            lines.append(f"Authorization: Basic {token}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _connect(self) -> None:
        ctx = None
        if self.secure:
            ctx = self.context or ssl.create_default_context()
        if ctx is None:
            reader, writer = await asyncio.open_connection(self._hostname, self._port)
        else:
            reader, writer = await asyncio.open_connection(
                self._hostname, self._port, ssl=ctx, server_hostname=self._hostname
            )
        self._reader, self._writer = reader, writer

    async def _send(self, batch: list[bytes]) -> None:
        body = b"[" + b",".join(batch) + b"]"
        await asyncio.wait_for(self._exchange(body), self.timeout)

    async def _exchange(self, body: bytes) -> None:
        reader = self._reader
        if reader is None:
            raise ConnectionResetError("not connected")
        await self._write_stream(self._request_head(len(body)) + body)
        status, headers = await _read_head(reader)
        await _read_body(reader, headers)
        if headers.get("connection", "").lower() == "close":
            self._connected = False
            self._disconnect()
        if 200 <= status < 300:
            return
        if status >= 500 or status in (408, 429):
            raise ConnectionResetError(f"log sink answered HTTP {status}")
        raise _Refused(f"log sink refused the batch with HTTP {status}")

    def _disconnect(self) -> None:
        self._reader = None
        self._close_stream()

    def _send_sync(self, batch: list[bytes]) -> None:
        import http.client

        conn_cls = http.client.HTTPSConnection if self.secure else http.client.HTTPConnection
        kwargs: dict[str, Any] = {"timeout": self.timeout}
        if self.secure and self.context is not None:
            kwargs["context"] = self.context
        conn = conn_cls(self._hostname, self._port, **kwargs)
        try:
            body = b"[" + b",".join(batch) + b"]"
            headers = {"Content-Type": "application/json"}
            if self.credentials:
                token = base64.b64encode(":".join(self.credentials).encode()).decode()
                headers["Authorization"] = f"Basic {token}"
            conn.request(self.method, self.url, body, headers)
            conn.getresponse().read()
        finally:
            conn.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise ConnectionResetError("log sink closed the connection") from exc
    except asyncio.LimitOverrunError as exc:
        raise RemoteProtocolError("HTTP response head too large") from exc
    if len(head) > _MAX_HEADER:
        raise RemoteProtocolError("HTTP response head too large")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise RemoteProtocolError(f"bad HTTP status line: {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        total = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            total += size
            if total > _MAX_BODY:
                raise RemoteProtocolError("HTTP response body too large")
            await reader.readexactly(size + 2)
            if size == 0:
                return
    length = int(headers.get("content-length", "0") or "0")
    if length > _MAX_BODY:
        raise RemoteProtocolError("HTTP response body too large")
    if length:
        await reader.readexactly(length)
