"""A RESP (Redis protocol) key-value server that redis-cli and redis-benchmark talk to.

Run the self-demo (starts on a free loopback port, talks to itself, exits)::

    python examples/resp_kv.py

Serve until Ctrl-C, then talk to it with the real tools::

    python examples/resp_kv.py serve --port 6380
    redis-cli -p 6380 set greeting hello
    redis-benchmark -p 6380 -t ping,set,get -n 100000 -P 16

or through the anycore command: ``anycore run examples.resp_kv:RespHandler
--bind tcp://127.0.0.1:6380``.

How it is built, and why it is fast:

* :class:`RespParser` is sans-IO: ``feed(bytes)`` then ``next_command()``
  until it returns ``None``.  It handles multibulk (``*2\\r\\n$3\\r\\nGET...``)
  and inline (``PING\\r\\n``) commands, any split of the input, pipelining,
  and limits on every size (``RespError`` on malformed or oversized input).
  Each byte is scanned once; a large bulk argument arriving in many pieces is
  collected in a list and joined once.
* :class:`RespHandler` is an anycore :class:`~anycore.RawHandler`: per read
  batch it parses every complete command and makes one call per command;
  replies go out through ``send()``, which anycore coalesces into one write
  per batch.  Once the replies built reach ``write_high_water``
  (``output_blocked``) it stops, and anycore calls ``writing_resumed()`` when
  the client has read them: a few KB of pipelined ``GET`` of a large value
  cannot build hundreds of MiB of replies.  A protocol error answers
  ``-ERR Protocol error`` and closes only that connection, like redis-server
  (anycore logs it, rate-limited, and counts it in the server's errors).
* Limits (see :class:`RespParser` and :class:`Commands`): 64 MiB per bulk
  argument, 64 MiB per command (an unfinished command cannot hold more),
  128 MiB of unparsed input per connection, 64 MiB per MGET reply.
* :class:`Commands` is the command table over a :class:`Store` (a dict with
  lazy expiry), shared by every connection of the process.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from typing import ClassVar

import anycore
from anycore import RawHandler, RemoteProtocolError

__all__ = ["Commands", "RespError", "RespHandler", "RespParser", "Store", "encode_command"]

CRLF = b"\r\n"


class RespError(RemoteProtocolError):
    """The client sent something that is not RESP (or is over a limit)."""


# Limits (redis's proto-max-bulk-len is 512 MB and client-query-buffer-limit
# 1 GB; a Python server holding that per connection is a memory bomb, so the
# defaults here are smaller and each is a constructor argument).
MAX_BULK = 64 * 1024 * 1024
MAX_COMMAND = 64 * 1024 * 1024
MAX_QUERY_BUFFER = 128 * 1024 * 1024
ARG_OVERHEAD = 48  # what one argument costs beyond its bytes (a bytes object)

# The lengths most requests use, parsed by one dict lookup: only the canonical
# spelling is a key, so " 4", "+4", "4_0" and "04" fall through to the strict
# check.  (About 100 KB once per process.)
_LENGTHS = {b"%d" % i: i for i in range(1024)}


def _strict_length(raw: bytes) -> int | None:
    """A length as redis's string2ll reads it: digits, no leading zero."""
    if raw.isdigit() and (raw[0] != 48 or len(raw) == 1):
        return int(raw)
    return None


