"""atheris harness: the RESP request parser (and command table) of examples/resp_kv.py.

Input layout: byte 0 picks the limits (small ones, so that they are hit),
byte 1 seeds the cut points; the rest is what a client sends.  Every
complete command is also executed against a fresh store.

Properties: only ``RespError`` (a :class:`anycore.RemoteProtocolError`)
escapes the parser, and nothing escapes the command table; a command is a
non-empty list of bytes within ``max_command``; the parser never holds
more than ``max_query_buffer`` (plus a header); the commands and the error
do not depend on how the input was cut into reads; every reply is one
RESP value; and one input costs bounded memory.
"""

from __future__ import annotations

import random
import sys

from _harness import MemoryBound, Reader, instrumented, main

with instrumented("resp_kv"):
    import resp_kv
    from anycore.errors import AnycoreError

# (max_inline, max_bulk, max_args, max_command, max_query_buffer)
LIMITS = [
    (64, 16, 4, 64, 128),
    (1024, 256, 64, 1024, 4096),
    (16, 4096, 1024, 8192, 16384),
    (64 * 1024, 1 << 20, 1 << 16, 1 << 20, 1 << 21),
]
MEMORY = MemoryBound(per_byte=64, fixed=512 * 1024)

# Known bugs (each the strict xfail of tests/test_fuzz.py whose inputs the
# checks skip; ANYCORE_FUZZ_KNOWN=report reports them instead): none now.
KNOWN_BUGS: dict[str, str] = {}


def parse(reads: list[bytes], limits: tuple[int, ...]) -> tuple[list[list[bytes]], str | None]:
    max_inline, max_bulk, max_args, max_command, max_query_buffer = limits
    parser = resp_kv.RespParser(
        max_inline=max_inline,
        max_bulk=max_bulk,
        max_args=max_args,
        max_command=max_command,
        max_query_buffer=max_query_buffer,
    )
    commands: list[list[bytes]] = []
    try:
        for read in reads:
            parser.feed(read)
            while (cmd := parser.next_command()) is not None:
                if not cmd or not all(type(a) is bytes for a in cmd):
                    raise AssertionError(f"malformed command {cmd!r:.200}")
                if sum(map(len, cmd)) > max_command:
                    raise AssertionError("a command larger than max_command")
                # max_args bounds multibulk commands; an inline one is
                # bounded by max_inline (one byte and a space per argument).
                if len(cmd) > max(max_args, max_inline // 2 + 1):
                    raise AssertionError("more arguments than max_args")
                commands.append(cmd)
            # One read is taken whole (it is in memory already); what is
            # held beyond it is bounded by max_query_buffer.
            if parser.buffered > max(max_query_buffer, len(read)) + 64:
                raise AssertionError(f"{parser.buffered} bytes held")
    except resp_kv.RespError as exc:
        return commands, str(exc)
    except AnycoreError as exc:  # anycore's, though not the parser's own: still a bug
        raise AssertionError(f"the parser raised {exc!r}") from exc
    return commands, None


def cut(stream: bytes, seed: int) -> list[bytes]:
    if seed == 255:
        return [stream[i : i + 1] for i in range(len(stream))]
    rng = random.Random(seed)
    points = sorted(rng.randrange(len(stream) + 1) for _ in range(seed % 13))
    reads, last = [], 0
    for p in points:
        reads.append(stream[last:p])
        last = p
    reads.append(stream[last:])
    return reads


def execute(commands: list[list[bytes]]) -> None:
    now = [1000.0]
    store = resp_kv.Store(max_keys=8, clock=lambda: now[0])
    table = resp_kv.Commands(store, max_reply=4096)
    for cmd in commands:
        reply = table.execute(cmd)
        if type(reply) is not bytes or reply[:1] not in (b"+", b"-", b":", b"$", b"*"):
            raise AssertionError(f"not a RESP reply: {reply!r:.200}")
        if not reply.endswith(b"\r\n"):
            raise AssertionError(f"reply without CRLF: {reply!r:.200}")
        now[0] += 0.5


def test_one_input(data: bytes) -> None:
    reader = Reader(data)
    limits = LIMITS[reader.byte() % len(LIMITS)]
    seed = reader.byte()
    stream = reader.rest()
    with MEMORY.check(data):
        whole = parse([stream], limits)
        split = parse(cut(stream, seed), limits)
        execute(whole[0])
    # An error's message may depend on where the parser stopped; that one
    # was raised, and the commands before it, may not.  (Past
    # max_query_buffer, whether the limit is hit depends on the reads.)
    if len(stream) > limits[4]:
        return
    if split[0] != whole[0] or (split[1] is None) != (whole[1] is None):
        raise AssertionError("cutting the input changed the result")


def seeds() -> list[bytes]:
    enc = resp_kv.encode_command
    streams = [
        enc("SET", "k", "v") + enc("GET", "k") + b"PING\r\n",
        enc("SET", "k", "v", "EX", 10, "NX") + enc("TTL", "k") + enc("PTTL", "k"),
        enc("INCR", "n") + enc("MGET", "k", "n", "x") + enc("EXPIRE", "n", 1),
        enc("DEL", "k") + enc("EXISTS", "k") + enc("DBSIZE") + enc("FLUSHALL"),
        enc("CONFIG", "GET", "save") + enc("COMMAND") + enc("SELECT", 0) + enc("ECHO", "e"),
        b"*-1\r\n*0\r\n\r\nPING a b\n",
        b"*2\r\n$3\r\nGET\r\n$100000\r\n",
    ]
    return [
        bytes([i, s]) + stream for i in range(len(LIMITS)) for s in (0, 3) for stream in streams
    ]


if __name__ == "__main__":
    main(test_one_input, seeds())
    sys.exit(0)
