"""Small input must not buy big memory, and closed connections free at once
(issue 19).  Real loopback sockets, asyncio and uvloop."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import socket
import weakref
from collections.abc import Iterator
from typing import ClassVar

import pytest

import anycore
from _support import wait_until
from anycore import Handler, LineHandler, NetstringHandler, RawHandler, serve
from anycore._net._loglimit import LogLimiter

REPLY = 256 * 1024


class Big(LineHandler):
    """Replies 256 KiB per one-byte line."""

    delimiter = b"\n"
    handled = 0

    def line_received(self, line: bytes) -> None:
        type(self).handled += 1
        self.send(line * REPLY)


async def test_one_read_batch_stops_at_write_high_water() -> None:
    """300 one-byte lines in one segment, 256 KiB of reply each, a client that
    does not read yet: the server stops handling lines once the output passed
    write_high_water (today: all 300 handled, 75 MiB built, in one batch)."""
    Big.handled = 0
    async with serve(Big, "tcp://127.0.0.1:0", write_buffer_limit=None) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"".join(b"%c\n" % (97 + i % 26) for i in range(300)))
        await wait_until(
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
        await wait_until(lambda: server.statistics().connections == 0)
        await wait_until(lambda: len(Stateful.alive) == 0, timeout=5)
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
        await wait_until(lambda: ref() is None, timeout=5)


# -- slowloris: frame deadline, receive rate, shedding at max_connections ------


class Echo(LineHandler):
    def line_received(self, line: bytes) -> None:
        self.send_line(line)


async def _trickle(writer: asyncio.StreamWriter, interval: float, count: int) -> None:
    """The attack's load pattern: a byte per interval, never a whole line."""
    for _ in range(count):
        if writer.is_closing():
            return
        writer.write(b"x")
        await asyncio.sleep(interval)


async def _cleanup(tasks: list[asyncio.Task[None]], writers: list[asyncio.StreamWriter]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for w in writers:
        w.close()
    await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await reader.read(100) == b""
    except ConnectionError:
        return True


async def test_frame_deadline_cuts_a_trickling_frame_but_not_an_idle_client() -> None:
    async with serve(Echo, "tcp://127.0.0.1:0", frame_deadline=0.4) as server:
        slow_r, slow_w = await asyncio.open_connection("127.0.0.1", server.port)
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", server.port)
        idle_w.write(b"one\r\n")
        assert await asyncio.wait_for(idle_r.readline(), 5) == b"one\r\n"
        trickler = asyncio.create_task(_trickle(slow_w, 0.05, 400))
        loop = asyncio.get_running_loop()
        started = loop.time()
        with anycore.fail_after(5):
            assert await _closed_by_server(slow_r)
        assert 0.35 <= loop.time() - started < 3
        # The idle client (no frame in progress) was idle as long: still served.
        idle_w.write(b"two\r\n")
        assert await asyncio.wait_for(idle_r.readline(), 5) == b"two\r\n"
        assert server.statistics().errors == 1
        await _cleanup([trickler], [slow_w, idle_w])


async def test_min_receive_rate_cuts_a_slow_frame_and_keeps_a_fast_one() -> None:
    async with serve(
        Echo, "tcp://127.0.0.1:0", min_receive_rate=200, receive_rate_window=0.4
    ) as server:
        slow_r, slow_w = await asyncio.open_connection("127.0.0.1", server.port)
        trickler = asyncio.create_task(_trickle(slow_w, 0.05, 400))  # ~20 B/s
        with anycore.fail_after(5):
            assert await _closed_by_server(slow_r)
        fast_r, fast_w = await asyncio.open_connection("127.0.0.1", server.port)
        for _ in range(8):  # a 16 KiB line in pieces, fast
            fast_w.write(b"y" * 2048)
            await fast_w.drain()
        fast_w.write(b"\r\n")
        assert await asyncio.wait_for(fast_r.readline(), 5) == b"y" * 16384 + b"\r\n"
        await _cleanup([trickler], [slow_w, fast_w])


async def test_trickling_connections_at_max_connections_do_not_lock_out_clients() -> None:
    """20 slowloris connections hold every slot of max_connections=20: with the
    default on_limit="shed" each normal client gets in (the oldest slow one is
    dropped); before, every one was reset."""
    async with serve(Echo, "tcp://127.0.0.1:0", max_connections=20) as server:
        tricklers: list[asyncio.Task[None]] = []
        writers = []
        for _ in range(20):
            _r, w = await asyncio.open_connection("127.0.0.1", server.port)
            writers.append(w)
            tricklers.append(asyncio.create_task(_trickle(w, 0.2, 500)))

        probes: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

        async def probe(i: int) -> None:
            while True:  # until a slot is made for it (bounded by fail_after)
                try:
                    r, w = await asyncio.open_connection("127.0.0.1", server.port)
                except ConnectionError:
                    await asyncio.sleep(0.1)
                    continue
                try:
                    w.write(b"probe %d\r\n" % i)
                    line = await asyncio.wait_for(r.readline(), 5)
                    if line == b"probe %d\r\n" % i:
                        probes.append((r, w))  # stays open: the next one needs a slot
                        return
                    await _cleanup([], [w])
                except ConnectionError:
                    await _cleanup([], [w])
                await asyncio.sleep(0.1)

        with anycore.fail_after(30):
            for i in range(16):
                await probe(i)
        stats = server.statistics()
        assert stats.shed >= 16
        assert stats.connections <= 21
        # The slow ones were shed, not the clients that got in.
        for i, (r, w) in enumerate(probes):
            w.write(b"again %d\r\n" % i)
            assert await asyncio.wait_for(r.readline(), 5) == b"again %d\r\n" % i
        await _cleanup(tricklers, writers + [w for _, w in probes])


@pytest.mark.parametrize("on_limit", ["refuse", "shed"])
async def test_max_connections_admits_exactly_that_many(on_limit: str) -> None:
    """A connection was counted twice (setup and connection) until its setup
    task's callback ran: on uvloop the 20th of max_connections=20 was refused."""
    async with serve(
        Echo,
        "tcp://127.0.0.1:0",
        max_connections=20,
        on_limit=on_limit,  # type: ignore[arg-type]
    ) as server:
        writers = []
        for i in range(20):
            r, w = await asyncio.open_connection("127.0.0.1", server.port)
            writers.append(w)
            w.write(b"%d\r\n" % i)
            assert await asyncio.wait_for(r.readline(), 5) == b"%d\r\n" % i
        assert server.statistics().refused == 0
        await _cleanup([], writers)


# -- a flood of bad connections costs a bounded number of log lines -------------


async def test_repeated_warnings_are_rate_limited_and_summarised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="anycore")
    srv = serve(NetstringHandler, "tcp://127.0.0.1:0")
    assert isinstance(srv.log_limiter, LogLimiter)  # each server has its own
    assert (srv.log_limiter.burst, srv.log_limiter.interval) == (10, 10.0)
    srv.log_limiter.burst = 5
    srv.log_limiter.interval = 0.5
    async with srv as server:
        for _ in range(60):
            r, w = await asyncio.open_connection("127.0.0.1", server.port)
            w.write(b"garbage!")
            assert await asyncio.wait_for(r.read(), 5) == b""
            await _cleanup([], [w])
        with anycore.fail_after(5):
            while "more connections with malformed input" not in caplog.text:
                await asyncio.sleep(0.02)
        assert server.statistics().errors == 60
    lines = [r.getMessage() for r in caplog.records if "malformed input" in r.getMessage()]
    individual = [m for m in lines if m.startswith("connection ")]
    summaries = [m for m in lines if m.startswith("... and ")]
    # 5 per 0.5 s window, each window summarised: every connection accounted for.
    counted = len(individual) + sum(int(m.split()[2]) for m in summaries)
    assert counted == 60
    assert len(individual) < 60
    assert re.fullmatch(
        r"\.\.\. and \d+ more connections with malformed input in the last \d+ s", summaries[0]
    )


