"""The classic time server, over TCP and over UDP, with a client for each.

Each TCP connection is answered with ``time.ctime()`` and CRLF, then closed
(:class:`TimeHandler`); each UDP datagram, whatever it holds, is answered with
the same line (:class:`TimeDatagramHandler`).

Self-demo (free loopback ports, one TCP and one UDP query, exit)::

    python examples/time_server.py

Serve TCP and UDP on one port number until Ctrl-C / SIGTERM, then ask::

    python examples/time_server.py serve --port 3700
    python examples/time_server.py client --port 3700          # TCP
    python examples/time_server.py client --port 3700 --udp    # UDP
    nc 127.0.0.1 3700            # TCP
    echo | nc -u -w1 127.0.0.1 3700   # UDP

With the anycore command: ``anycore run examples.time_server:TimeHandler
--bind tcp://127.0.0.1:3700``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import anycore
from anycore import DatagramHandler, Handler, RawHandler


def now_line() -> bytes:
    """The reply: the local time as ``time.ctime()`` gives it, then CRLF."""
    return time.ctime().encode("ascii") + b"\r\n"


class TimeHandler(Handler):
    """TCP: answer the connection with the time, then close it."""

    def connection_made(self) -> None:
        self.send(now_line())
        self.close()


class TimeDatagramHandler(DatagramHandler):
    """UDP: answer every datagram with the time."""

    max_datagram_size = 512  # queries carry nothing; refuse big ones

    def datagram_received(self, data: bytes, addr: tuple[object, ...]) -> None:
        self.sendto(now_line(), addr)


class _Collect(RawHandler):
    """Client side of TCP: collect everything until the server closes."""

    max_total = 1024

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0

    def data_received(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_total:
            self.abort()  # not a time server
            return
        self.chunks.append(data)


async def ask_tcp(endpoint: str, timeout: float = 5.0) -> str:
    """Connect, read the line the server sends, return it (without CRLF)."""
    with anycore.fail_after(timeout):
        client = await anycore.connect(endpoint, _Collect)
        await client.wait_closed()
    return b"".join(client.chunks).decode("ascii").rstrip("\r\n")


async def ask_udp(endpoint: str, timeout: float = 2.0, attempts: int = 3) -> str:
    """Send a query datagram, return the answer; retry, since UDP may drop it."""
    async with anycore.open_datagram_endpoint(endpoint) as ep:
        for _ in range(attempts):
            ep.send(b"\n")  # any content will do
            with anycore.move_on_after(timeout):
                data, _addr = await ep.receive()
                return data.decode("ascii").rstrip("\r\n")
    raise TimeoutError(f"no answer from {endpoint} after {attempts} tries")


async def demo() -> None:
    async with (
        anycore.serve(TimeHandler, "tcp://127.0.0.1:0") as tcp,
        anycore.serve_datagram(TimeDatagramHandler, "udp://127.0.0.1:0") as udp,
    ):
        print(f"time server on {tcp.endpoints[0]} and {udp.endpoints[0]}")
        print(f"TCP says: {await ask_tcp(str(tcp.endpoints[0]))}")
        print(f"UDP says: {await ask_udp(str(udp.endpoints[0]))}")
    print("done")


async def serve_forever(host: str, port: int) -> None:
    async with (
        anycore.serve(TimeHandler, f"tcp://{host}:{port}") as tcp,
        anycore.serve_datagram(TimeDatagramHandler, f"udp://{host}:{tcp.port}") as udp,
    ):
        print(f"time server on {tcp.endpoints[0]} and {udp.endpoints[0]}", flush=True)
        await asyncio.gather(tcp.serve_forever(), udp.serve_forever())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="time server and client (TCP and UDP)")
    sub = parser.add_subparsers(dest="mode")
    s = sub.add_parser("serve", help="serve TCP and UDP until interrupted")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=3700)
    c = sub.add_parser("client", help="ask a time server")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, default=3700)
    c.add_argument("--udp", action="store_true", help="ask over UDP instead of TCP")
    args = parser.parse_args(argv)
    if args.mode == "serve":
        try:
            anycore.run(serve_forever, args.host, args.port)
        except anycore.GracefulExit:
            pass
    elif args.mode == "client":
        if args.udp:
            print(anycore.run(ask_udp, f"udp://{args.host}:{args.port}"))
        else:
            print(anycore.run(ask_tcp, f"tcp://{args.host}:{args.port}"))
    else:
        anycore.run(demo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
