"""Small input must not buy big memory, and closed connections free at once
(issue 19).  Real loopback sockets, asyncio and uvloop."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from typing import ClassVar

import pytest

import anycore
from anycore import Handler, LineHandler, RawHandler, serve

REPLY = 256 * 1024


class Big(LineHandler):
    """Replies 256 KiB per one-byte line."""

    delimiter = b"\n"
    handled = 0

    def line_received(self, line: bytes) -> None:
        type(self).handled += 1
        self.send(line * REPLY)


async def _until(predicate: object, timeout: float = 10.0) -> None:
    with anycore.fail_after(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def test_one_read_batch_stops_at_write_high_water() -> None:
    """300 one-byte lines in one segment, 256 KiB of reply each, a client that
    does not read yet: the server stops handling lines once the output passed
    write_high_water (today: all 300 handled, 75 MiB built, in one batch)."""
    Big.handled = 0
    async with serve(Big, "tcp://127.0.0.1:0", write_buffer_limit=None) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"".join(b"%c\n" % (97 + i % 26) for i in range(300)))
        await _until(
            lambda: server.connections() and server.connections()[0].statistics().writing_paused
        )
        # The kernel buffers take a few MiB on loopback: well under 300 replies.
        assert Big.handled < 40
        # Reading everything gets every reply, complete and in order.
        with anycore.fail_after(30):
            for i in range(300):
                chunk = await reader.readexactly(REPLY)
                assert chunk == bytes([97 + i % 26]) * REPLY
        assert Big.handled == 300
        writer.close()
        await writer.wait_closed()


class Parser(RawHandler):
    """Parses its own input (like the RESP example): one 64 KiB reply per byte,
    stopping while output_blocked and continuing in writing_resumed()."""

    write_high_water = 128 * 1024

    def connection_made(self) -> None:
        self.pending = b""
        self.peak = 0

    def data_received(self, data: bytes) -> None:
        self.pending += data
        self.writing_resumed()

    def writing_resumed(self) -> None:
        built = 0
        while self.pending and not self.output_blocked:
            byte, self.pending = self.pending[:1], self.pending[1:]
            self.send(byte * 65536)
            built += 65536
        self.peak = max(self.peak, built)


async def test_a_raw_handler_parser_pauses_on_output_blocked() -> None:
    async with serve(Parser, "tcp://127.0.0.1:0", write_buffer_limit=None) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"x" * 200)
        with anycore.fail_after(30):
            data = await reader.readexactly(200 * 65536)
        assert data == b"x" * (200 * 65536)
        (handler,) = server.connections()
        assert isinstance(handler, Parser)
        assert handler.peak <= 2 * 65536  # stopped at write_high_water every time
        writer.close()
        await writer.wait_closed()


# -- closed connections are freed by refcounting ------------------------------


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class Stateful(LineHandler):
    alive: ClassVar[weakref.WeakSet[Handler]] = weakref.WeakSet()

    def connection_made(self) -> None:
        self.state = bytearray(64 * 1024)
        Stateful.alive.add(self)
        self.send_line(b"hello")

    def line_received(self, line: bytes) -> None:
        self.send_line(line)


class AsyncStateful(Stateful):
    async def line_received(self, line: bytes) -> None:  # type: ignore[override]
        self.send_line(line)


@pytest.mark.parametrize("cls", [Stateful, AsyncStateful])
async def test_closed_connections_are_freed_without_the_cyclic_gc(
    no_gc: None, cls: type[Stateful]
) -> None:
    Stateful.alive = weakref.WeakSet()
    async with serve(cls, "tcp://127.0.0.1:0") as server:
        for _ in range(30):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            assert await asyncio.wait_for(reader.readline(), 5) == b"hello\r\n"
            writer.write(b"ping\r\n")
            assert await asyncio.wait_for(reader.readline(), 5) == b"ping\r\n"
            writer.close()
            await writer.wait_closed()
        await _until(lambda: server.statistics().connections == 0)
        await _until(lambda: len(Stateful.alive) == 0, timeout=5)
        assert server.statistics().total_connections == 30


async def test_a_closed_client_handler_is_freed_without_the_cyclic_gc(no_gc: None) -> None:
    async with serve(Stateful, "tcp://127.0.0.1:0") as server:

        class Client(LineHandler):
            def connection_made(self) -> None:
                self.got = asyncio.Event()

            def line_received(self, line: bytes) -> None:
                self.got.set()

        handler = await anycore.connect(f"tcp://127.0.0.1:{server.port}", Client)
        await asyncio.wait_for(handler.got.wait(), 5)
        ref = weakref.ref(handler)
        handler.close()
        await handler.wait_closed()
        assert handler.connection_id > 0  # still readable after close
        del handler
        await _until(lambda: ref() is None, timeout=5)