async def test_a_client_that_never_reads_costs_bounded_memory_and_times_out() -> None:
    """A sync handler's replies to a client that never reads: the output stops
    at write_high_water (plus the kernel's buffers), reading pauses, and
    idle_timeout then aborts the connection (a graceful close would wait for
    the unread data for ever)."""
    Big.handled = 0
    async with serve(Big, "tcp://127.0.0.1:0", idle_timeout=0.5) as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            sock.sendall(b"a\n" * 200)  # 50 MiB of replies if all were built
            await wait_until(
                lambda: any(h.statistics().writing_paused for h in server.connections())
            )
            with anycore.fail_after(10):
                while server.statistics().connections:
                    stats = [h.statistics() for h in server.connections()]
                    for s in stats:
                        assert s.write_buffer_size < 32 * REPLY
                    await asyncio.sleep(0.02)
            assert Big.handled < 60
        finally:
            sock.close()


async def test_shedding_spares_active_connections() -> None:
    """At the limit with every connection active (reading and answered within
    the last guard period), the new connection is refused, not an active one."""
    async with serve(Echo, "tcp://127.0.0.1:0", max_connections=2) as server:
        pairs = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
        for i, (r, w) in enumerate(pairs):
            w.write(b"%d\r\n" % i)
            assert await asyncio.wait_for(r.readline(), 5) == b"%d\r\n" % i
        extra: list[asyncio.StreamWriter] = []
        try:
            r3, w3 = await asyncio.open_connection("127.0.0.1", server.port)
        except ConnectionError:
            pass  # reset before the connect completed
        else:
            extra.append(w3)
            assert await _closed_by_server(r3)
        with anycore.fail_after(5):
            while server.statistics().refused == 0:
                await asyncio.sleep(0.01)
        stats = server.statistics()
        assert (stats.refused, stats.shed) == (1, 0)
        for i, (r, w) in enumerate(pairs):
            w.write(b"again %d\r\n" % i)
            assert await asyncio.wait_for(r.readline(), 5) == b"again %d\r\n" % i
        await _cleanup([], [w for _, w in pairs] + extra)


class Greeter(LineHandler):
    """Sends a large greeting in connection_made, asking output_blocked."""

    def connection_made(self) -> None:
        self.send(b"g" * (256 * 1024))
        self.blocked_at_start = self.output_blocked

    def line_received(self, line: bytes) -> None:
        self.send_line(line)


async def test_output_blocked_in_connection_made_resumes_reading() -> None:
    async with serve(Greeter, "tcp://127.0.0.1:0") as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"after\r\n")
        assert await asyncio.wait_for(reader.readexactly(256 * 1024), 10) == b"g" * (256 * 1024)
        assert await asyncio.wait_for(reader.readline(), 5) == b"after\r\n"
        (handler,) = server.connections()
        assert isinstance(handler, Greeter)
        assert handler.blocked_at_start
        await _cleanup([], [writer])
