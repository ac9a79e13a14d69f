"""Handlers on the asyncio fast path: framing, ordering, coalescing, backpressure,
bad input, cancellation.  Real loopback sockets; each test runs on asyncio and uvloop."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from anycore import (
    FixedSizeHandler,
    Handler,
    LengthPrefixedHandler,
    LineHandler,
    NetstringHandler,
    RawHandler,
    serve,
)
from anycore._net._framing import FixedSizeFramer, TerminatorFramer
from anycore._net._handler import connection_context
from anycore.errors import ClosedError, FrameTooLarge

H = Callable[[], Handler]


class Made(list[Handler]):
    """Handlers a factory made, with a way to wait for the n-th one."""

    def __init__(self, factory: H) -> None:
        super().__init__()
        self.factory = factory
        self._changed = asyncio.Event()

    def __call__(self) -> Handler:
        h = self.factory()
        self.append(h)
        self._changed.set()
        return h

    async def nth(self, i: int) -> Handler:
        async with asyncio.timeout(5):
            while len(self) <= i:
                self._changed.clear()
                await self._changed.wait()
        return self[i]


@asynccontextmanager
async def running(factory: H, **kw: object) -> AsyncIterator[tuple[int, Made]]:
    """Serve ``factory`` on a free loopback port; yield (port, handlers made)."""
    made = Made(factory)
    async with serve(made, "tcp://127.0.0.1:0", drain_timeout=2.0, **kw) as server:  # type: ignore[arg-type]
        yield server.port, made


async def open_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def close_client(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass


class Echo(LineHandler):
    def line_received(self, line: bytes) -> None:
        self.send_line(line)


class AsyncEcho(LineHandler):
    async def line_received(self, line: bytes) -> None:
        for _ in range(len(line) % 3):
            await asyncio.sleep(0)
        self.send_line(line)


async def echo_works(port: int) -> None:
    r, w = await open_client(port)
    w.write(b"ping\r\n")
    assert await asyncio.wait_for(r.readline(), 5) == b"ping\r\n"
    await close_client(w)


@pytest.mark.parametrize("cls", [Echo, AsyncEcho])
async def test_pipelined_lines_are_answered_in_order(cls: type[LineHandler]) -> None:
    async with running(cls) as (port, _):
        r, w = await open_client(port)
        lines = [b"line %d" % i for i in range(500)]
        w.write(b"".join(line + b"\r\n" for line in lines))
        got = [await asyncio.wait_for(r.readline(), 5) for _ in lines]
        assert got == [line + b"\r\n" for line in lines]
        await close_client(w)


async def test_replies_are_written_once_per_read_batch() -> None:
    async with running(Echo) as (port, made):
        r, w = await open_client(port)
        w.write(b"x\r\n" * 1000)
        for _ in range(1000):
            await asyncio.wait_for(r.readline(), 5)
        stats = (await made.nth(0)).statistics()
        assert stats.frames_in == 1000
        assert 1 <= stats.writes <= stats.reads
        assert stats.bytes_out == 3000
        await close_client(w)


async def test_send_outside_a_batch_is_written_without_waiting_for_input() -> None:
    class Later(LineHandler):
        def line_received(self, line: bytes) -> None:
            asyncio.get_running_loop().call_soon(self.send_line, b"later " + line)

    async with running(Later) as (port, made):
        r, w = await open_client(port)
        w.write(b"a\r\n")
        assert await asyncio.wait_for(r.readline(), 5) == b"later a\r\n"
        assert (await made.nth(0)).statistics().writes == 1
        await close_client(w)


async def test_connection_context_is_bound_per_connection() -> None:
    seen: list[object] = []

    class Ctx(LineHandler):
        def line_received(self, line: bytes) -> None:
            seen.append(connection_context.get())
            self.send_line(b"%d" % self.connection_id)

    class ACtx(LineHandler):
        async def line_received(self, line: bytes) -> None:
            await asyncio.sleep(0)
            seen.append(connection_context.get())
            self.send_line(b"%d" % self.connection_id)

    for cls in (Ctx, ACtx):
        seen.clear()
        async with running(cls) as (port, _):
            r1, w1 = await open_client(port)
            r2, w2 = await open_client(port)
            w1.write(b"a\r\n")
            id1 = int(await asyncio.wait_for(r1.readline(), 5))
            w2.write(b"b\r\n")
            id2 = int(await asyncio.wait_for(r2.readline(), 5))
            assert id1 != id2
            assert [c["connection_id"] for c in seen] == [id1, id2]  # type: ignore[index]
            assert all(str(c["peer"]).startswith("127.0.0.1:") for c in seen)  # type: ignore[index]
            await close_client(w1)
            await close_client(w2)
    assert connection_context.get() is None


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_framer_switch_mid_stream(asynchronous: bool) -> None:
    """A header line announces N raw bytes, then lines again - all in one write."""

    class Switching(LineHandler):
        def on_line(self, line: bytes) -> None:
            if line.startswith(b"BLOB "):
                self.set_framer(FixedSizeFramer(int(line[5:])))
            else:
                self.send_line(b"line:" + line)

        def frame_received(self, frame: bytes) -> None:
            if isinstance(self.framer, FixedSizeFramer):
                self.send_line(b"blob:" + frame.replace(b"\r\n", b"|"))
                self.set_framer(self.make_framer())
            else:
                self.on_line(frame)

    class AsyncSwitching(Switching):
        async def frame_received(self, frame: bytes) -> None:  # type: ignore[override]
            await asyncio.sleep(0)
            Switching.frame_received(self, frame)

    cls = AsyncSwitching if asynchronous else Switching
    async with running(cls) as (port, _):
        r, w = await open_client(port)
        w.write(b"one\r\nBLOB 8\r\nab\r\ncd\r\ntwo\r\nBLOB 2\r\nxythree\r\n")
        got = [await asyncio.wait_for(r.readline(), 5) for _ in range(5)]
        assert got == [
            b"line:one\r\n",
            b"blob:ab|cd|\r\n",
            b"line:two\r\n",
            b"blob:xy\r\n",
            b"line:three\r\n",
        ]
        await close_client(w)


async def test_close_in_the_middle_of_a_batch_stops_its_frames() -> None:
    """Frames after the one whose handler closed the connection are not handled,
    even when the whole batch was split at once; the reply before close is sent."""

    class Quits(LineHandler):
        def connection_made(self) -> None:
            self.seen: list[bytes] = []

        def line_received(self, line: bytes) -> None:
            self.seen.append(line)
            self.send_line(b"ok " + line)
            if line == b"QUIT":
                self.close()

    async with running(Quits) as (port, made):
        r, w = await open_client(port)
        w.write(b"a\r\nQUIT\r\nb\r\nc\r\n")
        assert await asyncio.wait_for(r.read(), 5) == b"ok a\r\nok QUIT\r\n"
        handler = await made.nth(0)
        assert isinstance(handler, Quits)
        assert handler.seen == [b"a", b"QUIT"]
        assert handler.statistics().frames_in == 2
        await close_client(w)


async def test_frames_in_counts_handled_frames_across_a_switch() -> None:
    class Switch(LineHandler):
        def line_received(self, line: bytes) -> None:
            if line == b"RAW":
                self.set_framer(FixedSizeFramer(2))
            else:
                self.send_line(line)

        def frame_received(self, frame: bytes) -> None:
            if isinstance(self.framer, FixedSizeFramer):
                self.send_line(b"rec " + frame)
            else:
                self.line_received(frame)

    async with running(Switch) as (port, made):
        r, w = await open_client(port)
        w.write(b"x\r\nRAW\r\nabcd")
        assert await asyncio.wait_for(r.readline(), 5) == b"x\r\n"
        assert await asyncio.wait_for(r.readline(), 5) == b"rec ab\r\n"
        assert await asyncio.wait_for(r.readline(), 5) == b"rec cd\r\n"
        assert (await made.nth(0)).statistics().frames_in == 4
        await close_client(w)


async def test_ready_made_handlers() -> None:
    class Len(LengthPrefixedHandler):
        prefix_format = "!H"

        def frame_received(self, frame: bytes) -> None:
            self.send_frame(frame[::-1])

    class Net(NetstringHandler):
        def frame_received(self, frame: bytes) -> None:
            self.send_frame(frame.upper())

    class Fixed(FixedSizeHandler):
        record_size = 4

        def frame_received(self, frame: bytes) -> None:
            self.send(frame[::-1])

    class Raw(RawHandler):
        def data_received(self, data: bytes) -> None:
            self.send(data)

    async with running(Len) as (port, _):
        r, w = await open_client(port)
        w.write(struct.pack("!H", 3) + b"abc" + struct.pack("!H", 0))
        assert await r.readexactly(5) == struct.pack("!H", 3) + b"cba"
        assert await r.readexactly(2) == struct.pack("!H", 0)
        await close_client(w)
    async with running(Net) as (port, _):
        r, w = await open_client(port)
        w.write(b"5:hello,0:,")
        assert await r.readexactly(11) == b"5:HELLO,0:,"
        await close_client(w)
    async with running(Fixed) as (port, _):
        r, w = await open_client(port)
        w.write(b"abcdefgh")
        assert await r.readexactly(8) == b"dcbahgfe"
        await close_client(w)
    async with running(Raw) as (port, _):
        r, w = await open_client(port)
        w.write(b"x" * 100_000)
        assert await r.readexactly(100_000) == b"x" * 100_000
        await close_client(w)


async def test_tcp_nodelay_on_accepted_sockets() -> None:
    values: list[int] = []

    class Probe(LineHandler):
        def connection_made(self) -> None:
            sock = self.get_extra_info("socket")
            values.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            self.close()

    async with running(Probe) as (port, _):
        r, w = await open_client(port)
        assert await asyncio.wait_for(r.read(), 5) == b""
        await close_client(w)
    assert values == [1]


# -- bad input: only the guilty connection ends ------------------------------------


async def test_oversized_frame_closes_only_that_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Small(Echo):
        max_line_length = 1000

    caplog.set_level(logging.ERROR, logger="anycore.protocol")
    async with running(Small) as (port, _):
        r_ok, w_ok = await open_client(port)
        r, w = await open_client(port)
        w.write(b"y" * 5000)
        assert await asyncio.wait_for(r.read(), 5) == b""
        await echo_works(port)
        w_ok.write(b"still\r\n")
        assert await asyncio.wait_for(r_ok.readline(), 5) == b"still\r\n"
        await close_client(w)
        await close_client(w_ok)
    assert any("exceeds the limit of 1000" in rec.getMessage() for rec in caplog.records)


async def test_frame_too_large_hook_can_keep_the_connection() -> None:
    errors: list[FrameTooLarge] = []

    class Lenient(Echo):
        max_line_length = 10

        def frame_too_large(self, exc: FrameTooLarge) -> None:
            errors.append(exc)
            self.send_line(b"too long")

    async with running(Lenient) as (port, _):
        r, w = await open_client(port)
        w.write(b"z" * 50)
        assert await asyncio.wait_for(r.readline(), 5) == b"too long\r\n"
        w.write(b"\r\nok\r\n")
        # The fresh framer sees the rest of the long line's terminator (an empty
        # line), then "ok".
        assert await asyncio.wait_for(r.readline(), 5) == b"\r\n"
        assert await asyncio.wait_for(r.readline(), 5) == b"ok\r\n"
        assert errors
        assert errors[0].limit == 10
        await close_client(w)


async def test_peer_reset_mid_frame_ends_only_that_connection() -> None:
    lost: list[BaseException | None] = []
    two_made = asyncio.Event()
    count = [0]

    class Tracking(Echo):
        def connection_made(self) -> None:
            count[0] += 1
            if count[0] == 2:
                two_made.set()

        def connection_lost(self, exc: BaseException | None) -> None:
            lost.append(exc)

    async with running(Tracking) as (port, made):
        r_ok, w_ok = await open_client(port)
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"partial line without end")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
        await asyncio.wait_for(two_made.wait(), 5)
        await asyncio.wait_for((await made.nth(1)).wait_closed(), 5)
        assert len(lost) == 1
        w_ok.write(b"fine\r\n")
        assert await asyncio.wait_for(r_ok.readline(), 5) == b"fine\r\n"
        await close_client(w_ok)


@pytest.mark.parametrize("cls", [Echo, AsyncEcho])
async def test_half_closed_connection_gets_its_replies(cls: type[LineHandler]) -> None:
    async with running(cls) as (port, _):
        r, w = await open_client(port)
        w.write(b"a1\r\nb2\r\n")
        w.write_eof()
        assert await asyncio.wait_for(r.read(), 5) == b"a1\r\nb2\r\n"
        await close_client(w)
        await echo_works(port)


async def test_half_closed_mid_frame_is_logged_and_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="anycore.protocol")
    async with running(Echo) as (port, _):
        r_ok, w_ok = await open_client(port)
        r, w = await open_client(port)
        w.write(b"whole\r\nhalf")
        w.write_eof()
        assert await asyncio.wait_for(r.read(), 5) == b"whole\r\n"
        w_ok.write(b"other\r\n")
        assert await asyncio.wait_for(r_ok.readline(), 5) == b"other\r\n"
        await close_client(w)
        await close_client(w_ok)
    assert any("inside a frame" in rec.getMessage() for rec in caplog.records)


async def test_handler_exception_closes_only_that_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Picky(Echo):
        def line_received(self, line: bytes) -> None:
            if line == b"boom":
                raise ValueError("boom!")
            self.send_line(line)

    caplog.set_level(logging.ERROR, logger="anycore.protocol")
    made: list[Handler] = []

    def factory() -> Handler:
        h = Picky()
        made.append(h)
        return h

    async with serve(factory, "tcp://127.0.0.1:0") as server:
        r, w = await open_client(server.port)
        w.write(b"ok\r\nboom\r\nnever\r\n")
        assert await asyncio.wait_for(r.read(), 5) == b"ok\r\n"
        await echo_works(server.port)
        assert server.statistics().errors == 1
        await close_client(w)
    assert any("ValueError: boom!" in rec.getMessage() for rec in caplog.records)


async def test_lost_connection_cancels_the_running_handler_then_calls_lost_once() -> None:
    events: list[str] = []
    started = asyncio.Event()

    class Stuck(LineHandler):
        async def line_received(self, line: bytes) -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                events.append("cancelled")
                raise

        def connection_lost(self, exc: BaseException | None) -> None:
            events.append("lost")

    async with running(Stuck) as (port, made):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"hang\r\n")
        await asyncio.wait_for(started.wait(), 5)
        # A reset (a FIN alone could be a half-close, which keeps the handler going).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        await asyncio.wait_for((await made.nth(0)).wait_closed(), 5)
        assert events == ["cancelled", "lost"]


async def test_async_connection_lost_runs_once_after_cancellation() -> None:
    events: list[str] = []

    class AsyncLost(LineHandler):
        async def connection_made(self) -> None:
            await asyncio.sleep(0)
            events.append("made")

        def line_received(self, line: bytes) -> None:
            self.send_line(line)

        async def connection_lost(self, exc: BaseException | None) -> None:
            await asyncio.sleep(0)
            events.append("lost")

    async with running(AsyncLost) as (port, made):
        r, w = await open_client(port)
        w.write(b"q\r\n")
        assert await asyncio.wait_for(r.readline(), 5) == b"q\r\n"
        await close_client(w)
        await asyncio.wait_for((await made.nth(0)).wait_closed(), 5)
    assert events == ["made", "lost"]


# -- backpressure -------------------------------------------------------------------


def fill_until_blocked(sock: socket.socket, chunk: bytes, limit: int) -> int:
    """Send until the kernel refuses more (the peer stopped reading); bytes sent."""
    sock.setblocking(False)
    sent = 0
    while sent < limit:
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            return sent
    return sent


async def wait_blocked(sock: socket.socket, chunk: bytes, limit: int) -> int:
    """Keep sending while the server drains what it can; stop once it stays blocked."""
    total = 0
    for _ in range(200):
        n = fill_until_blocked(sock, chunk, limit - total)
        total += n
        if total >= limit:
            break
        if n == 0:
            # Blocked twice in a row with a loop turn in between: reading is paused.
            await asyncio.sleep(0.02)
            n = fill_until_blocked(sock, chunk, limit - total)
            total += n
            if n == 0:
                break
        await asyncio.sleep(0.01)
    return total


async def test_client_that_never_reads_pauses_reading_and_memory_stays_bounded() -> None:
    class Amplify(LineHandler):
        def line_received(self, line: bytes) -> None:
            self.send(b"r" * 1000)

    async with running(Amplify) as (port, made):
        sock = socket.create_connection(("127.0.0.1", port))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            limit = 64 * 1024 * 1024
            sent = await wait_blocked(sock, b"q" * 98 + b"\r\n", limit)
            assert sent < limit, "the server never stopped reading"
            stats = (await made.nth(0)).statistics()
            assert stats.reading_paused
            assert stats.writing_paused
            # High water plus at most one read batch of replies (256 KiB -> ~2.6 MB).
            assert stats.write_buffer_size < 4 * 1024 * 1024
        finally:
            sock.close()


async def test_write_buffer_limit_aborts_a_peer_that_does_not_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Flood(LineHandler):
        def connection_made(self) -> None:
            sock = self.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)

        def line_received(self, line: bytes) -> None:
            if line != b"go":
                self.send_line(line)
                return
            for _ in range(64):
                self.send(b"f" * 65536)  # ignores drain(): 4 MiB at once

    caplog.set_level(logging.WARNING, logger="anycore.protocol")
    made = Made(Flood)
    async with serve(made, "tcp://127.0.0.1:0", write_buffer_limit=1024 * 1024) as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"go\r\n")
        await asyncio.wait_for((await made.nth(0)).wait_closed(), 5)
        assert server.statistics().errors == 1
        await echo_works(server.port)
        sock.close()
    assert any("write buffer above its limit" in r.getMessage() for r in caplog.records)


async def test_slow_async_handler_pauses_reading() -> None:
    release = asyncio.Event()

    class Slow(LineHandler):
        max_queued_frames = 4

        async def line_received(self, line: bytes) -> None:
            await release.wait()
            self.send_line(line)

    async with running(Slow) as (port, made):
        sock = socket.create_connection(("127.0.0.1", port))
        try:
            line = b"s" * 1022 + b"\r\n"
            limit = 64 * 1024 * 1024
            sent = await wait_blocked(sock, line, limit)
            assert sent < limit, "the server never stopped reading"
            stats = (await made.nth(0)).statistics()
            assert stats.reading_paused
            # Frames parsed but unhandled stay within the queue limit plus one batch.
            assert stats.queued_frames * 1024 < 512 * 1024
            assert (await made.nth(0)).framer.buffered < 512 * 1024
            release.set()
            # Everything sent is eventually answered, in order.
            expected = sent // len(line) * len(line)
            got = 0
            loop = asyncio.get_running_loop()
            while got < expected:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
                assert chunk
                got += len(chunk)
            assert got == expected
        finally:
            sock.close()


async def test_parallel_drain_from_many_tasks_is_safe() -> None:
    """cpython#74116: concurrent drain() calls raised AssertionError in asyncio."""
    done: list[int] = []
    finished = asyncio.Event()

    class Producer(LineHandler):
        write_high_water = 16 * 1024
        write_low_water = 4 * 1024

        async def connection_made(self) -> None:
            async def one(i: int) -> None:
                for _ in range(8):
                    self.send(b"%04d" % i + b"p" * 8188)
                    await self.drain()
                done.append(i)

            async with asyncio.TaskGroup() as tg:
                for i in range(50):
                    tg.create_task(one(i))
            finished.set()

    async with running(Producer) as (port, _):
        r, w = await open_client(port)
        total = 50 * 8 * 8192
        got = 0
        while got < total:
            chunk = await asyncio.wait_for(r.read(65536), 10)
            assert chunk
            got += len(chunk)
        await asyncio.wait_for(finished.wait(), 5)
        assert sorted(done) == list(range(50))
        await close_client(w)


