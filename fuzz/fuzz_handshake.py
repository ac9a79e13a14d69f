"""atheris harness: the messaging handshake and anycore.Connection's framing.

One end of a socketpair is an :class:`anycore.Connection`; the other end
sends the fuzz input, then hangs up.  Byte 0 picks the loop (asyncio or
uvloop) and what the Connection does with the bytes:

* ``deliver``: the listener's half of the handshake (challenge, then read
  the answer: the input);
* ``answer``: the client's half (the input is the challenge and the verdict);
* ``server`` / ``client``: the whole mutual handshake either side runs
  (``Listener.accept`` / ``Client``);
* ``recv-bytes``: messages read with ``recv_bytes`` (a small
  ``max_message_size`` and ``maxlength``);
* ``recv-json`` / ``recv-msgpack``: messages decoded by a codec that does
  not run code (the pickle codec is for authenticated peers only).

Properties: only :class:`anycore.errors.AnycoreError` escapes; the mutual
handshake never succeeds (the input cannot know the random challenge) and
fails with :class:`anycore.AuthenticationError` only, as does
``deliver_challenge``; nothing hangs (EOF always comes); no file descriptor
leaks; and one input costs bounded memory (message buffers are bounded by
``max_message_size``, the handshake's by 256 bytes).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Awaitable, Callable

from _harness import MemoryBound, Reader, instrumented, main

with instrumented():
    from anycore import AuthenticationError, Connection, UndecodableMessage

    # Private: the handshake's halves (deliver_challenge / answer_challenge).
    from anycore._messaging import _connection as _conn
    from anycore.errors import AnycoreError

import uvloop

KEY = b"fuzz-authkey"
MAX_MESSAGE = 4096
MEMORY = MemoryBound(per_byte=64, fixed=1024 * 1024)
LOOPS = [asyncio.new_event_loop(), uvloop.new_event_loop()]
MODES = ["deliver", "answer", "server", "client", "recv-bytes", "recv-json", "recv-msgpack"]
MAX_INPUT = 64 * 1024  # fits in a socketpair's buffer: sent before the Connection reads


async def deliver(conn: Connection) -> None:
    await _conn.deliver_challenge(conn, KEY)


async def answer(conn: Connection) -> None:
    await _conn.answer_challenge(conn, KEY)


async def server(conn: Connection) -> None:
    await _conn._authenticate(conn, KEY, True, None)


async def client(conn: Connection) -> None:
    await _conn._authenticate(conn, KEY, False, None)


async def recv_all(conn: Connection, decode: bool) -> None:
    maxlength: int | None = None
    for i in range(1000):  # bounded: each message takes at least 4 bytes
        maxlength = None if i % 2 else MAX_MESSAGE // 2
        if decode:
            try:
                await conn.recv()
            except UndecodableMessage:
                pass  # the framing is intact: the next message is read
        else:
            body = await conn.recv_bytes(maxlength)
            if len(body) > (maxlength or MAX_MESSAGE):
                raise AssertionError(f"a message of {len(body)} bytes was returned")
    raise AssertionError("more messages than the input can hold")


ACTIONS: dict[str, Callable[[Connection], Awaitable[None]]] = {
    "deliver": deliver,
    "answer": answer,
    "server": server,
    "client": client,
    "recv-bytes": lambda conn: recv_all(conn, decode=False),
    "recv-json": lambda conn: recv_all(conn, decode=True),
    "recv-msgpack": lambda conn: recv_all(conn, decode=True),
}
CODECS = {"recv-json": "json", "recv-msgpack": "msgpack"}


async def one_round(mode: str, payload: bytes) -> BaseException | None:
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(payload)
        theirs.shutdown(socket.SHUT_WR)
        conn = Connection(
            ours.detach(), codec=CODECS.get(mode, "pickle"), max_message_size=MAX_MESSAGE
        )
        try:
            async with asyncio.timeout(10):
                await ACTIONS[mode](conn)
        except AnycoreError as exc:
            return exc
        finally:
            conn.close()
        return None
    finally:
        ours.close()
        theirs.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


FDS = open_fds()


def test_one_input(data: bytes) -> None:
    reader = Reader(data)
    head = reader.byte()
    loop = LOOPS[head & 1]
    mode = MODES[(head >> 1) % len(MODES)]
    payload = reader.rest()[:MAX_INPUT]
    with MEMORY.check(data):
        error = loop.run_until_complete(one_round(mode, payload))
    if mode in ("deliver", "server", "client"):
        # The input cannot know the random challenge: never accepted, and
        # refused as an authentication failure (nothing else).
        if not isinstance(error, AuthenticationError):
            raise AssertionError(f"{mode}: {error!r} instead of AuthenticationError")
    elif mode == "answer" and error is not None and not isinstance(error, AuthenticationError):
        raise AssertionError(f"answer: {error!r}")
    elif mode.startswith("recv") and error is None:  # the input ends: so must reading
        raise AssertionError(f"{mode} ended without an error")
    if open_fds() != FDS:
        raise AssertionError(f"{open_fds() - FDS} file descriptors leaked")


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big", signed=True) + body


def seeds() -> list[bytes]:
    out = []
    answers = [
        _frame(b"{sha256}" + b"\0" * 32),
        _frame(b"#CHALLENGE#{sha256}" + b"\1" * 40) + _frame(b"#WELCOME#"),
        _frame(b"#CHALLENGE#" + b"\2" * 20) + _frame(b"#FAILURE#"),
        _frame(b"\3" * 16),
        b"\xff\xff\xff\xff" + (300).to_bytes(8, "big") + b"x" * 300,
        _frame(b'{"a": [1, 2, 3]}') + _frame(b"\x93\x01\x02\x03") + _frame(b"") + b"\0\0",
    ]
    for mode in range(len(MODES)):
        for loop in (0, 1):
            out += [bytes([mode << 1 | loop]) + body for body in answers]
    return out


def _close_loops() -> None:
    for loop in LOOPS:
        loop.close()


if __name__ == "__main__":
    import atexit

    atexit.register(_close_loops)
    main(test_one_input, seeds())
    sys.exit(0)
