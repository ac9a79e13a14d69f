"""HTTPHandler against a real HTTP server (the stdlib's http.server, in a thread).

Each answer style a log collector may use - Content-Length, chunked with a
trailer, close-delimited, a 1xx answer first, ``Connection: close`` - must
deliver every record exactly once.
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from anycore.logging import HTTPHandler


class _Collector(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    style = "length"
    received: list[dict[str, Any]]
    lock: threading.Lock

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            self.received.extend(json.loads(body))
        style = self.style
        if style == "informational":
            self.send_response_only(103)  # an early hint, then the answer
            self.send_header("Link", "</style.css>; rel=preload")
            self.end_headers()
        self.send_response(200)
        if style == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Count")
            self.end_headers()
            self.wfile.write(b"2\r\nok\r\n0\r\nX-Count: 1\r\n\r\n")
        elif style == "close-delimited":
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"accepted, no length")
            self.close_connection = True
        elif style == "connection-close":
            self.send_header("Content-Length", "2")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"ok")
            self.close_connection = True
        else:
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")


@pytest.fixture(
    params=["length", "chunked", "close-delimited", "informational", "connection-close"]
)
def collector(request: pytest.FixtureRequest) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    handler = type(
        "Collector",
        (_Collector,),
        {"style": request.param, "received": received, "lock": threading.Lock()},
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


async def test_every_record_arrives_exactly_once(
    collector: tuple[int, list[dict[str, Any]]],
) -> None:
    port, received = collector
    lg = logging.getLogger("test.http.once")
    lg.propagate = False
    lg.setLevel(logging.INFO)
    handler = HTTPHandler(f"127.0.0.1:{port}", "/logs", max_batch=7, backoff_initial=0.01)
    lg.addHandler(handler)
    try:
        for i in range(50):
            lg.info("record %d", i)
            if i % 10 == 9:
                with anyio.fail_after(20):
                    assert await handler.aflush(20)
    finally:
        lg.removeHandler(handler)
        await handler.aclose()
    assert [r["message"] for r in received] == [f"record {i}" for i in range(50)]
    assert handler.dropped == 0


def test_a_bad_host_gets_a_clear_error() -> None:
    with pytest.raises(ValueError, match="port must be a number from 1 to 65535"):
        HTTPHandler("127.0.0.1:99999", "/logs")
    with pytest.raises(ValueError, match="IPv6 address in brackets"):
        HTTPHandler("::1:8080", "/logs")
    handler = HTTPHandler("[::1]:8080", "/logs")
    assert (handler._hostname, handler._port) == ("::1", 8080)
    handler.close()