class RespParser:
    """Sans-IO RESP request parser.

    Lengths are parsed as redis does: digits only (``$ 4``, ``$+4``, ``$4_0``
    and ``$04`` are refused, though Python's ``int()`` accepts them).

    Args:
        max_inline: longest inline command line, in bytes.
        max_bulk: longest bulk argument, in bytes (redis's proto-max-bulk-len;
            64 MiB here).
        max_args: most arguments in one multibulk command.
        max_command: most memory one command may hold: the sum of its
            argument lengths plus 48 bytes per argument (64 MiB), checked as
            each bulk length is announced, so an unfinished command cannot
            hold more.
        max_query_buffer: most unparsed input held (redis's
            client-query-buffer-limit; 128 MiB here).
    """

    __slots__ = (
        "_args",
        "_big",
        "_big_have",
        "_big_len",
        "_buf",
        "_held",
        "_nargs",
        "_pos",
        "_scan",
        "max_args",
        "max_bulk",
        "max_command",
        "max_inline",
        "max_query_buffer",
    )

    # Bulks at least this large that are not complete yet are collected in a
    # list of chunks instead of re-joining the buffer on every read.
    _BIG = 64 * 1024
    _MAX_HEADER = 32  # "*<digits>\r\n" / "$<digits>\r\n"

    def __init__(
        self,
        *,
        max_inline: int = 64 * 1024,
        max_bulk: int = MAX_BULK,
        max_args: int = 1024 * 1024,
        max_command: int = MAX_COMMAND,
        max_query_buffer: int = MAX_QUERY_BUFFER,
    ) -> None:
        self.max_inline = max_inline
        self.max_bulk = max_bulk
        self.max_args = max_args
        self.max_command = max_command
        self.max_query_buffer = max_query_buffer
        self._held = 0  # bytes the command in progress holds (max_command)
        self._buf = b""
        self._pos = 0
        self._scan = 0  # where the search for an inline line's end resumes
        self._args: list[bytes] | None = None  # a multibulk command in progress
        self._nargs = 0  # arguments it still needs
        self._big: list[bytes] | None = None
        self._big_have = 0
        self._big_len = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed."""
        return len(self._buf) - self._pos + self._big_have

    def feed(self, data: bytes) -> None:
        """Append received bytes.

        Raises:
            RespError: more than ``max_query_buffer`` bytes would be held.
        """
        if self._big is not None:
            self._big.append(data)
            self._big_have += len(data)
            if self._big_have > self.max_query_buffer:
                raise RespError("client query buffer limit reached")
        elif self._pos >= len(self._buf):
            self._buf = data
            self._pos = 0
            self._scan = 0
        else:
            # A partial command (bounded by the header/inline limits or by
            # _BIG), or commands not parsed yet while the output drains, is
            # joined with the new data.
            if len(self._buf) - self._pos + len(data) > self.max_query_buffer:
                raise RespError("client query buffer limit reached")
            self._scan -= self._pos
            self._buf = self._buf[self._pos :] + data
            self._pos = 0

    def next_command(self) -> list[bytes] | None:
        """Return the next complete command as a list of arguments, or None.

        Raises:
            RespError: malformed input or a limit exceeded.  The parser is
                then unusable (close the connection).
        """
        if self._big is not None and not self._finish_big():
            return None
        if self._args is not None:
            return self._continue_multibulk()
        buf = self._buf
        pos = self._pos
        if pos >= len(buf):
            return None
        if buf[pos] == 42:  # b"*"
            nl = buf.find(CRLF, pos)
            if nl < 0:
                if len(buf) - pos > self._MAX_HEADER:
                    raise RespError("invalid multibulk length")
                return None
            if nl - pos > self._MAX_HEADER:  # as when the line came byte by byte
                raise RespError("invalid multibulk length")
            raw = buf[pos + 1 : nl]
            n = _LENGTHS.get(raw)
            if n is None:
                n = _strict_length(raw)
                if n is None:
                    if raw[:1] == b"-" and _strict_length(raw[1:]):
                        self._pos = nl + 2  # "*-1": nothing to run (as redis)
                        return self.next_command()
                    raise RespError("invalid multibulk length")
            if n > self.max_args:
                raise RespError("invalid multibulk length")
            self._pos = nl + 2
            if n == 0:
                return self.next_command()
            self._args = []
            self._nargs = n
            self._held = 0
            return self._continue_multibulk()
        return self._inline()

    def _continue_multibulk(self) -> list[bytes] | None:
        args = self._args
        assert args is not None
        buf = self._buf
        pos = self._pos
        end = len(buf)
        need = self._nargs
        held = self._held
        limit = self.max_command - ARG_OVERHEAD
        lengths = _LENGTHS
        max_bulk = self.max_bulk
        while need:
            if pos >= end:
                break
            if buf[pos] != 36:  # b"$"
                raise RespError(f"expected '$', got '{chr(buf[pos])}'")
            nl = buf.find(CRLF, pos)
            if nl < 0:
                if end - pos > self._MAX_HEADER:
                    raise RespError("invalid bulk length")
                break
            raw = buf[pos + 1 : nl]
            length = lengths.get(raw)
            if length is None:
                # Digits only, no leading zero (redis's string2ll): int() would
                # also take " 4", "+4" and "4_0".
                length = _strict_length(raw)
                if length is None:
                    raise RespError("invalid bulk length")
            if length > max_bulk:
                raise RespError("invalid bulk length")
            if held + length > limit:
                raise RespError(
                    f"command larger than the {self.max_command} byte limit (max_command)"
                )
            start = nl + 2
            stop = start + length
            if stop + 2 > end:
                if length >= self._BIG:
                    # Collect the rest of this bulk as chunks; join once.
                    self._held = held + length + ARG_OVERHEAD
                    self._big = [buf[start:]]
                    self._big_have = end - start
                    self._big_len = length
                    self._buf = b""
                    self._pos = 0
                    self._nargs = need
                    return None
                break
            if buf[stop : stop + 2] != CRLF:
                raise RespError("bulk argument not followed by CRLF")
            args.append(buf[start:stop])
            held += length + ARG_OVERHEAD
            pos = stop + 2
            need -= 1
        self._pos = pos
        self._nargs = need
        self._held = held
        if need:
            return None
        self._args = None
        return args

    def _finish_big(self) -> bool:
        big = self._big
        assert big is not None
        length = self._big_len
        if self._big_have < length + 2:
            return False
        data = b"".join(big)
        self._big = None
        self._big_have = 0
        if data[length : length + 2] != CRLF:
            raise RespError("bulk argument not followed by CRLF")
        assert self._args is not None
        self._args.append(data[:length])
        self._nargs -= 1
        self._buf = data[length + 2 :]
        self._pos = 0
        self._scan = 0
        return True

    def _inline(self) -> list[bytes] | None:
        buf = self._buf
        pos = self._pos
        nl = buf.find(b"\n", max(pos, self._scan))
        if nl < 0:
            if len(buf) - pos > self.max_inline:
                raise RespError("too big inline request")
            self._scan = len(buf)
            return None
        if nl - pos > self.max_inline:
            raise RespError("too big inline request")
        line = buf[pos:nl]
        self._pos = nl + 1
        self._scan = self._pos
        if b'"' in line or b"'" in line:
            raise RespError("quoted inline arguments are not supported; use multibulk")
        args = line.split()
        if not args:
            return self.next_command()  # an empty line is skipped, as by redis
        return args


def encode_command(*args: bytes | str | int) -> bytes:
    """Encode a command as a RESP multibulk request (what clients send)."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


