"""The policy both stream drivers share (``_Connection``): every test runs on the
asyncio fast-path driver and on the portable driver (``portable=True``), and the
conftest runs each on asyncio and uvloop."""

from __future__ import annotations

import logging

import anyio
import pytest

from anycore import FixedSizeHandler, LineHandler, NetstringHandler, serve
from anycore._net._framing import FixedSizeFramer
from anycore.errors import FrameTooLarge

DRIVERS = pytest.mark.parametrize("portable", [False, True], ids=["asyncio", "portable"])


async def read_all(stream: anyio.abc.ByteStream) -> bytes:
    data = b""
    try:
        while True:
            data += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return data


async def read_exactly(stream: anyio.abc.ByteStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        data += await stream.receive()
    return data


class Echo(LineHandler):
    def line_received(self, line: bytes) -> None:
        self.send_line(line)


async def echo_works(port: int) -> None:
    async with await anyio.connect_tcp("127.0.0.1", port) as s:
        await s.send(b"ping\r\n")
        assert await read_exactly(s, 6) == b"ping\r\n"


@DRIVERS
async def test_frame_too_large_hook_that_raises_counts_twice_and_closes(portable: bool) -> None:
    class Small(Echo):
        max_line_length = 10

        def frame_too_large(self, exc: FrameTooLarge) -> None:
            raise RuntimeError("hook failed")

    async with serve(Small, "tcp://127.0.0.1:0", portable=portable) as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as s:
            await s.send(b"ok\r\n" + b"x" * 100)
            assert await read_all(s) == b"ok\r\n"
        await echo_works(server.port)
        # One for the oversized frame, one for the hook that raised.
        assert server.statistics().errors == 2


@DRIVERS
async def test_frame_too_large_hook_keeping_the_connection_gets_a_fresh_framer(
    portable: bool,
) -> None:
    class Lenient(Echo):
        max_line_length = 10

        def frame_too_large(self, exc: FrameTooLarge) -> None:
            self.send_line(b"too-large")

    async with serve(Lenient, "tcp://127.0.0.1:0", portable=portable) as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as s:
            await s.send(b"x" * 100)
            assert await read_exactly(s, 11) == b"too-large\r\n"
            await s.send(b"\r\nafter\r\n")
            got = await read_exactly(s, 9)
            # The oversized frame's bytes are gone: the fresh framer sees only
            # what came after them.
            assert got == b"\r\nafter\r\n"
        assert server.statistics().errors == 1


@DRIVERS
async def test_malformed_input_is_logged_counted_and_closes_only_that_connection(
    portable: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="anycore.protocol")

    class Netstrings(NetstringHandler):
        def frame_received(self, frame: bytes) -> None:
            self.send_frame(frame)

    async with serve(Netstrings, "tcp://127.0.0.1:0", portable=portable) as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as s:
            await s.send(b"2:ok,x:bad")
            assert await read_all(s) == b"2:ok,"
        assert server.statistics().errors == 1
    assert any("malformed input from the peer" in r.getMessage() for r in caplog.records)


@DRIVERS
async def test_stream_ending_inside_a_frame_is_reported_after_the_whole_frames(
    portable: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="anycore.protocol")
    got: list[bytes] = []

    class Records(FixedSizeHandler):
        record_size = 4

        def frame_received(self, frame: bytes) -> None:
            got.append(frame)
            self.send(frame.upper())

    async with serve(Records, "tcp://127.0.0.1:0", portable=portable) as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as s:
            await s.send(b"abcdefgh12")
            await s.send_eof()
            assert await read_all(s) == b"ABCDEFGH"
        assert server.statistics().errors == 1
    assert got == [b"abcd", b"efgh"]
    assert any("inside a frame (2 bytes pending)" in r.getMessage() for r in caplog.records)


@DRIVERS
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_framer_switch_moves_queued_frames_and_leftovers(
    portable: bool, is_async: bool
) -> None:
    class Switcher(LineHandler):
        def on_line(self, line: bytes) -> None:
            if line.startswith(b"blob:"):
                self.send_line(line)
                self.set_framer(FixedSizeFramer(int(line[5:])))
            elif isinstance(self.framer, FixedSizeFramer):
                self.send_line(b"[" + line + b"]")
                self.set_framer(self.make_framer())
            else:
                self.send_line(line)

    class SyncSwitcher(Switcher):
        def frame_received(self, frame: bytes) -> None:
            self.on_line(frame)

    class AsyncSwitcher(Switcher):
        async def frame_received(self, frame: bytes) -> None:
            await anyio.sleep(0)
            self.on_line(frame)

    cls = AsyncSwitcher if is_async else SyncSwitcher
    # One send: with an async handler the lines after "blob:" are already
    # parsed and queued when the switch happens; they must be re-cut.
    data = b"one\r\nblob:6\r\nab\r\ncdtwo\r\nblob:2\r\nxythree\r\n"
    want = b"one\r\nblob:6\r\n[ab\r\ncd]\r\ntwo\r\nblob:2\r\n[xy]\r\nthree\r\n"
    async with serve(cls, "tcp://127.0.0.1:0", portable=portable) as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as s:
            await s.send(data)
            assert await read_exactly(s, len(want)) == want
        assert server.statistics().errors == 0


@DRIVERS
async def test_statistics_count_the_same_on_both_drivers(portable: bool) -> None:
    seen: list[Echo] = []

    class Counted(Echo):
        def connection_made(self) -> None:
            seen.append(self)

    lines = b"".join(b"line%d\r\n" % i for i in range(50))
    async with (
        serve(Counted, "tcp://127.0.0.1:0", portable=portable) as server,
        await anyio.connect_tcp("127.0.0.1", server.port) as s,
    ):
        await s.send(lines)
        assert await read_exactly(s, len(lines)) == lines
        stats = seen[0].statistics()
        assert stats.connection_id == seen[0].connection_id > 0
        assert stats.bytes_in == len(lines)
        assert stats.bytes_out == len(lines)
        assert stats.frames_in == 50
        assert 1 <= stats.reads <= 50
        assert 1 <= stats.writes <= stats.reads
        assert stats.queued_frames == 0
        assert not stats.writing_paused


@DRIVERS
async def test_write_buffer_limit_aborts_and_counts_an_error(portable: bool) -> None:
    lost: list[BaseException | None] = []
    gone = anyio.Event()

    class Flood(LineHandler):
        def connection_made(self) -> None:
            self.send(b"z" * (32 * 1024 * 1024))

        def connection_lost(self, exc: BaseException | None) -> None:
            lost.append(exc)
            gone.set()

    async with serve(
        Flood, "tcp://127.0.0.1:0", portable=portable, write_buffer_limit=256 * 1024
    ) as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port):
            # Not reading: the server's buffer passes the limit at once.
            with anyio.fail_after(10):
                await gone.wait()
        assert server.statistics().errors == 1
    assert len(lost) == 1
