"""HTTP log shipping: batched JSON POSTs from the loop.

Owns :class:`HTTPHandler`: one kept-alive connection on asyncio streams
driven by h11 (the ``anycore[http]`` extra), a sans-IO HTTP/1.1 state
machine that reads Content-Length, chunked (with trailers) and
close-delimited bodies, skips 1xx answers and says when the connection must
close.  Response heads and bodies are bounded.  Rejected: a hand-written
client (it delivered records twice when a chunked answer had a trailer),
aiohttp/httpx (a client stack for one POST) and ``http.client`` in a thread
(a thread hop per batch; it remains the last-resort path at interpreter
exit).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import logging.handlers
import ssl
from typing import TYPE_CHECKING, Any

from ..errors import RemoteProtocolError
from ._net import AsyncNetworkHandler, _Refused, _StreamMixin
from ._records import record_to_dict

if TYPE_CHECKING:
    import h11

__all__ = ["HTTPHandler"]

_MAX_HEADER = 64 * 1024
_MAX_BODY = 1 << 20


def _import_h11() -> Any:
    try:
        import h11
    except ImportError:
        raise ImportError(
            "anycore.logging.HTTPHandler needs h11: pip install 'anycore[http]'"
        ) from None
    return h11


def _split_host(host: str, secure: bool) -> tuple[str, int]:
    # "host", "host:port", "[v6]" or "[v6]:port", with a clear error.
    name, port = host, ""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise ValueError(f"HTTPHandler host {host!r}: an IPv6 address needs a closing ']'")
        name, rest = host[1:end], host[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"HTTPHandler host {host!r}: expected [address]:port")
        port = rest[1:]
    elif host.count(":") == 1:
        name, port = host.split(":")
    elif host.count(":") > 1:
        raise ValueError(
            f"HTTPHandler host {host!r}: put an IPv6 address in brackets, e.g. '[::1]:8080'"
        )
    if not name:
        raise ValueError(f"HTTPHandler host {host!r}: no host name")
    if not port:
        return name, 443 if secure else 80
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"HTTPHandler host {host!r}: the port must be a number from 1 to 65535")
    return name, int(port)


class HTTPHandler(_StreamMixin, AsyncNetworkHandler):
    """POSTs batches of records as a JSON array, over one kept-alive connection.

    Each record becomes the JSON object of :meth:`mapLogRecord` (the record's
    attributes, message merged).  A 2xx answer means delivered; 5xx, 408 and
    429 answers and connection errors are retried after a backoff; any other
    status drops the batch (counted in :attr:`dropped`).  The HTTP/1.1
    client is h11 on asyncio streams: ``pip install 'anycore[http]'``.

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
        self._h11 = _import_h11()
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
        self._hostname, self._port = _split_host(host, secure)
        self._reader: asyncio.StreamReader | None = None
        self._conn: h11.Connection | None = None

    def mapLogRecord(self, record: logging.LogRecord) -> dict[str, Any]:
        """The JSON object sent for ``record`` (stdlib name; override to reshape)."""
        d = record_to_dict(record, self.formatter)
        d["message"] = d["msg"]
        return d

    def _prepare(self, record: logging.LogRecord) -> bytes:
        return json.dumps(self.mapLogRecord(record), default=repr).encode()

    def _request_headers(self, length: int) -> list[tuple[str, str]]:
        headers = [
            ("Host", self.host),
            ("Content-Type", "application/json"),
            ("Content-Length", str(length)),
            ("User-Agent", "anycore-logging"),
        ]
        if self.credentials:
            token = base64.b64encode(":".join(self.credentials).encode()).decode()
            headers.append(("Authorization", f"Basic {token}"))
        return headers

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
        self._conn = self._h11.Connection(self._h11.CLIENT, max_incomplete_event_size=_MAX_HEADER)

    async def _send(self, batch: list[bytes]) -> None:
        body = b"[" + b",".join(batch) + b"]"
        await asyncio.wait_for(self._exchange(body), self.timeout)

    async def _exchange(self, body: bytes) -> None:
        reader, conn = self._reader, self._conn
        if reader is None or conn is None:
            raise ConnectionResetError("not connected")
        h11 = self._h11
        try:
            request = conn.send(
                h11.Request(
                    method=self.method, target=self.url, headers=self._request_headers(len(body))
                )
            )
            request += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
            await self._write_stream(request)
            status = await _read_response(h11, conn, reader)
        except h11.ProtocolError as exc:
            raise RemoteProtocolError(f"log sink answered badly: {exc}") from None
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()  # kept alive
        else:  # Connection: close, a close-delimited body, HTTP/1.0
            self._connected = False
            self._disconnect()
        if 200 <= status < 300:
            return
        if status >= 500 or status in (408, 429):
            raise ConnectionResetError(f"log sink answered HTTP {status}")
        raise _Refused(f"log sink refused the batch with HTTP {status}")

    def _disconnect(self) -> None:
        self._reader = None
        self._conn = None
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


async def _read_response(h11: Any, conn: h11.Connection, reader: asyncio.StreamReader) -> int:
    """Read one answer to the end (1xx answers skipped); returns its status."""
    status = 0
    body = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            conn.receive_data(data)  # b"" is EOF: ends a close-delimited body
            if not data and conn.their_state is h11.SEND_RESPONSE:
                raise ConnectionResetError("log sink closed the connection")
            continue
        if isinstance(event, h11.InformationalResponse):
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += len(event.data)
            if body > _MAX_BODY:
                raise RemoteProtocolError("HTTP response body too large")
        elif isinstance(event, h11.EndOfMessage):
            return status
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionResetError("log sink closed the connection")