# -- replies ----------------------------------------------------------------------

OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
NULL = b"$-1\r\n"
EMPTY_ARRAY = b"*0\r\n"
ZERO = b":0\r\n"
ONE = b":1\r\n"


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def integer(n: int) -> bytes:
    return b":%d\r\n" % n


def error(message: str) -> bytes:
    return b"-" + message.encode() + CRLF


def wrong_args(name: bytes) -> bytes:
    return error(f"ERR wrong number of arguments for '{name.decode(errors='replace')}' command")


NOT_INTEGER = error("ERR value is not an integer or out of range")
SYNTAX = error("ERR syntax error")


# -- the store and the commands ---------------------------------------------------


class Store:
    """Keys to values with optional expiry (lazy: checked on access).

    Args:
        max_keys: refuse to create keys beyond this (``-OOM`` reply).
        clock: monotonic time in seconds.
    """

    def __init__(self, *, max_keys: int = 1_000_000, clock: Callable[[], float] = time.monotonic):
        self.data: dict[bytes, bytes] = {}
        self.expires: dict[bytes, float] = {}
        self.max_keys = max_keys
        self.clock = clock

    def get(self, key: bytes) -> bytes | None:
        if self.expires and key in self.expires and self.expires[key] <= self.clock():
            self.delete(key)
            return None
        return self.data.get(key)

    def delete(self, key: bytes) -> bool:
        self.expires.pop(key, None)
        return self.data.pop(key, None) is not None

    def full(self, key: bytes) -> bool:
        return len(self.data) >= self.max_keys and key not in self.data


