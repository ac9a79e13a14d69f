"""A classic asynchat server, ported to anycore by changing two lines.

``http_request_handler`` below is written the way asynchat code was written:
headers end at ``\\r\\n\\r\\n``, a POST body is read with an integer terminator
(``Content-Length``), replies go out with ``push`` / ``push_with_producer``
and ``close_when_done``.  The port changed only its base class
(``asynchat.async_chat`` -> ``anycore.AsyncChat``) and the loop call
(``asyncore.loop()`` with a dispatcher accepting sockets ->
``anycore.serve(factory, "tcp://host:port")``).

Self-demo (a free loopback port, one POST and one GET, exit)::

    python examples/asynchat_compat.py

Serve until Ctrl-C / SIGTERM::

    python examples/asynchat_compat.py serve --port 8080
    curl -d 'hello world' http://127.0.0.1:8080/reverse
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import anycore
from anycore import AsyncChat, simple_producer


class http_request_handler(AsyncChat):  # was: asynchat.async_chat
    """Answers POST with the body reversed, GET /N with N bytes (from a producer)."""

    def __init__(self, sock: object = None, addr: object = None) -> None:
        AsyncChat.__init__(self, sock=sock)
        self.addr = addr
        self.ibuffer: list[bytes] = []
        self.set_terminator(b"\r\n\r\n")
        self.reading_headers = True
        self.handling = False
        self.op = b""
        self.path = b""
        self.headers: dict[bytes, bytes] = {}
        self.body = b""

    def collect_incoming_data(self, data: bytes) -> None:
        self.ibuffer.append(data)

    def found_terminator(self) -> None:
        if self.reading_headers:
            self.reading_headers = False
            self.parse_headers(b"".join(self.ibuffer))
            self.ibuffer = []
            if self.op.upper() == b"POST":
                self.set_terminator(int(self.headers.get(b"content-length", b"0")))
            else:
                self.handling = True
                self.set_terminator(None)
                self.handle_request()
        elif not self.handling:
            self.set_terminator(None)  # ignore anything sent after the body
            self.body = b"".join(self.ibuffer)
            self.ibuffer = []
            self.handling = True
            self.handle_request()

    def parse_headers(self, data: bytes) -> None:
        request, *lines = data.split(b"\r\n")
        self.op, self.path, _version = [*request.split(b" ", 2), b"", b""][:3]
        for line in lines:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower()] = value.strip()

    def handle_request(self) -> None:
        if self.op == b"POST":
            reply = self.body[::-1]
            self.push(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(reply))
            self.push(reply)
        else:
            digits = self.path.strip(b"/")
            size = min(int(digits), 10_000_000) if digits.isdigit() else 0
            self.push(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            self.push_with_producer(simple_producer(b"x" * size, 4096))
        self.close_when_done()


async def request(port: int, data: bytes) -> bytes:
    """Send one request on a new connection; return the reply up to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return reply


async def demo() -> None:
    # was: a dispatcher whose handle_accepted() made http_request_handler(sock, addr),
    # then asyncore.loop().
    async with anycore.serve(http_request_handler, "tcp://127.0.0.1:0") as server:
        print(f"asynchat-style server on {server.endpoints[0]}")
        reply = await request(
            server.port, b"POST /reverse HTTP/1.0\r\nContent-Length: 11\r\n\r\nhello world"
        )
        print("POST reply:", reply.split(b"\r\n\r\n", 1)[1].decode())
        reply = await request(server.port, b"GET /100000 HTTP/1.0\r\n\r\n")
        print("GET reply body bytes:", len(reply.split(b"\r\n\r\n", 1)[1]))
    print("done")


async def serve_forever(host: str, port: int) -> None:
    async with anycore.serve(http_request_handler, f"tcp://{host}:{port}") as server:
        print(f"asynchat-style server on {server.endpoints[0]}", flush=True)
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a classic async_chat server on anycore")
    sub = parser.add_subparsers(dest="mode")
    s = sub.add_parser("serve", help="serve until interrupted")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    if args.mode == "serve":
        try:
            anycore.run(serve_forever, args.host, args.port)
        except anycore.GracefulExit:
            pass
    else:
        anycore.run(demo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
