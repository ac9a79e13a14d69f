"""Baseline: the leanest Python RESP server for PING / SET / GET, as a bare asyncio.Protocol.

This is what a user would write instead of a framework for the requests
``redis-benchmark -t ping,set,get`` sends: one function, :func:`respond`,
parses every complete command of a buffer (inline ``PING\\r\\n`` and
multibulk ``*1\\r\\n$4\\r\\nPING\\r\\n``) and builds the replies of the whole
buffer as one bytes object; what is left over (a command cut by the read)
waits for the next read.  No limits, no command table beyond what the
benchmark needs (plus ``CONFIG GET``, which redis-benchmark asks at start),
no per-command call: it is the floor for Python.

The same :func:`respond` runs in two servers, so the only difference between
them is the layer around it:

* :class:`MinProtocol` - a bare ``asyncio.Protocol`` on uvloop
  (``python benchmarks/_baselines/resp_min.py --port 0``, prints
  ``READY tcp://127.0.0.1:PORT``);
* ``resp_min_handler.MinHandler`` - an anycore ``RawHandler`` (``anycore run
  --app-dir benchmarks/_baselines resp_min_handler:MinHandler --bind
  tcp://127.0.0.1:0``).

This module does not import anycore: the bare server loads nothing of it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

PONG = b"+PONG\r\n"
OK = b"+OK\r\n"
NULL = b"$-1\r\n"
# CONFIG GET save appendonly, which redis-benchmark asks at start.
CONFIG = b"*4\r\n$4\r\nsave\r\n$0\r\n\r\n$10\r\nappendonly\r\n$2\r\nno\r\n"

# One store per process, shared by the connections (as redis has one keyspace).
STORE: dict[bytes, bytes] = {}


class ProtocolError(ValueError):
    """Not RESP: the connection answers -ERR and closes."""


def _reply(args: list[bytes], store: dict[bytes, bytes]) -> bytes:
    name = args[0]
    if name != b"PING" and name != b"GET" and name != b"SET":
        name = name.upper()
    n = len(args)
    if name == b"PING" and n == 1:
        return PONG
    if name == b"GET" and n == 2:
        value = store.get(args[1])
        return NULL if value is None else b"$%d\r\n%s\r\n" % (len(value), value)
    if name == b"SET" and n == 3:
        store[args[1]] = args[2]
        return OK
    if name == b"CONFIG":
        return CONFIG
    return b"-ERR unknown command or wrong number of arguments\r\n"


def respond(buf: bytes, store: dict[bytes, bytes] = STORE) -> tuple[bytes, bytes]:
    """Parse every complete command in ``buf``; return (replies, leftover bytes).

    Raises:
        ProtocolError: malformed input.
    """
    out: list[bytes] = []
    pos = 0
    end = len(buf)
    find = buf.find
    try:
        while pos < end:
            nl = find(b"\r\n", pos)
            if nl < 0:
                break
            if buf[pos] != 42:  # inline: "PING\r\n"
                args = buf[pos:nl].split()
                pos = nl + 2
                if args:
                    out.append(_reply(args, store))
                continue
            # multibulk: "*<n>\r\n" then n x "$<len>\r\n<bytes>\r\n"
            count = int(buf[pos + 1 : nl])
            p = nl + 2
            if count <= 0:  # "*0" / "*-1": nothing to run
                pos = p
                continue
            args = []
            while count:
                nl = find(b"\r\n", p)
                if nl < 0:
                    break
                if buf[p] != 36:  # "$"
                    raise ProtocolError("expected '$'")
                start = nl + 2
                stop = start + int(buf[p + 1 : nl])
                if stop + 2 > end:
                    break
                args.append(buf[start:stop])
                p = stop + 2
                count -= 1
            if count:
                break  # incomplete: wait for more
            pos = p
            if args:
                out.append(_reply(args, store))
    except ValueError as exc:  # int() of a bad length, or ProtocolError
        raise ProtocolError(str(exc)) from None
    reply = out[0] if len(out) == 1 else b"".join(out)
    return reply, buf[pos:] if pos < end else b""


def error_reply(exc: Exception) -> bytes:
    return b"-ERR Protocol error: %s\r\n" % str(exc).encode(errors="replace")


class MinProtocol(asyncio.Protocol):
    """The bare asyncio.Protocol around :func:`respond`."""

    def __init__(self) -> None:
        self.rest = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if self.rest:
            data = self.rest + data
        try:
            reply, self.rest = respond(data)
        except ProtocolError as exc:
            transport.write(error_reply(exc))
            transport.close()
            return
        if reply:
            transport.write(reply)


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(MinProtocol, host, port, backlog=1024)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"READY tcp://{host}:{server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    import uvloop

    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    uvloop.run(main(a.host, a.port))