class Commands:
    """The command table: ``execute(args) -> reply bytes``.

    Args:
        store: the shared :class:`Store`.
        max_reply: the largest reply one multi-key command (MGET) may build;
            beyond it the command answers an error (64 MiB).
    """

    def __init__(self, store: Store, *, max_reply: int = MAX_COMMAND) -> None:
        self.store = store
        self.max_reply = max_reply
        self.table: dict[bytes, Callable[[list[bytes]], bytes]] = {
            b"PING": self.ping,
            b"ECHO": self.echo,
            b"SET": self.set,
            b"GET": self.get,
            b"DEL": self.delete,
            b"EXISTS": self.exists,
            b"INCR": self.incr,
            b"MGET": self.mget,
            b"EXPIRE": self.expire,
            b"TTL": self.ttl,
            b"PTTL": self.pttl,
            b"CONFIG": self.config,
            b"COMMAND": self.command,
            b"DBSIZE": self.dbsize,
            b"FLUSHALL": self.flushall,
            b"SELECT": self.select,
        }

    def execute(self, args: list[bytes]) -> bytes:
        name = args[0]
        fn = self.table.get(name) or self.table.get(name.upper())
        if fn is None:
            shown = " ".join(f"'{a.decode(errors='replace')}'" for a in args[1:4])
            return error(
                f"ERR unknown command '{name.decode(errors='replace')}', "
                f"with args beginning with: {shown}"
            )
        return fn(args)

    def ping(self, args: list[bytes]) -> bytes:
        if len(args) == 1:
            return PONG
        if len(args) == 2:
            return bulk(args[1])
        return wrong_args(b"ping")

    def echo(self, args: list[bytes]) -> bytes:
        return bulk(args[1]) if len(args) == 2 else wrong_args(b"echo")

    def get(self, args: list[bytes]) -> bytes:
        if len(args) != 2:
            return wrong_args(b"get")
        value = self.store.get(args[1])
        return NULL if value is None else b"$%d\r\n%s\r\n" % (len(value), value)

    def set(self, args: list[bytes]) -> bytes:
        n = len(args)
        if n < 3:
            return wrong_args(b"set")
        store = self.store
        key = args[1]
        if n == 3:  # the fast, common case
            if store.full(key):
                return error("OOM command not allowed: max_keys reached")
            store.data[key] = args[2]
            if store.expires:
                store.expires.pop(key, None)
            return OK
        deadline: float | None = None
        nx = xx = False
        i = 3
        while i < n:
            opt = args[i].upper()
            if opt in (b"EX", b"PX") and i + 1 < n and deadline is None:
                try:
                    amount = int(args[i + 1])
                except ValueError:
                    return NOT_INTEGER
                if amount <= 0:
                    return error("ERR invalid expire time in 'set' command")
                deadline = store.clock() + (amount if opt == b"EX" else amount / 1000)
                i += 2
            elif opt == b"NX" and not xx:
                nx = True
                i += 1
            elif opt == b"XX" and not nx:
                xx = True
                i += 1
            else:
                return SYNTAX
        exists = store.get(key) is not None
        if (nx and exists) or (xx and not exists):
            return NULL
        if store.full(key):
            return error("OOM command not allowed: max_keys reached")
        store.data[key] = args[2]
        if deadline is None:
            store.expires.pop(key, None)
        else:
            store.expires[key] = deadline
        return OK

    def delete(self, args: list[bytes]) -> bytes:
        if len(args) < 2:
            return wrong_args(b"del")
        store = self.store
        return integer(sum(1 for k in args[1:] if store.get(k) is not None and store.delete(k)))

    def exists(self, args: list[bytes]) -> bytes:
        if len(args) < 2:
            return wrong_args(b"exists")
        return integer(sum(1 for k in args[1:] if self.store.get(k) is not None))

    def incr(self, args: list[bytes]) -> bytes:
        if len(args) != 2:
            return wrong_args(b"incr")
        store = self.store
        key = args[1]
        value = store.get(key)
        try:
            n = 0 if value is None else int(value)
        except ValueError:
            return NOT_INTEGER
        n += 1
        if n >= 2**63:
            return error("ERR increment or decrement would overflow")
        if value is None and store.full(key):
            return error("OOM command not allowed: max_keys reached")
        store.data[key] = b"%d" % n
        return integer(n)

    def mget(self, args: list[bytes]) -> bytes:
        if len(args) < 2:
            return wrong_args(b"mget")
        parts = [b"*%d\r\n" % (len(args) - 1)]
        size = 0
        for k in args[1:]:
            v = self.store.get(k)
            if v is None:
                parts.append(NULL)
                continue
            size += len(v)
            if size > self.max_reply:
                # A few bytes of keys naming one large value many times would
                # otherwise build a reply of any size.
                return error(f"ERR reply larger than {self.max_reply} bytes (max_reply)")
            parts.append(bulk(v))
        return b"".join(parts)

    def expire(self, args: list[bytes]) -> bytes:
        if len(args) != 3:
            return wrong_args(b"expire")
        try:
            seconds = int(args[2])
        except ValueError:
            return NOT_INTEGER
        store = self.store
        key = args[1]
        if store.get(key) is None:
            return ZERO
        if seconds <= 0:
            store.delete(key)
        else:
            store.expires[key] = store.clock() + seconds
        return ONE

    def _remaining_ms(self, key: bytes) -> int | None:
        """-2: no key, -1: no expiry, else milliseconds left."""
        store = self.store
        if store.get(key) is None:
            return -2
        deadline = store.expires.get(key)
        if deadline is None:
            return -1
        return max(0, round((deadline - store.clock()) * 1000))

    def ttl(self, args: list[bytes]) -> bytes:
        if len(args) != 2:
            return wrong_args(b"ttl")
        ms = self._remaining_ms(args[1])
        assert ms is not None
        return integer(ms if ms < 0 else (ms + 500) // 1000)

    def pttl(self, args: list[bytes]) -> bytes:
        if len(args) != 2:
            return wrong_args(b"pttl")
        ms = self._remaining_ms(args[1])
        assert ms is not None
        return integer(ms)

    # What CONFIG GET reports: redis-benchmark asks for these two at start
    # (and warns when they are missing); other parameters get an empty answer.
    CONFIG: ClassVar[dict[bytes, bytes]] = {b"save": b"", b"appendonly": b"no"}

    def config(self, args: list[bytes]) -> bytes:
        if len(args) >= 3 and args[1].upper() == b"GET":
            pairs = [(k, v) for k, v in self.CONFIG.items() if any(p == k for p in args[2:])]
            return b"*%d\r\n" % (2 * len(pairs)) + b"".join(bulk(k) + bulk(v) for k, v in pairs)
        if len(args) >= 2 and args[1].upper() == b"GET":
            return wrong_args(b"config|get")
        return error("ERR CONFIG subcommand not supported (only CONFIG GET)")

    def command(self, args: list[bytes]) -> bytes:
        # redis-cli asks COMMAND DOCS for its hints; none is fine.
        return EMPTY_ARRAY

    def dbsize(self, args: list[bytes]) -> bytes:
        return integer(len(self.store.data))

    def flushall(self, args: list[bytes]) -> bytes:
        self.store.data.clear()
        self.store.expires.clear()
        return OK

    def select(self, args: list[bytes]) -> bytes:
        if len(args) == 2 and args[1] == b"0":
            return OK
        return error("ERR DB index is out of range")


# -- the anycore handler ----------------------------------------------------------

_default_commands = Commands(Store())


class RespHandler(RawHandler):
    """One RESP connection.  Every connection of a process shares one store.

    Args:
        commands: the command table (default: the process-wide one).
    """

    # Replies to a pipeline of up to this many bytes may wait in the socket
    # before reading pauses; a client that never reads is cut off by the
    # server's write_buffer_limit.
    write_high_water = 256 * 1024
    write_low_water = 64 * 1024

    def __init__(self, commands: Commands | None = None) -> None:
        self.commands = commands or _default_commands
        self.execute = self.commands.execute
        self.parser = RespParser()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed(data)
        except RespError as exc:
            self._protocol_error(exc)
            return
        self.writing_resumed()

    def writing_resumed(self) -> None:
        """Run the commands parsed so far, until the replies built reach
        ``write_high_water`` (``output_blocked``): anycore then writes them,
        waits for the client to read, and calls this again."""
        parser = self.parser
        execute = self.execute
        send = self.send
        high = self.write_high_water
        built = 0
        try:
            while (args := parser.next_command()) is not None:
                if args[0] in (b"QUIT", b"quit"):
                    send(OK)
                    self.close()
                    return
                reply = execute(args)
                send(reply)
                built += len(reply)
                if built >= high and self.output_blocked:
                    return  # the rest stays in the parser until the output drained
        except RespError as exc:
            self._protocol_error(exc)

    def _protocol_error(self, exc: RespError) -> None:
        # Answer as redis does, then let anycore end the connection: it logs
        # malformed input rate-limited (a flood of garbage connections costs a
        # few lines and a summary), counts it, and writes the answer first.
        self.send(error(f"ERR Protocol error: {exc}"))
        raise exc


def handler_factory(commands: Commands) -> Callable[[], RespHandler]:
    """A factory of handlers sharing ``commands`` (e.g. a store per server)."""
    return lambda: RespHandler(commands)


# -- a minimal client, for the demo -----------------------------------------------


async def read_reply(reader: asyncio.StreamReader) -> object:
    """Read one RESP reply (enough of RESP2 for the demo and the tests)."""
    line = await reader.readline()
    if not line.endswith(CRLF):
        raise ConnectionError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        return (await reader.readexactly(n + 2))[:-2]
    if kind == b"*":
        return [await read_reply(reader) for _ in range(int(rest))]
    raise ValueError(f"not a RESP reply: {line!r}")


async def demo() -> None:
    """Serve on a free loopback port, send a pipeline, print the replies."""
    commands = Commands(Store())
    async with anycore.serve(handler_factory(commands), "tcp://127.0.0.1:0") as server:
        print(f"RESP server on {server.endpoints[0]}")
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        pipeline = [
            ("PING",),
            ("SET", "greeting", "hello"),
            ("GET", "greeting"),
            ("INCR", "counter"),
            ("INCR", "counter"),
            ("SET", "session", "x", "EX", "100"),
            ("TTL", "session"),
            ("MGET", "greeting", "counter", "missing"),
            ("EXISTS", "greeting", "missing"),
            ("DEL", "greeting"),
            ("GET", "greeting"),
        ]
        writer.write(b"".join(encode_command(*c) for c in pipeline) + b"ECHO inline\r\n")
        with anycore.fail_after(10):
            for command in [*pipeline, ("ECHO", "inline")]:
                reply = await read_reply(reader)
                print(f"{' '.join(command)} -> {reply!r}")
        writer.close()
        await writer.wait_closed()
    print("done")


async def serve_forever(host: str, port: int) -> None:
    """Serve until the runtime shuts down (SIGINT / SIGTERM)."""
    async with anycore.serve(RespHandler, f"tcp://{host}:{port}") as server:
        print(f"RESP server on {server.endpoints[0]}; try: redis-cli -p {server.port}", flush=True)
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode")
    serve_p = sub.add_parser("serve", help="serve until interrupted")
    serve_p.add_argument("--host", default="127.0.0.1")
    serve_p.add_argument("--port", type=int, default=6380)
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
