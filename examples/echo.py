"""Echo server and client.

The server sends back every byte it receives (:class:`EchoHandler`, a
:class:`~anycore.RawHandler`: no framing, one write per read batch).  The client
(:class:`EchoClient`, a :class:`~anycore.LineHandler`) sends lines and hands the
echoed lines to a bounded queue; its ``line_received`` is async, so when the
queue is full anycore stops reading from the socket (backpressure) instead of
buffering without limit.

Self-demo (a free loopback port, a few lines, exit)::

    python examples/echo.py

Serve until Ctrl-C / SIGTERM, and talk to it::

    python examples/echo.py serve --port 7000
    python examples/echo.py client --port 7000 hello world
    nc 127.0.0.1 7000

With the anycore command: ``anycore run examples.echo:EchoHandler --bind tcp://127.0.0.1:7000``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import anycore
from anycore import LineHandler, RawHandler


class EchoHandler(RawHandler):
    """Send back whatever arrives."""

    def data_received(self, data: bytes) -> None:
        self.send(data)


class EchoClient(LineHandler):
    """Collect echoed lines (``\\n``-terminated) in a bounded queue."""

    delimiter = b"\n"

    def __init__(self, maxsize: int = 100) -> None:
        self.lines: asyncio.Queue[bytes] = asyncio.Queue(maxsize)

    async def line_received(self, line: bytes) -> None:
        await self.lines.put(line)

    async def ask(self, line: bytes, timeout: float = 10.0) -> bytes:
        """Send one line and wait (at most ``timeout`` seconds) for its echo."""
        self.send_line(line)
        with anycore.fail_after(timeout):
            return await self.lines.get()


async def talk(endpoint: str, words: list[str]) -> list[bytes]:
    """Connect to an echo server, send each word as a line, return the echoes."""
    client = await anycore.connect(endpoint, EchoClient)
    try:
        return [await client.ask(word.encode()) for word in words]
    finally:
        client.close()
        await client.wait_closed()


async def demo() -> None:
    async with anycore.serve(EchoHandler, "tcp://127.0.0.1:0") as server:
        endpoint = str(server.endpoints[0])
        print(f"echo server on {endpoint}")
        for echoed in await talk(endpoint, ["hello", "anycore", "echo"]):
            print(f"echoed: {echoed.decode()}")
        stats = server.statistics()
        print(f"server saw {stats.total_connections} connection(s)")
    print("done")


async def serve_forever(host: str, port: int) -> None:
    async with anycore.serve(EchoHandler, f"tcp://{host}:{port}") as server:
        print(f"echo server on {server.endpoints[0]}", flush=True)
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="anycore echo server and client")
    sub = parser.add_subparsers(dest="mode")
    s = sub.add_parser("serve", help="serve until interrupted")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=7000)
    c = sub.add_parser("client", help="send words, print the echoes")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, default=7000)
    c.add_argument("words", nargs="+")
    args = parser.parse_args(argv)
    if args.mode == "serve":
        try:
            anycore.run(serve_forever, args.host, args.port)
        except anycore.GracefulExit:
            pass
    elif args.mode == "client":
        for echoed in anycore.run(talk, f"tcp://{args.host}:{args.port}", args.words):
            print(echoed.decode())
    else:
        anycore.run(demo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