async def test_drain_on_a_closed_connection_raises() -> None:
    result: list[BaseException] = []
    got_line = asyncio.Event()

    class Closer(LineHandler):
        async def line_received(self, line: bytes) -> None:
            self.close()
            try:
                await self.drain()
            except ClosedError as exc:
                result.append(exc)
            got_line.set()

    async with running(Closer) as (port, _):
        r, w = await open_client(port)
        w.write(b"x\r\n")
        assert await asyncio.wait_for(r.read(), 5) == b""
        await close_client(w)
    # Either drain saw the closed connection, or the task was cancelled first
    # when the transport went away; it never hangs or raises AssertionError.
    assert all(isinstance(e, ClosedError) for e in result)


async def test_send_before_connect_raises() -> None:
    h = Echo()
    with pytest.raises(ClosedError):
        h.send(b"x")
    assert h.is_closing()


async def test_terminator_framer_is_configured_from_class_attributes() -> None:
    class Nl(LineHandler):
        delimiter = b"\n"
        max_line_length = 7

    framer = Nl().make_framer()
    assert isinstance(framer, TerminatorFramer)
    assert framer.terminator == b"\n"
    assert framer.max_frame_size == 7


async def test_connection_id_is_public_and_peer_is_a_tuple() -> None:
    import anycore

    seen: list[tuple[int | None, int, object]] = []

    class Probe(LineHandler):
        def line_received(self, line: bytes) -> None:
            seen.append((anycore.current_connection_id(), self.connection_id, self.peer))
            self.send_line(b"ok")

    assert anycore.current_connection_id() is None
    async with anycore.serve(Probe, "tcp://127.0.0.1:0") as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"hi\r\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"ok\r\n"
        client_port = writer.get_extra_info("sockname")[1]
        writer.close()
        await writer.wait_closed()
    ((current, own, peer),) = seen
    assert current == own > 0
    assert peer == ("127.0.0.1", client_port)
